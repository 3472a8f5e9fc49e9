"""A lean HTTP/1.1 keep-alive client for the load generators.

The benchmarks run their load generator on the same two cores as the services they measure, so
whatever the client spends per request is taken from the service. aiohttp spent ~0.15 ms of CPU per
request (0.27 cores at 1,750 reads/s); this client sends pre-encoded requests over one connection
per simulated user and parses responses with httptools (the C parser uvicorn serves them with),
for a fraction of that. It speaks only what the benchmarks need: one request at a time per
connection, Content-Length or chunked responses, reconnecting when the server closes.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes


def encode_request(
    method: str, url: str, headers: dict[str, str] | None = None, body: bytes | None = None
) -> bytes:
    """The request's bytes, built once and sent as many times as the benchmark likes."""
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body is not None or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body or b'')}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[Response] | None = None
        self.chunks: list[bytes] = []
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"malformed response: {exc}"))
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ConnectionError("connection closed before the response was complete"))

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(Response(self.parser.get_status_code(), b"".join(self.chunks)))
        if not self.parser.should_keep_alive():
            self.closed = True
            self.transport.close()

    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)


class Connection:
    """One keep-alive connection to `base_url` (http only), opened on first use and after a close."""

    def __init__(self, base_url: str, timeout_s: float) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"only http://host:port URLs are supported, not {base_url!r}")
        self.host, self.port = parts.hostname, parts.port or 80
        self.timeout_s = timeout_s
        self.protocol: _Protocol | None = None

    async def send(self, raw_request: bytes) -> Response:
        """Send one encoded request and wait for its response; raises OSError or TimeoutError."""
        loop = asyncio.get_running_loop()
        if self.protocol is None or self.protocol.closed:
            _, self.protocol = await asyncio.wait_for(
                loop.create_connection(_Protocol, self.host, self.port), self.timeout_s
            )
        protocol = self.protocol
        protocol.chunks = []
        protocol.waiter = loop.create_future()
        protocol.transport.write(raw_request)
        try:
            return await asyncio.wait_for(protocol.waiter, self.timeout_s)
        except BaseException:
            self.close()  # a late response must not be taken for the next request's
            raise

    async def error_of(self, raw_request: bytes, label: str, first_detail: dict[str, str]) -> str | None:
        """Send; None for a 2xx answer, else a short error kind (`"create 503"`, `"read TimeoutError"`),
        the first detail of each kind kept in `first_detail`."""
        try:
            response = await self.send(raw_request)
        except (TimeoutError, OSError) as exc:
            kind = f"{label} {type(exc).__name__}"
            first_detail.setdefault(kind, str(exc)[:200])
            return kind
        if 200 <= response.status < 300:
            return None
        kind = f"{label} {response.status}"
        first_detail.setdefault(kind, response.body[:300].decode(errors="replace"))
        return kind

    def close(self) -> None:
        if self.protocol is not None and self.protocol.transport is not None:
            self.protocol.closed = True
            self.protocol.transport.close()
        self.protocol = None
