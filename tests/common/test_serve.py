"""`python -m libs.common.serve` with several workers: connections are spread over the workers."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

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


def serve(port: int, workers: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "libs.common.serve", "tests.common.test_serve:pid_app"]
    command += ["--port", str(port), "--workers", str(workers)]
    return subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
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


@pytest.fixture
def two_workers():
    port = free_port()
    process = serve(port, workers=2)
    try:
        wait_serving(process, port)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)


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
