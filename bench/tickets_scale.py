"""Tickets at scale: list, search, read and create latency over a large seeded data set.

`helpdesk bench tickets-scale [--tickets N] [--seconds S] [--concurrency C]` starts its own
throwaway PostgreSQL and NATS (launcher code, a temporary directory, free ports: it never touches
the `make up` data), runs the migrations, seeds N tickets and 2·N comments over 10 tenants
(bench/seed_tickets.py: COPY, indexes rebuilt after loading), starts the tickets service and
the gateway as `helpdesk up` does, and drives load from a separate process
(`python -m bench.tickets_scale --worker PLAN`), one process per phase:

1. `list`: first pages (limit 50) of single-filter lists, rotating through every documented
   filter and every sort/order, direct to the tickets service;
2. `search`: `q=` with Korean and English terms and substrings (엘리베이터, 누수, elevator, ...);
3. `read`: `GET /api/v1/tickets/{id}` of random seeded tickets;
4. `create`: `POST /api/v1/tickets` with full bodies;
5. `gateway_create`: creates through the gateway at `--gateway-concurrency` clients, for throughput.

Phases 1-4 run at `--concurrency` clients (8 by default, the budget's figure) and report
p50/p95/p99 per phase (latency at the service: the client talks to the tickets port directly),
plus p99 per request kind. Tokens are HS256 JWTs signed with the throwaway stack's secret, one
agent per tenant (and an admin for `deleted=true`).

The last stdout line is one JSON object (see `result_object()`); budgets: bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import asyncpg
import jwt

from bench import seed_tickets
from bench.load_client import Connection, encode_request
from bench.tickets_api import REQUEST_TIMEOUT_S, BenchError, percentile, summarize

REPO_ROOT = Path(__file__).resolve().parents[1]
WARMUP_S = 3.0
SETTLE_S = 5.0
# Written beside the data after seeding, so that --data can reuse a kept run.
SEED_FILE = "seed.json"
TOKENS_ENV = "HELPDESK_BENCH_TOKENS"  # the worker gets tokens by environment, not on its command line
BUDGET = {"list_p99_ms": 30.0, "search_p99_ms": 150.0, "read_p99_ms": 10.0, "create_p99_ms": 30.0}
GATEWAY_CREATE_RPS_BUDGET = 700.0
# The machine probe (`machine_probe`): 8 connections x 2,000 round trips.
PROBE_CONNECTIONS = 8
PROBE_ROUND_TRIPS = 2_000
SEARCH_TERMS = (
    "엘리베이터",
    "누수",
    "elevator",
    "leak",
    "에어컨",
    "printer",
    "출입카드",
    "천장 누수",
    "Wi-Fi",
    "조명",
    "VPN disconnects",
    "엘리베이터 소음",
)


class Phase:
    LIST = "list"
    SEARCH = "search"
    READ = "read"
    CREATE = "create"
    GATEWAY_CREATE = "gateway_create"


# -- tokens and requests ----------------------------------------------------------------------------


def agent_id(tenant: str) -> str:
    return f"agent-{tenant}-0"  # the seeder's first agent, so assignee=me finds tickets


def make_token(secret: str, tenant: str, role: str, ttl_s: int = 6 * 3600) -> str:
    now = int(time.time())
    user = agent_id(tenant) if role == "agent" else f"{role}-{tenant}"
    claims = {
        "sub": user,
        "tenant": tenant,
        "roles": [role],
        "iat": now,
        "exp": now + ttl_s,
        "iss": "helpdesk",
        "aud": "helpdesk",
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _list_path(params: dict[str, Any] | list[tuple[str, str]]) -> str:
    return "/api/v1/tickets?" + urlencode(params, quote_via=quote)


def list_cases(samples: dict[str, Any], now: datetime) -> list[tuple[str, list[tuple[str, str]], str]]:
    """(label, query parameters, token role) for every documented single filter and every sort."""
    tenant_samples = samples["tenants"]
    first = next(iter(tenant_samples.values()))
    cases: list[tuple[str, list[tuple[str, str]], str]] = []
    for status in ("open", "in_progress", "waiting_on_vendor", "closed"):
        cases.append((f"status={status}", [("status", status)], "agent"))
    for category in ("open", "pending", "in_progress", "resolved", "closed"):
        cases.append((f"status_category={category}", [("status_category", category)], "agent"))
    for priority in ("urgent", "low"):
        cases.append((f"priority={priority}", [("priority", priority)], "agent"))
    for category in ("elevator", "plumbing", "furniture"):
        cases.append((f"category={category}", [("category", category)], "agent"))
    cases.append(("assignee=me", [("assignee", "me")], "agent"))
    cases.append(("assignee=none", [("assignee", "none")], "agent"))
    cases.append(("assignee=<id>", [("assignee", "{assignee}")], "agent"))
    cases.append(("group", [("group", "hvac-team")], "agent"))
    cases.append(("requester", [("requester", "{requester}")], "agent"))
    cases.append(("tag=leak", [("tag", "leak")], "agent"))
    cases.append(("tag=vip", [("tag", "vip")], "agent"))
    cases.append(("building", [("building", "Tower 2")], "agent"))
    cases.append(("floor", [("floor", "7")], "agent"))
    cases.append(("room", [("room", "{room}")], "agent"))
    cases.append(("created_from", [("created_from", _iso(now - timedelta(days=30)))], "agent"))
    cases.append(("created_to", [("created_to", _iso(now - timedelta(days=700)))], "agent"))
    cases.append(("updated_from", [("updated_from", _iso(now - timedelta(days=7)))], "agent"))
    cases.append(("updated_to", [("updated_to", _iso(now - timedelta(days=365)))], "agent"))
    cases.append(("cf.vendor", [("cf.vendor", "오티스")], "agent"))
    cases.append(("cf.impact", [("cf.impact", "building")], "agent"))
    cases.append(("overdue", [("overdue", "true")], "agent"))
    cases.append(("due_before", [("due_before", _iso(now + timedelta(days=1)))], "agent"))
    if first.get("parents"):
        cases.append(("parent_id", [("parent_id", "{parent}")], "agent"))
    cases.append(("deleted", [("deleted", "true")], "admin"))
    for sort in ("created_at", "updated_at", "priority", "due_at"):
        for order in ("desc", "asc"):
            cases.append((f"sort={sort}&order={order}", [("sort", sort), ("order", order)], "agent"))
    return cases


def build_plan(
    phase: str, samples: dict[str, Any], now: datetime, count: int = 2000, seed: int = 7
) -> list[dict]:
    """The requests of one phase, in the order clients take them (labels for per-kind stats)."""
    rng = random.Random(seed)
    tenants = sorted(samples["tenants"])
    requests: list[dict] = []
    if phase == Phase.LIST:
        cases = list_cases(samples, now)
        for n in range(count):
            label, params, role = cases[n % len(cases)]
            tenant = rng.choice(tenants)
            data = samples["tenants"][tenant]
            fill = {
                "assignee": rng.choice(data["assignees"]),
                "requester": rng.choice(data["requesters"]),
                "room": rng.choice(data["rooms"]),
                "parent": rng.choice(data["parents"]) if data.get("parents") else "",
            }
            query = [(key, value.format(**fill)) for key, value in params]
            requests.append(
                {"label": label, "method": "GET", "path": _list_path(query), "token": f"{role}:{tenant}"}
            )
    elif phase == Phase.SEARCH:
        for n in range(count):
            term = SEARCH_TERMS[n % len(SEARCH_TERMS)]
            tenant = rng.choice(tenants)
            requests.append(
                {
                    "label": f"q={term}",
                    "method": "GET",
                    "path": _list_path([("q", term)]),
                    "token": f"agent:{tenant}",
                }
            )
    elif phase == Phase.READ:
        for _ in range(count):
            tenant = rng.choice(tenants)
            ticket_id = rng.choice(samples["tenants"][tenant]["ids"])
            requests.append(
                {
                    "label": "read",
                    "method": "GET",
                    "path": f"/api/v1/tickets/{ticket_id}",
                    "token": f"agent:{tenant}",
                }
            )
    elif phase in (Phase.CREATE, Phase.GATEWAY_CREATE):
        for n in range(count):
            tenant = rng.choice(tenants)
            requests.append(
                {
                    "label": "create",
                    "method": "POST",
                    "path": "/api/v1/tickets",
                    "token": f"agent:{tenant}",
                    "body": create_body(rng, n),
                }
            )
    else:
        raise ValueError(f"unknown phase {phase}")
    return requests


def create_body(rng: random.Random, n: int) -> dict[str, Any]:
    issue = rng.choice(seed_tickets.ISSUES)
    floor = rng.choice(seed_tickets.FLOORS)
    room = f"{floor.lstrip('B')}{rng.randrange(1, 30):02d}"
    building = rng.choice(seed_tickets.BUILDINGS)
    korean = n % 2 == 0
    subject = rng.choice(issue.ko if korean else issue.en).format(floor=floor, room=room)
    detail = rng.choice(issue.ko_detail if korean else issue.en_detail)
    return {
        "subject": f"{subject} (bench {n})",
        "description": f"{building} {floor} {room}. {detail}",
        "priority": rng.choice(seed_tickets.PRIORITIES),
        "category": issue.category,
        "type": issue.type,
        "source": rng.choice(seed_tickets.SOURCES),
        "location": f"{building} {floor} {room}",
        "building": building,
        "floor": floor,
        "room": room,
        "tags": list(issue.tags[:2]),
        "custom_fields": {"asset_tag": f"{issue.category[:2].upper()}-{rng.randrange(1, 500):04d}"},
    }


# -- worker: the load generator, in its own process -------------------------------------------------


async def drive(plan: dict[str, Any], tokens: dict[str, str]) -> dict[str, Any]:
    """Run plan["concurrency"] clients over plan["requests"] for warm-up + seconds."""
    requests = plan["requests"]
    concurrency, seconds, warmup = plan["concurrency"], plan["seconds"], plan["warmup"]
    base = plan["base_url"].rstrip("/")
    prepared = []
    for request in requests:
        headers = {"Authorization": f"Bearer {tokens[request['token']]}"}
        data = None
        if "body" in request:
            headers["Content-Type"] = "application/json"
            data = json.dumps(request["body"], ensure_ascii=False).encode()
        raw = encode_request(request["method"], base + request["path"], headers, data)
        prepared.append((request["label"], raw))
    latencies: list[float] = []
    by_label: dict[str, list[float]] = defaultdict(list)
    errors: Counter[str] = Counter()
    first_detail: dict[str, str] = {}
    measure_from = time.perf_counter() + warmup
    stop_at = measure_from + seconds

    async def client(number: int) -> None:
        connection = Connection(base, REQUEST_TIMEOUT_S)
        position = number
        try:
            while (started := time.perf_counter()) < stop_at:
                label, raw = prepared[position % len(prepared)]
                error = await connection.error_of(raw, label, first_detail)
                ended = time.perf_counter()
                if measure_from <= ended <= stop_at:
                    elapsed = (ended - started) * 1000
                    latencies.append(elapsed)
                    by_label[label].append(elapsed)
                    if error:
                        errors[error] += 1
                position += concurrency
        finally:
            connection.close()

    await asyncio.gather(*(client(n) for n in range(concurrency)))

    stats = summarize(latencies, sum(errors.values()), seconds)
    stats["by_label"] = {
        label: {
            "count": len(values),
            "p50_ms": round(percentile(values, 50), 2),
            "p99_ms": round(percentile(values, 99), 2),
            "max_ms": round(max(values), 2),
        }
        for label, values in sorted(by_label.items())
    }
    stats["error_kinds"] = [f"{count}x {kind}: {first_detail[kind]}" for kind, count in errors.most_common(5)]
    return stats


def worker_main(argv: list[str]) -> int:
    """`python -m bench.tickets_scale --worker PLAN.json`: drive one phase, print its stats as JSON."""
    plan = json.loads(Path(argv[0]).read_text())
    load = drive(plan, json.loads(os.environ[TOKENS_ENV]))
    try:
        import uvloop
    except ImportError:  # not installed on Windows
        stats = asyncio.run(load)
    else:
        stats = uvloop.run(load)
    print(json.dumps(stats, ensure_ascii=False), flush=True)
    return 0


def run_phase(
    workdir: Path, name: str, base_url: str, requests: list[dict], tokens: dict[str, str], *, seconds: float,
    concurrency: int, warmup: float,
) -> dict[str, Any]:  # fmt: skip
    plan_file = workdir / f"plan-{name}.json"
    plan = {"base_url": base_url, "requests": requests, "seconds": seconds, "concurrency": concurrency}
    plan["warmup"] = warmup
    plan_file.write_text(json.dumps(plan, ensure_ascii=False))
    pythonpath = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, TOKENS_ENV: json.dumps(tokens), "PYTHONPATH": pythonpath}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "bench.tickets_scale", "--worker", str(plan_file)],
            env=env,
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            text=True,
            timeout=warmup + seconds + REQUEST_TIMEOUT_S + 60,
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"load worker for phase {name} did not finish in time") from None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise BenchError(f"load worker for phase {name} failed with exit code {done.returncode}")
    return json.loads(lines[-1])


# -- driver ---------------------------------------------------------------------------------------


async def collect_samples(admin_url: str, tenants: list[str], per_tenant: int = 300) -> dict[str, Any]:
    """Ids and values of the seeded data the requests refer to (read as the admin)."""
    conn = await asyncpg.connect(admin_url)
    try:
        result: dict[str, Any] = {"tenants": {}}
        for tenant in tenants:
            ids = await conn.fetch(
                "SELECT id::text FROM tickets.tickets WHERE tenant_id = $1 AND deleted_at IS NULL"
                " ORDER BY random() LIMIT $2",
                tenant,
                per_tenant,
            )
            people = await conn.fetch(
                "SELECT requester_id, assignee_id, room FROM tickets.tickets WHERE tenant_id = $1"
                " ORDER BY created_at DESC LIMIT $2",
                tenant,
                per_tenant,
            )
            parents = await conn.fetch(
                "SELECT DISTINCT parent_id::text FROM tickets.tickets WHERE tenant_id = $1"
                " AND parent_id IS NOT NULL LIMIT 50",
                tenant,
            )
            result["tenants"][tenant] = {
                "ids": [row[0] for row in ids],
                "requesters": sorted({row["requester_id"] for row in people}),
                "assignees": sorted({row["assignee_id"] for row in people if row["assignee_id"]})
                or [agent_id(tenant)],
                "rooms": sorted({row["room"] for row in people if row["room"]}) or ["301"],
                "parents": [row[0] for row in parents],
            }
        return result
    finally:
        await conn.close()


def describe(name: str, stats: dict[str, Any]) -> str:
    def ms(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.1f} ms"

    return (
        f"{name:>14}: {stats['count']} requests, {stats['rps']:.1f} rps, p50 {ms(stats['p50_ms'])}, "
        f"p95 {ms(stats['p95_ms'])}, p99 {ms(stats['p99_ms'])}, {stats['errors']} errors"
    )


def result_object(
    seed: seed_tickets.SeedResult,
    phases: dict[str, dict[str, Any]],
    args: argparse.Namespace,
    probes: list[int],
) -> dict:
    def p99(name: str) -> float | None:
        return phases[name]["p99_ms"] if name in phases else None

    return {
        "seed_s": seed.seconds,
        "list_p99_ms": p99(Phase.LIST),
        "search_p99_ms": p99(Phase.SEARCH),
        "read_p99_ms": p99(Phase.READ),
        "create_p99_ms": p99(Phase.CREATE),
        "gateway_create_rps": phases.get(Phase.GATEWAY_CREATE, {}).get("rps"),
        "tickets": seed.tickets,
        "comments": seed.comments,
        "tenants": len(seed.tenants),
        "concurrency": args.concurrency,
        "gateway_concurrency": args.gateway_concurrency,
        "seconds": args.seconds,
        "seed_phases": seed.phases,
        "machine_probe_rtps": probes,
        "phases": {
            name: {key: stats[key] for key in ("rps", "p50_ms", "p95_ms", "p99_ms", "errors", "count")}
            for name, stats in phases.items()
        },
    }


async def machine_probe(admin_url: str) -> int:
    """Round trips per second of `SELECT 1` on PROBE_CONNECTIONS connections at once to the
    bench's PostgreSQL (idle otherwise), best of three; higher is faster.

    The VM's speed drifts by 15-30 % within an hour (bench/README.md), and every budget here is
    absolute: a run's numbers mean little without how fast the machine was. A pure-Python loop
    missed the drift (it slowed by 5 % while the phases slowed by a fifth); round trips
    between processes, which a create is made of, do not.
    """
    connections = [await asyncpg.connect(admin_url) for _ in range(PROBE_CONNECTIONS)]
    try:

        async def round_trips(conn: asyncpg.Connection) -> None:
            statement = await conn.prepare("SELECT 1")
            for _ in range(PROBE_ROUND_TRIPS):
                await statement.fetchval()

        best = 0.0
        for _ in range(3):
            started = time.perf_counter()
            await asyncio.gather(*(round_trips(conn) for conn in connections))
            elapsed = time.perf_counter() - started
            best = max(best, PROBE_CONNECTIONS * PROBE_ROUND_TRIPS / elapsed)
        return round(best)
    finally:
        for conn in connections:
            await conn.close()


def budget_lines(result: dict[str, Any]) -> list[str]:
    lines = ["budget:"]
    for key, limit in BUDGET.items():
        value = result[key]
        ok = value is not None and value <= limit
        lines.append(f"  {'ok  ' if ok else 'FAIL'} {key} {value} <= {limit:g}")
    rps = result["gateway_create_rps"]
    ok = rps is not None and rps >= GATEWAY_CREATE_RPS_BUDGET
    lines.append(f"  {'ok  ' if ok else 'FAIL'} gateway_create_rps {rps} >= {GATEWAY_CREATE_RPS_BUDGET:g}")
    seed_ok = result["seed_s"] < 600
    lines.append(f"  {'ok  ' if seed_ok else 'FAIL'} seed_s {result['seed_s']} < 600")
    return lines


def run(args: argparse.Namespace) -> dict[str, Any]:
    # Imported here: the worker process needs none of it.
    from libs.cli.main import migrate
    from libs.common.launcher import (
        NatsServer,
        PostgresServer,
        Secrets,
        Stack,
        free_port,
        service_environment,
        start_service,
        wait_ready,
    )
    from libs.common.stack import SERVICES, STACK

    reused = args.data is not None
    workdir = Path(args.data) if reused else Path(tempfile.mkdtemp(prefix="helpdesk-bench-scale-"))
    if reused and not (workdir / SEED_FILE).exists():
        raise BenchError(f"{workdir} holds no data kept by a complete run (no {SEED_FILE})")
    print(f"work directory {workdir}", flush=True)
    secrets_ = Secrets.load_or_create(workdir / "secrets.json")
    stack = Stack(database_url="", nats_url="", ports={spec.name: free_port() for spec in STACK})
    try:
        stack.postgres = PostgresServer(workdir / "pg", free_port(), secrets_.pg_password)
        stack.postgres.start()
        stack.database_url = stack.postgres.admin_url
        stack.nats = NatsServer(workdir / "nats", free_port())
        stack.nats.start()
        stack.nats_url = stack.nats.url
        print(f"PostgreSQL :{stack.postgres.port}, NATS :{stack.nats.port}; migrating ...", flush=True)
        migrate(stack.database_url, secrets_)
        if reused:
            seed = seed_tickets.SeedResult(**json.loads((workdir / SEED_FILE).read_text()))
            tenants = seed.tenants
            print(f"reusing {seed.tickets} tickets, {seed.comments} comments (seeded in {seed.seconds} s)")
        else:
            tenants = seed_tickets.default_tenants(args.tenants)
            what = f"{args.tickets} tickets, {2 * args.tickets} comments over {len(tenants)} tenants"
            print(f"seeding {what} ...")
            seed = asyncio.run(seed_tickets.seed(stack.database_url, tickets=args.tickets, tenants=tenants))
            print(f"seeded in {seed.seconds} s {seed.phases}", flush=True)
            (workdir / SEED_FILE).write_text(json.dumps(dataclasses.asdict(seed)))
        samples = asyncio.run(collect_samples(stack.database_url, tenants))

        log_dir = workdir / "logs"
        log_dir.mkdir(exist_ok=True)
        for name in ("tickets", "gateway"):
            env = service_environment(stack, SERVICES[name], secrets_, {"HELPDESK_LOG_LEVEL": "WARNING"})
            stack.services.append(start_service(stack, SERVICES[name], env, log_dir))
        for service in stack.services:
            wait_ready(service, timeout=120)
        tickets_url, gateway_url = stack.url("tickets"), stack.url("gateway")
        print(f"tickets {tickets_url}, gateway {gateway_url}; logs in {log_dir}", flush=True)

        tokens = {}
        for tenant in tenants:
            tokens[f"agent:{tenant}"] = make_token(secrets_.jwt_secret, tenant, "agent")
            tokens[f"admin:{tenant}"] = make_token(secrets_.jwt_secret, tenant, "admin")
        now = datetime.now(UTC)
        phases: dict[str, dict[str, Any]] = {}
        probes = [asyncio.run(machine_probe(stack.database_url))]
        print(f"machine probe: {probes[0]} PostgreSQL round trips/s (higher is faster)", flush=True)
        schedule = [
            (Phase.LIST, tickets_url, args.concurrency),
            (Phase.SEARCH, tickets_url, args.concurrency),
            (Phase.READ, tickets_url, args.concurrency),
            (Phase.CREATE, tickets_url, args.concurrency),
            (Phase.GATEWAY_CREATE, gateway_url, args.gateway_concurrency),
        ]
        for name, base_url, concurrency in schedule:
            if name not in args.phases:
                continue
            if phases and name in (Phase.CREATE, Phase.GATEWAY_CREATE):
                time.sleep(SETTLE_S)  # let the relay publish the previous phase's events first
            print(f"{name:>14}: {concurrency} clients against {base_url} ...", flush=True)
            requests = build_plan(name, samples, now)
            stats = run_phase(
                workdir, name, base_url, requests, tokens, seconds=args.seconds, concurrency=concurrency,
                warmup=args.warmup,
            )  # fmt: skip
            print(describe(name, stats))
            for line in stats.pop("error_kinds", []):
                print(f"{'':>16}{line}")
            by_label = stats.pop("by_label", {})
            slowest = sorted(by_label.items(), key=lambda item: -item[1]["p99_ms"])[:6]
            if len(by_label) > 1:
                print(
                    f"{'':>16}slowest p99: " + ", ".join(f"{label} {s['p99_ms']:.1f}" for label, s in slowest)
                )
            stats["by_label"] = by_label
            phases[name] = stats
        probes.append(asyncio.run(machine_probe(stack.database_url)))
        print(f"machine probe after the phases: {probes[1]} round trips/s", flush=True)
        result = result_object(seed, phases, args, probes)
        if args.details:
            by_label = {name: stats.get("by_label", {}) for name, stats in phases.items()}
            details = json.dumps({**result, "by_label": by_label}, ensure_ascii=False, indent=1)
            Path(args.details).write_text(details)
        return result
    finally:
        print("stopping ...", flush=True)
        stack.stop()
        if args.keep or reused:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """`helpdesk bench tickets-scale` (also `python -m bench.tickets_scale`); the last stdout line is JSON."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return worker_main(argv[1:])
    parser = argparse.ArgumentParser(prog="helpdesk bench tickets-scale", description=__doc__.split("\n")[0])
    parser.add_argument("--tickets", type=int, default=1_000_000, help="tickets to seed (comments: 2x)")
    parser.add_argument("--tenants", type=int, default=seed_tickets.DEFAULT_TENANT_COUNT)
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per phase (default 20)")
    parser.add_argument(
        "--concurrency", type=int, default=8, help="clients for the service phases (default 8)"
    )
    parser.add_argument("--gateway-concurrency", type=int, default=32, help="clients for gateway creates")
    parser.add_argument("--warmup", type=float, default=WARMUP_S, help="unmeasured seconds before each phase")
    parser.add_argument(
        "--phases",
        default=",".join([Phase.LIST, Phase.SEARCH, Phase.READ, Phase.CREATE, Phase.GATEWAY_CREATE]),
        help="comma-separated subset of list,search,read,create,gateway_create",
    )
    parser.add_argument("--details", default=None, help="write per-request-kind stats to this JSON file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, data)")
    parser.add_argument(
        "--data",
        default=None,
        help="run the phases on the data of an earlier run kept with --keep (no seeding; "
        "creates of earlier runs stay)",
    )
    args = parser.parse_args(argv)
    args.phases = [phase.strip() for phase in args.phases.split(",") if phase.strip()]
    if args.tickets < 10 or args.seconds <= 0 or args.concurrency < 1 or args.warmup < 0 or args.tenants < 1:
        parser.error("--tickets >= 10, --seconds > 0, --concurrency >= 1, --warmup >= 0, --tenants >= 1")
    try:
        result = run(args)
    except BenchError as exc:
        print(f"helpdesk bench tickets-scale: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print("\n".join(budget_lines(result)))
    print(json.dumps(result, ensure_ascii=False), flush=True)
    failed = [name for name, stats in result["phases"].items() if stats["count"] == stats["errors"]]
    if failed:
        print(f"helpdesk bench tickets-scale: no successful request in {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
