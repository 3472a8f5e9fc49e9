"""`python -m libs.common.serve`: with several workers, connections are spread over the workers and
/metrics reports all of them whichever one answers; each response's head leaves with its body."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from libs.common.launcher import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


def pid_app():
    """App factory for the served process: answers every request with its worker's pid."""

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body = str(os.getpid()).encode()
        headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def client_app():
    """App factory: answers every request with the client address the server saw."""

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body = scope["client"][0].encode()
        headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def paced_app():
    """App factory: responses whose body comes 0.3 s after their head (`/`), a streamed body in two
    chunks 0.3 s apart (`/stream`), and an echo of the request body (`POST /echo`)."""

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        if scope["path"] == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"first", "more_body": True})
            await asyncio.sleep(0.3)
            await send({"type": "http.response.body", "body": b"second"})
            return
        body = b"paced"
        if scope["method"] == "POST":
            body, more = b"", True
            while more:
                message = await receive()
                body, more = body + message.get("body", b""), message.get("more_body", False)
        headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await asyncio.sleep(0.3)
        await send({"type": "http.response.body", "body": body})

    return app


def metrics_app():
    """App factory: the shared metrics middleware and /metrics, and /probe answering its worker's
    pid and setting a live gauge (the concurrency limit's queue length) to 1 in that worker."""
    from fastapi import FastAPI

    from libs.common.metrics import HTTP_WAITING, MetricsMiddleware, metrics_router

    app = FastAPI()

    @app.get("/probe")
    async def probe() -> int:
        HTTP_WAITING.labels("probe").set(1)
        return os.getpid()

    app.include_router(metrics_router)
    app.add_middleware(MetricsMiddleware, service="probe")
    return app


def serve(
    port: int, workers: int, app: str = "pid_app", env: dict[str, str] | None = None
) -> subprocess.Popen:
    command = [sys.executable, "-m", "libs.common.serve", f"tests.common.test_serve:{app}"]
    command += ["--port", str(port), "--workers", str(workers)]
    return subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


async def worker_pid_per_connection(port: int, connections: int) -> list[int]:
    """Open keep-alive connections one after the other, each answering a request before the next
    opens (as a client pool growing under load does); the pid that served each."""
    pids, open_streams = [], []
    for _ in range(connections):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        open_streams.append(writer)
        writer.write(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.startswith(b"content-length")
        )
        pids.append(int(await reader.readexactly(length)))
    for writer in open_streams:
        writer.close()
    return pids


