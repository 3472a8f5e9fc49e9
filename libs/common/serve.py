"""Run one process of the platform: `python -m libs.common.serve services.tickets.app:create_app --port 8101`.

uvicorn with uvloop and httptools, no access log (we log requests ourselves), and a graceful
drain on SIGTERM/SIGINT that ends with exit status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import ipaddress
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import uvicorn
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.supervisors import Multiprocess

from libs.common.errors import PROBLEM_BASE, PROBLEM_MEDIA_TYPE


def _after_drain(signum: int, frame: object) -> None:
    # uvicorn re-raises the signal once it has drained; by then the work is done, so the
    # process exits normally (status 0) instead of "killed by SIGTERM".
    return None


_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# After answering with a problem, how long the server still reads (and drops) what the client
# sends before it closes the connection itself.
PROBLEM_LINGER_S = 2.0


class _HeadWithBody:
    """The connection's transport as one response sees it: the status line and headers are held
    back and leave in one write with the first body bytes.

    uvicorn writes them separately, and over TCP_NODELAY each write is a segment of its own that
    wakes the receiver: one more system call, wake-up and read on both sides of every response
    (measured: the head's write alone was ~6 % of a worker's and ~14 % of the gateway's samples).
    A HEAD response has no body write, so it is not wrapped; `100 Continue` is never held.
    """

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._head: bytes | None = None
        self._head_seen = False

    def write(self, data: bytes) -> None:
        if not self._head_seen and data != _CONTINUE:
            self._head_seen = True
            self._head = data
            return
        if self._head is not None:
            head, self._head = self._head, None
            self._transport.writelines((head, data))
            return
        self._transport.write(data)

    def close(self) -> None:
        if self._head is not None:
            self._transport.write(self._head)
            self._head = None
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with:

    - each response's head written together with its body (`_HeadWithBody`);
    - requests it cannot parse answered with problem+json like every other error (uvicorn's
      own answer is text/plain);
    - a deadline for each request's head: uvicorn has none once the first byte has come, so a
      client trickling header lines (slowloris) held its connection, and a file descriptor,
      for as long as it liked. Bodies are not timed here: uploads may be slow, and the request
      deadline covers a body that stops coming.
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_deadline: asyncio.TimerHandle | None = None
        self._answered_with_problem = False
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_received()
        super().connection_lost(exc)

    def on_headers_complete(self) -> None:
        self._head_received()
        super().on_headers_complete()
        cycle = self.cycle
        if (
            cycle is not None
            and cycle.scope["method"] != "HEAD"
            and not isinstance(cycle.transport, _HeadWithBody)
        ):
            cycle.transport = _HeadWithBody(cycle.transport)  # type: ignore[assignment]

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._await_head()  # of the next request on this connection

    def send_400_response(self, msg: str) -> None:
        detail = "The request is not valid HTTP/1.1 (request line, header or chunk framing)."
        self._send_problem(400, "Bad Request", "malformed-request", detail)

    def _await_head(self) -> None:
        self._head_received()
        self._head_deadline = self.loop.call_later(request_head_timeout_s(), self._head_timed_out)

    def _head_received(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being answered; the next head's clock starts after it
        detail = f"the request's headers did not arrive within {request_head_timeout_s():g} s"
        self._send_problem(408, "Request Timeout", "request-head-timeout", detail)

    def _send_problem(self, status: int, title: str, kind: str, detail: str) -> None:
        """A problem document, then the connection closes (uvicorn cannot go on with it)."""
        problem = {"type": PROBLEM_BASE + kind, "title": title, "status": status, "detail": detail}
        body = json.dumps(problem).encode()
        head = [f"HTTP/1.1 {status} {title}\r\n".encode()]
        head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
        head += [
            b"content-type: " + PROBLEM_MEDIA_TYPE.encode() + b"\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self._head_received()
        self._answered_with_problem = True
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        # The client may still be sending (the rest of a head, a body). Closing with its bytes
        # unread would answer them with a reset, which can destroy the problem before the client
        # has read it. So only the sending side ends here; what still arrives is dropped, and the
        # connection closes once the client closes it, or after PROBLEM_LINGER_S (a lingering
        # close, as nginx does).
        self.transport.write_eof()
        self.loop.call_later(PROBLEM_LINGER_S, self.transport.close)

    def data_received(self, data: bytes) -> None:
        if self._answered_with_problem:
            return
        super().data_received(data)


class ServeSettings(BaseSettings):
    """What the served process needs before its app exists."""

    model_config = SettingsConfigDict(env_prefix="HELPDESK_", env_file=".env", extra="ignore")

    # Peers whose X-Forwarded-For names the client (uvicorn then puts that address in the ASGI
    # scope: the gateway's login throttling per address, the request log). Behind a load balancer
    # or ingress, list its addresses; otherwise every client looks like the load balancer.
    trusted_proxies: list[str] = ["127.0.0.1", "::1"]
    # A request's line and headers must arrive within this (from the connection's start, or the
    # end of the previous response on it), else 408 and the connection closes.
    request_head_timeout_s: float = Field(default=30.0, gt=0, le=3600)

    @field_validator("trusted_proxies")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for entry in value:
            if entry != "*":
                ipaddress.ip_network(entry, strict=False)  # ValueError names the bad entry
        return value


@functools.cache
def request_head_timeout_s() -> float:
    return ServeSettings().request_head_timeout_s


def bind_reuse_port(host: str, port: int, *, listen: bool = True) -> socket.socket:
    """A TCP socket on host:port in the port's SO_REUSEPORT group (Linux spreads new connections
    over the group's listening sockets by a hash of the client address and port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
        if listen:
            sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


class WorkerOwnSocket:
    """Goes where uvicorn's supervisor expects the shared listening socket: each worker process
    unpickles it into a socket of its own in the port's SO_REUSEPORT group.

    With one shared socket all workers wait on one accept queue and the kernel wakes the most
    recently waiting one, which accepts every pending connection: measured here, all 8 keep-alive
    connections of a benchmark landed on one of two workers (one core busy, the other idle). A
    socket per worker lets the kernel spread connections over the workers instead.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port

    def __reduce__(self) -> tuple:
        return (bind_reuse_port, (self.host, self.port))


@contextlib.contextmanager
def shared_metrics_dir() -> Iterator[None]:
    """Workers keep their Prometheus values in one directory, so /metrics (answered by any of
    them) reports all of them (`libs.common.metrics`). A directory given in
    `PROMETHEUS_MULTIPROC_DIR` is used as it is (it must be empty at start); otherwise a fresh
    temporary one lives as long as the supervisor."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        yield
        return
    metrics_dir = tempfile.mkdtemp(prefix="helpdesk-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # the workers inherit it
    try:
        yield
    finally:
        del os.environ["PROMETHEUS_MULTIPROC_DIR"]
        shutil.rmtree(metrics_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="helpdesk-serve", description=__doc__)
    parser.add_argument("app_factory", help="module:function returning the ASGI app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--graceful-timeout", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=1, help="worker processes sharing the port")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _after_drain)
    signal.signal(signal.SIGINT, _after_drain)
    config = uvicorn.Config(
        args.app_factory,
        factory=True,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http=HttpProtocol,
        access_log=False,
        forwarded_allow_ips=ServeSettings().trusted_proxies,
        timeout_graceful_shutdown=int(args.graceful_timeout),
        lifespan="on",
        workers=args.workers,
    )
    if args.workers > 1 and hasattr(socket, "SO_REUSEPORT"):
        try:
            # Held, never listening, for the supervisor's lifetime: the port stays ours (a program
            # binding it without SO_REUSEPORT is refused) and a taken port is reported here.
            port_claim = bind_reuse_port(args.host, args.port, listen=False)
        except OSError as exc:
            print(f"helpdesk-serve: cannot bind {args.host}:{args.port}: {exc}", file=sys.stderr)
            return 3
        with port_claim, shared_metrics_dir():
            # uvicorn's supervisor: restarts a worker that dies, drains all on SIGTERM.
            Multiprocess(config, sockets=[WorkerOwnSocket(args.host, args.port)]).run()  # type: ignore[list-item]
        return 0
    if args.workers > 1:
        with shared_metrics_dir():
            Multiprocess(config, sockets=[config.bind_socket()]).run()
        return 0
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 3


if __name__ == "__main__":
    sys.exit(main())
