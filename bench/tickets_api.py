"""Load benchmark of the tickets API: through the gateway, then directly against the tickets service.

`helpdesk bench tickets-api [--seconds S] [--concurrency C]` reads `.helpdesk/stack.json` (written by
`helpdesk up`), logs in once through the gateway as the agent of tenant `bench` (created by
`helpdesk up` next to the demo users, so the tickets the benchmark creates stay out of the demo
tenant; an older stack.json without it: the demo agent), then runs two phases of S seconds
each (after a short unmeasured warm-up): first against the gateway, then against the tickets service
with the same token (services verify the JWT themselves). The load of each phase comes from a separate
process (`python -m bench.tickets_api --worker ...`) running a uvloop event loop with C clients that
each keep one keep-alive connection (bench/load_client.py). Mix: 80 % `GET /api/v1/tickets?limit=50`,
20 % `POST /api/v1/tickets` with Korean and English subjects.

Measured per phase: requests completed inside the window (`count`), `errors` (non-2xx or exception),
`rps` (successful requests per second) and latency percentiles in ms over every completed request,
errors included, so timeouts show up in the tail instead of vanishing. Percentiles interpolate
linearly between closest ranks (Hyndman-Fan type 7, numpy's default).

The last line of stdout is one JSON object; see `compare()` for its shape. Budget: bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from bench.load_client import Connection, encode_request

REPO_ROOT = Path(__file__).resolve().parents[1]
SETTLE_S = 8.0
WARMUP_S = 2.0
REQUEST_TIMEOUT_S = 10.0
TOKEN_ENV = "HELPDESK_BENCH_TOKEN"  # the worker gets the token by environment, not on its command line
LIST_PATH = "/api/v1/tickets?limit=50"
CREATE_PATH = "/api/v1/tickets"
POST_EVERY = 5  # one request in five is a create: the 80/20 mix
SUBJECTS = (
    "엘리베이터가 3층에서 멈췄습니다",
    "Printer on floor 2 keeps jamming",
    "회의실 에어컨이 작동하지 않아요",
    "VPN disconnects every hour",
    "주차장 출입 카드가 인식되지 않습니다",
    "Cannot log in to the portal",
)
BUDGET = {"errors": 0, "gateway_p99_ms": 150.0, "ratio_rps": 0.7, "concurrency": 32}


class BenchError(Exception):
    """A problem the user can fix (stack not up, bad credentials); printed without a traceback."""


# --- statistics -----------------------------------------------------------------------------------


def percentile(values: Sequence[float], pct: float) -> float:
    """The `pct`-th percentile (0..100) of `values`, linear interpolation between closest ranks.

    With the values sorted as x[0..n-1], the rank is h = (n - 1) * pct / 100 and the result is
    x[floor(h)] + (h - floor(h)) * (x[floor(h) + 1] - x[floor(h)]) — numpy's default and
    `statistics.quantiles(method="inclusive")`. p0 is the minimum, p100 the maximum.
    """
    if not values:
        raise ValueError("percentile of an empty sequence")
    if not 0 <= pct <= 100:
        raise ValueError(f"percentile must be within 0..100, got {pct}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100
    lower = math.floor(rank)
    if lower + 1 >= len(ordered):
        return float(ordered[lower])
    return ordered[lower] + (rank - lower) * (ordered[lower + 1] - ordered[lower])


def summarize(latencies_ms: Sequence[float], errors: int, seconds: float) -> dict[str, Any]:
    """Stats of one phase: `latencies_ms` of every completed request (errors included) in `seconds`."""
    count = len(latencies_ms)

    def pct(p: float) -> float | None:
        return round(percentile(latencies_ms, p), 2) if latencies_ms else None

    return {
        "rps": round((count - errors) / seconds, 1),
        "p50_ms": pct(50),
        "p95_ms": pct(95),
        "p99_ms": pct(99),
        "errors": errors,
        "count": count,
    }


def compare(
    gateway: dict[str, Any], direct: dict[str, Any], concurrency: int, seconds: float
) -> dict[str, Any]:
    """The result object: both phases, the gateway's p50 overhead and its share of direct throughput."""
    overhead = None
    if gateway["p50_ms"] is not None and direct["p50_ms"] is not None:
        overhead = round(gateway["p50_ms"] - direct["p50_ms"], 2)
    ratio = round(gateway["rps"] / direct["rps"], 3) if direct["rps"] else None
    return {
        "gateway": gateway,
        "direct": direct,
        "overhead_p50_ms": overhead,
        "ratio_rps": ratio,
        "concurrency": concurrency,
        "seconds": seconds,
    }