def wait_serving(process: subprocess.Popen, port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                pass
        except OSError:
            time.sleep(0.1)
            continue
        time.sleep(1.0)  # the other workers start in the same second
        return
    raise TimeoutError(f"nothing served on {port} after {timeout}s")


@contextlib.contextmanager
def serving(workers: int, app: str = "pid_app", env: dict[str, str] | None = None) -> Iterator[int]:
    """The served app on a free port, until the block ends."""
    port = free_port()
    process = serve(port, workers, app, env)
    try:
        wait_serving(process, port)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def two_workers():
    with serving(workers=2) as port:
        yield port


async def test_connections_opened_at_once_are_spread_over_the_workers(two_workers):
    # With one accept queue shared by the workers, the worker that just answered took nearly all
    # of them (30 and 2 of 32 here).
    pids = Counter(await worker_pid_per_connection(two_workers, connections=32))
    assert len(pids) == 2, pids
    assert min(pids.values()) >= 6, pids  # spread by hashing: fewer than 6 of 32 about once in 9,000 runs


def test_a_taken_port_is_refused_with_its_number():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        process = serve(port, workers=2)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode != 0
    assert str(port) in stderr


def probe(port: int) -> int:
    """GET /probe on a connection of its own (so SO_REUSEPORT picks a worker each time)."""
    return int(httpx.get(f"http://127.0.0.1:{port}/probe", timeout=10).text)


def exited(pid: int) -> bool:
    """Whether the process has exited (a zombie its parent has not reaped yet counts)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def scrape(port: int) -> tuple[float, float]:
    """(/probe requests counted, livesum of the queue gauge) from one scrape of /metrics."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    counted, waiting = 0.0, 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels = sample.name, sample.labels
            if name == "helpdesk_http_request_duration_seconds_count" and labels["route"] == "/probe":
                counted += sample.value
            if name == "helpdesk_http_requests_waiting" and labels["service"] == "probe":
                waiting += sample.value
    return counted, waiting


def test_metrics_of_every_worker_are_reported_by_whichever_answers():
    port = free_port()
    process = serve(port, workers=2, app="metrics_app")
    try:
        wait_serving(process, port)
        served = Counter(probe(port) for _ in range(40))
        deadline = time.monotonic() + 30
        while len(served) < 2:  # the second worker may still be starting on a slow machine
            assert time.monotonic() < deadline, f"one worker answered everything: {served}"
            served[probe(port)] += 1
        requests = served.total()
        # Each worker alone counted only its share: every scrape must report all of them.
        assert [scrape(port) for _ in range(8)] == [(requests, 2)] * 8

        # A worker killed and restarted by the supervisor: its requests stay counted (counters
        # never go back) and its queue gauge is no longer reported as current.
        killed = next(iter(served))
        os.kill(killed, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not exited(killed):  # its listening socket is closed then
            assert time.monotonic() < deadline
            time.sleep(0.05)
        while True:
            assert time.monotonic() < deadline, "the killed worker was not replaced"
            requests += 1
            if probe(port) not in served:
                break
            time.sleep(0.2)
        assert scrape(port) == (requests, 2)
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def paced_server():
    with serving(workers=1, app="paced_app") as port:
        yield port


async def first_read(port: int, request: bytes) -> tuple[bytes, asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    return await asyncio.wait_for(reader.read(65536), 5), reader, writer


async def test_a_response_head_leaves_with_its_body(paced_server):
    # uvicorn alone writes the head at once and the body 0.3 s later: two segments, two reads.
    request = b"GET / HTTP/1.1\r\nhost: t\r\n\r\n"
    data, reader, writer = await first_read(paced_server, request)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(b"\r\n\r\npaced"), data
    writer.write(request)  # the next response on the same keep-alive connection too
    data = await asyncio.wait_for(reader.read(65536), 5)
    writer.close()
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(b"\r\n\r\npaced"), data


async def test_head_requests_100_continue_and_streams_are_not_held_back(paced_server):
    # HEAD: no body follows, so the head must go out on its own.
    data, _, writer = await first_read(paced_server, b"HEAD / HTTP/1.1\r\nhost: t\r\n\r\n")
    writer.close()
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(b"\r\n\r\n"), data

    # Expect: 100-continue: the client sends its body only after the interim response.
    request = b"POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 4\r\nexpect: 100-continue\r\n\r\n"
    data, reader, writer = await first_read(paced_server, request)
    assert data == b"HTTP/1.1 100 Continue\r\n\r\n", data
    writer.write(b"ping")
    data = await asyncio.wait_for(reader.read(65536), 5)
    writer.close()
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(b"ping"), data

    # A streamed body: its first chunk comes with the head, the second when it is sent.
    data, reader, writer = await first_read(paced_server, b"GET /stream HTTP/1.1\r\nhost: t\r\n\r\n")
    assert b"transfer-encoding: chunked" in data and data.endswith(b"5\r\nfirst\r\n"), data
    data = await asyncio.wait_for(reader.read(65536), 5)
    writer.close()
    assert data == b"6\r\nsecond\r\n0\r\n\r\n", data


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET / HTTP/1.1\r\nhost: t\r\nbad header line\r\n\r\n",
        b"GET /\xff\xfe HTTP/1.1\r\nhost: t\r\n\r\n",  # a path that is not ASCII
        b"POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
    ],
)
async def test_a_request_that_is_not_http_gets_a_problem_document(paced_server, request_bytes):
    data, reader, writer = await first_read(paced_server, request_bytes)
    while not data.endswith(b"}"):  # the whole answer, then the server closes
        more = await asyncio.wait_for(reader.read(65536), 5)
        if not more:
            break
        data += more
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n"), data
    assert b"content-type: application/problem+json" in head and b"connection: close" in head
    assert int(head.split(b"content-length: ")[1].split(b"\r\n")[0]) == len(body)
    problem = json.loads(body)
    assert problem["status"] == 400 and problem["type"].endswith("/malformed-request")
    assert "not valid HTTP" in problem["detail"]


async def test_a_client_still_sending_after_a_problem_reads_all_of_it(paced_server):
    """Bytes that reach a closed socket are answered with a reset, which can destroy an answer
    not yet read. After a problem the server therefore stops sending, drops what still comes,
    and closes when the client does: the client reads the whole problem and a clean end."""
    reader, writer = await asyncio.open_connection("127.0.0.1", paced_server)
    writer.write(b"GET / HTTP/1.1\r\nhost: t\r\nbad header line\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(0.3)  # the problem is on its way back
    for _ in range(20):  # the client has not looked yet and goes on sending (a body, say)
        writer.write(b"x" * 16384)
        await writer.drain()
    await asyncio.sleep(0.3)
    data = await asyncio.wait_for(reader.read(), 5)  # up to the server's end of the stream
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n"), data
    assert json.loads(body)["status"] == 400


async def test_a_request_head_that_does_not_arrive_in_time_is_a_408_and_the_connection_closes():
    with serving(workers=1, app="paced_app", env={"HELPDESK_REQUEST_HEAD_TIMEOUT_S": "1"}) as port:
        # Slowloris: header lines keep trickling in, the head never completes.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        writer.write(b"GET / HTTP/1.1\r\nhost: t\r\n")
        answer = b""
        while not reader.at_eof() and time.monotonic() - started < 5:
            writer.write(b"x-trickle: 1\r\n")
            with contextlib.suppress(TimeoutError):
                answer += await asyncio.wait_for(reader.read(65536), 0.3)
        writer.close()
        assert time.monotonic() - started < 2.5
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer
        assert b"content-type: application/problem+json" in head and reader.at_eof()
        assert json.loads(body)["type"].endswith("/request-head-timeout")

        # A keep-alive connection used in time is not cut: the clock restarts after each response.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(3):
            writer.write(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
            data = await asyncio.wait_for(reader.read(65536), 5)  # the paced app answers in 0.3 s
            assert data.startswith(b"HTTP/1.1 200 OK\r\n"), data
            await asyncio.sleep(0.8)
        writer.close()


@pytest.mark.parametrize(
    ("trusted", "seen"),
    [
        (None, "203.0.113.7"),  # default: a proxy on this host (a sidecar) is trusted
        ('["10.0.0.0/8"]', "127.0.0.1"),  # only the listed proxies: this peer is not one
        ('["127.0.0.0/8"]', "203.0.113.7"),
    ],
)
def test_the_client_address_comes_from_trusted_proxies_only(trusted, seen):
    env = {"HELPDESK_TRUSTED_PROXIES": trusted} if trusted else {}
    with serving(workers=1, app="client_app", env=env) as port:
        forwarded = {"X-Forwarded-For": "203.0.113.7"}
        answer = httpx.get(f"http://127.0.0.1:{port}/", headers=forwarded, timeout=10)
    assert answer.text == seen


def test_a_malformed_trusted_proxy_stops_the_start_naming_it():
    env = {"HELPDESK_TRUSTED_PROXIES": '["10.0.0.0/33"]'}
    process = serve(free_port(), workers=1, app="client_app", env=env)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode != 0
    assert "10.0.0.0/33" in stderr