def budget_verdict(result: dict[str, Any]) -> list[str]:
    """Human-readable check of the issue's budget (defined at 32 clients; informative otherwise)."""
    gateway, ratio = result["gateway"], result["ratio_rps"]
    errors = gateway["errors"] + result["direct"]["errors"]
    p99 = gateway["p99_ms"]
    checks = [
        (f"errors {errors} == {BUDGET['errors']}", errors == BUDGET["errors"]),
        (
            f"gateway p99 {p99} ms <= {BUDGET['gateway_p99_ms']:.0f} ms",
            p99 is not None and p99 <= BUDGET["gateway_p99_ms"],
        ),
        (f"ratio_rps {ratio} >= {BUDGET['ratio_rps']}", ratio is not None and ratio >= BUDGET["ratio_rps"]),
    ]
    note = (
        ""
        if result["concurrency"] == BUDGET["concurrency"]
        else f" (set for {BUDGET['concurrency']} clients, this run used {result['concurrency']})"
    )
    return [f"budget{note}:"] + [f"  {'ok  ' if passed else 'FAIL'} {text}" for text, passed in checks]


# --- worker: the load generator, in its own process ----------------------------------------------


def ticket_body(serial: str, n: int) -> bytes:
    subject = SUBJECTS[n % len(SUBJECTS)]
    body = {
        "subject": f"{subject} (bench {serial})",
        "description": f"Load test ticket {serial}. 부하 테스트로 생성된 티켓입니다.",
        "priority": ("low", "medium", "high", "urgent")[n % 4],
    }
    # ensure_ascii=False: Korean travels as UTF-8 bytes on the wire, as real clients send it.
    return json.dumps(body, ensure_ascii=False).encode()


async def drive_load(
    base_url: str, token: str, seconds: float, concurrency: int, warmup: float
) -> dict[str, Any]:
    """Run `concurrency` clients for `warmup` + `seconds`; stats of requests that completed in the window."""
    latencies_ms: list[float] = []
    by_request: dict[str, list[float]] = {"list": [], "create": []}
    errors: Counter[str] = Counter()
    first_detail: dict[str, str] = {}
    headers = {"Authorization": f"Bearer {token}"}
    create_headers = {**headers, "Content-Type": "application/json"}
    pid = os.getpid()
    base = base_url.rstrip("/")
    list_request = encode_request("GET", base + LIST_PATH, headers)
    measure_from = time.perf_counter() + warmup
    stop_at = measure_from + seconds

    def request_of(client: int, n: int, create: bool) -> bytes:
        if not create:
            return list_request
        body = ticket_body(f"{pid}-{client}-{n}", n)
        return encode_request("POST", base + CREATE_PATH, create_headers, body)

    async def client(index: int) -> None:
        connection = Connection(base, REQUEST_TIMEOUT_S)
        n = 0
        try:
            while (started := time.perf_counter()) < stop_at:
                create = (index + n) % POST_EVERY == 0
                request = request_of(index, n, create)
                error = await connection.error_of(request, "POST" if create else "GET", first_detail)
                ended = time.perf_counter()
                if measure_from <= ended <= stop_at:
                    latency_ms = (ended - started) * 1000
                    latencies_ms.append(latency_ms)
                    by_request["create" if create else "list"].append(latency_ms)
                    if error:
                        errors[error] += 1
                n += 1
        finally:
            connection.close()

    await asyncio.gather(*(client(i) for i in range(concurrency)))

    stats = summarize(latencies_ms, sum(errors.values()), seconds)
    stats["error_kinds"] = [f"{count}x {kind}: {first_detail[kind]}" for kind, count in errors.most_common(5)]
    # Which requests make the tail: p50/p99 of lists and of creates on their own.
    stats["by_request"] = {
        name: {key: summary[key] for key in ("count", "p50_ms", "p99_ms")}
        for name, values in by_request.items()
        for summary in [summarize(values, 0, seconds)]
    }
    return stats


def worker_main(argv: list[str]) -> int:
    """`python -m bench.tickets_api --worker URL ...`: drive one phase, print its stats as JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.tickets_api --worker")
    parser.add_argument("base_url")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--warmup", type=float, default=WARMUP_S)
    args = parser.parse_args(argv)
    load = drive_load(args.base_url, os.environ[TOKEN_ENV], args.seconds, args.concurrency, args.warmup)
    try:
        try:
            import uvloop
        except ImportError:  # not installed on Windows
            stats = asyncio.run(load)
        else:
            stats = uvloop.run(load)
    except KeyboardInterrupt:
        return 130
    print(json.dumps(stats, ensure_ascii=False), flush=True)
    return 0


# --- driver: stack discovery, login, one worker process per phase ----------------------------------


def default_stack_file() -> Path:
    """Where `helpdesk up` writes the stack description (it honours `HELPDESK_HOME` too)."""
    return Path(os.environ.get("HELPDESK_HOME", ".helpdesk")).resolve() / "stack.json"


def load_stack(stack_file: Path) -> tuple[str, str, str, str]:
    """(gateway URL, tickets URL, agent email, agent password) from stack.json and the environment."""
    if not stack_file.is_file():
        raise BenchError(f"{stack_file} not found: start the stack first (`make up` in another terminal)")
    try:
        stack = json.loads(stack_file.read_text())
        gateway, tickets = stack["gateway"], stack["services"]["tickets"]
    except (ValueError, KeyError, TypeError) as exc:
        raise BenchError(f"{stack_file} is not a stack description from `helpdesk up` ({exc!r})") from None
    users = (stack.get("bench") or stack.get("demo") or {}).get("users", {})
    agent = users.get("agent", {})
    email = agent.get("email", "agent@bench.test")
    password = os.environ.get("HELPDESK_DEMO_PASSWORD") or agent.get("password")
    if not password:
        raise BenchError(
            f"no agent password: {stack_file} has no bench or demo users (stack started with --no-demo?) "
            "and HELPDESK_DEMO_PASSWORD is not set"
        )
    return gateway, tickets, email, password


def log_in(gateway: str, email: str, password: str) -> tuple[str, float]:
    """The agent's access token and its lifetime in seconds, via the gateway's token endpoint."""
    try:
        response = httpx.post(
            f"{gateway}/api/v1/auth/token", data={"username": email, "password": password}, timeout=10
        )
    except httpx.HTTPError as exc:
        raise BenchError(
            f"cannot reach the gateway at {gateway} ({exc}): is the stack up (`make up`)?"
        ) from None
    if response.status_code != 200:
        raise BenchError(f"login as {email} failed: HTTP {response.status_code} {response.text[:200]}")
    body = response.json()
    return body["access_token"], float(body.get("expires_in") or math.inf)


def preflight(name: str, base_url: str, token: str) -> None:
    """One authenticated list request, so a down service or a rejected token fails before the load."""
    try:
        response = httpx.get(
            f"{base_url}{LIST_PATH}", headers={"Authorization": f"Bearer {token}"}, timeout=REQUEST_TIMEOUT_S
        )
    except httpx.HTTPError as exc:
        raise BenchError(f"cannot reach {name} at {base_url} ({exc}): is the stack up (`make up`)?") from None
    if response.status_code != 200:
        raise BenchError(
            f"{name} {base_url}{LIST_PATH} answered HTTP {response.status_code}: {response.text[:200]}"
        )


def run_phase(base_url: str, token: str, seconds: float, concurrency: int, warmup: float) -> dict[str, Any]:
    """Run one phase in a fresh worker process and return its stats."""
    command = [sys.executable, "-m", "bench.tickets_api", "--worker", base_url, "--seconds", str(seconds)]
    command += ["--concurrency", str(concurrency), "--warmup", str(warmup)]
    pythonpath = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, TOKEN_ENV: token, "PYTHONPATH": pythonpath}
    try:
        limit = warmup + seconds + REQUEST_TIMEOUT_S + 30
        done = subprocess.run(
            command, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True, timeout=limit
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"load worker for {base_url} did not finish in time") from None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise BenchError(f"load worker for {base_url} failed with exit code {done.returncode}")
    return json.loads(lines[-1])


def describe_phase(name: str, stats: dict[str, Any]) -> str:
    def ms(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.1f} ms"

    lists, creates = stats["by_request"]["list"], stats["by_request"]["create"]
    return (
        f"{name:>7}: {stats['count']} requests, {stats['rps']:.1f} rps, p50 {ms(stats['p50_ms'])}, "
        f"p95 {ms(stats['p95_ms'])}, p99 {ms(stats['p99_ms'])}, {stats['errors']} errors "
        f"(p99 of lists {ms(lists['p99_ms'])}, of creates {ms(creates['p99_ms'])})"
    )


def run(seconds: float, concurrency: int, stack_file: Path, warmup: float = WARMUP_S) -> dict[str, Any]:
    """Both phases against the stack in `stack_file`; prints progress lines, returns the result object.

    Raises BenchError with a readable message when the stack is missing, down or rejects the login.
    """
    gateway, tickets, email, password = load_stack(stack_file)
    token, expires_in = log_in(gateway, email, password)
    total = 2 * (warmup + seconds)
    if expires_in < total + 30:
        print(
            f"warning: the token expires in {expires_in:.0f} s, the run takes {total:.0f} s", file=sys.stderr
        )
    preflight("gateway", gateway, token)
    preflight("tickets", tickets, token)
    print(f"logged in as {email} via {gateway}")
    print(f"{concurrency} clients, {warmup:g} s warm-up + {seconds:g} s measured per phase")

    phases: dict[str, dict[str, Any]] = {}
    for name, base_url in (("gateway", gateway), ("direct", tickets)):
        if phases:
            # The creates of the previous phase are still being relayed and consumed (three
            # services handle every ticket.created); let that settle so it does not load
            # this phase's measurement.
            time.sleep(SETTLE_S)
        print(f"{name:>7}: running against {base_url} ...", flush=True)
        stats = run_phase(base_url, token, seconds, concurrency, warmup)
        error_kinds = stats.pop("error_kinds", [])
        print(describe_phase(name, stats))
        for line in error_kinds:
            print(f"         {line}")
        phases[name] = stats
    return compare(phases["gateway"], phases["direct"], concurrency, seconds)


def main(argv: list[str] | None = None) -> int:
    """`helpdesk bench tickets-api` (also `python -m bench.tickets_api`); the last stdout line is JSON."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return worker_main(argv[1:])
    parser = argparse.ArgumentParser(prog="helpdesk bench tickets-api", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per phase (default 20)")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument("--warmup", type=float, default=WARMUP_S, help="unmeasured seconds before each phase")
    parser.add_argument("--stack-file", type=Path, default=None, help="default: .helpdesk/stack.json")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.concurrency < 1 or args.warmup < 0:
        parser.error("--seconds must be > 0, --concurrency >= 1, --warmup >= 0")
    try:
        result = run(args.seconds, args.concurrency, args.stack_file or default_stack_file(), args.warmup)
    except BenchError as exc:
        print(f"helpdesk bench tickets-api: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    overhead = result["overhead_p50_ms"]
    print(f"gateway overhead p50: {'n/a' if overhead is None else f'{overhead:+.1f} ms'}")
    print(f"gateway/direct throughput: {result['ratio_rps']}")
    print("\n".join(budget_verdict(result)))
    print(json.dumps(result), flush=True)
    failed = [name for name in ("gateway", "direct") if result[name]["count"] == result[name]["errors"]]
    if failed:
        print(f"helpdesk bench tickets-api: no successful request in {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
