"""Request id middleware, the request log line, the request deadline and the concurrency limit
shared by every process."""

from __future__ import annotations

import asyncio
import re
import time
from contextvars import ContextVar

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from libs.common.errors import PROBLEM_BASE, problem_response
from libs.common.ids import new_id
from libs.common.metrics import HTTP_WAITING

log = structlog.get_logger()
REQUEST_ID_HEADER = b"x-request-id"
# A client may pass its own id for tracing, but never anything that could poison logs.
_VALID_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")
# Probes and scrapes: no request log line (they come every few seconds), and they never wait
# behind API requests under the concurrency limit.
PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def incoming_request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == REQUEST_ID_HEADER and _VALID_REQUEST_ID.match(value):
            return value.decode()
    return str(new_id())


class RequestIdMiddleware:
    """Accept or create `X-Request-ID`, bind it to the log context, echo it on the response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = incoming_request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k != REQUEST_ID_HEADER]
                headers.append((REQUEST_ID_HEADER, request_id.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if scope["path"] not in PROBE_PATHS:
                log.info(
                    "http_request",
                    method=scope["method"],
                    path=scope["path"],
                    status=status,
                    duration_ms=round((time.perf_counter() - started) * 1000, 2),
                )
            structlog.contextvars.unbind_contextvars("request_id")


class HeadAsGetMiddleware:
    """HEAD wherever GET is served (RFC 9110 §9.3.2): the GET runs, its headers are sent, its body
    is not. FastAPI routes answer only the methods they declare."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, send_headers_only)


# The running request's deadline, for `lift_request_deadline`.
_request_deadline: ContextVar[asyncio.Timeout | None] = ContextVar("request_deadline", default=None)


def lift_request_deadline() -> None:
    """The request's work is about to become durable (its COMMIT): from here on it is answered,
    never abandoned, so a 503 "nothing was kept" cannot follow a change that was committed."""
    deadline = _request_deadline.get()
    if deadline is not None and not deadline.expired():
        deadline.reschedule(None)


class RequestDeadlineMiddleware:
    """Abandons a request that has not started its response `deadline_s` after the last part of
    its body arrived (or after it began, if the endpoint reads no body).

    Its work is cancelled, so its transaction rolls back, and the client gets a 503 problem
    saying nothing was kept. Without it, a request slower than the gateway's upstream timeout
    got a 504 from the gateway and still committed afterwards. A slow upload is not cut while
    its bytes keep coming; once the response has started (downloads, streams) there is no
    deadline any more.
    """

    def __init__(self, app: ASGIApp, deadline_s: float) -> None:
        self.app = app
        self.deadline_s = deadline_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.deadline_s) as deadline:
                token = _request_deadline.set(deadline)

                async def receive_extending_deadline() -> Message:
                    message = await receive()
                    if message["type"] == "http.request" and deadline.when() is not None:
                        deadline.reschedule(loop.time() + self.deadline_s)
                    return message

                async def send_lifting_deadline(message: Message) -> None:
                    if message["type"] == "http.response.start":
                        deadline.reschedule(None)
                    await send(message)

                try:
                    await self.app(scope, receive_extending_deadline, send_lifting_deadline)
                finally:
                    _request_deadline.reset(token)
        except TimeoutError:
            if not deadline.expired():  # the app's own, not this deadline
                raise
            log.warning("request_deadline_exceeded", path=scope["path"], deadline_s=self.deadline_s)
            await problem_response(
                503,
                "Service Unavailable",
                f"the request took longer than {self.deadline_s:g} s and was abandoned; "
                "nothing it changed was kept",
                type_=PROBLEM_BASE + "request-timeout",
            )(scope, receive, send)


# Bodies up to this size are read before the request waits for its place, so a slow client
# never holds one; larger or unsized bodies (uploads) are streamed and run outside the limit.
BUFFERED_BODY_MAX_BYTES = 1024 * 1024


class ConcurrencyLimitMiddleware:
    """At most `limit` requests of this process run at once; the others wait their turn, first
    come first served (0: no limit).

    A request's latency is its wait plus its own work. With every request running at once, the
    event loop shares itself among all of them: each await of each request queues behind the
    slices of all the others, so a request with more round trips (a create) takes several times
    longer than a list, and the slowest requests set the tail. Admitted in order, requests run
    with few competitors and take about the time their work takes; the same throughput, a
    shorter tail (bench/README.md). The limit only has to keep the process busy while some of
    its requests wait on the database. A request gives up its place when its response starts
    (a stream or a download does not hold one while it sends).
    """

    def __init__(self, app: ASGIApp, limit: int, service: str) -> None:
        self.app = app
        self.slots = asyncio.Semaphore(limit) if limit > 0 else None
        self.waiting = HTTP_WAITING.labels(service)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.slots is None or scope["type"] != "http" or scope["path"] in PROBE_PATHS:
            await self.app(scope, receive, send)
            return
        body_length = _content_length(scope)
        if body_length is None or body_length > BUFFERED_BODY_MAX_BYTES:
            await self.app(scope, receive, send)
            return
        messages = [await receive()] if body_length else []
        while messages and messages[-1]["type"] == "http.request" and messages[-1].get("more_body"):
            messages.append(await receive())

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        self.waiting.inc()
        try:
            await self.slots.acquire()
        finally:
            self.waiting.dec()
        held = True

        def give_back() -> None:
            nonlocal held
            if held:
                held = False
                self.slots.release()

        async def send_giving_back(message: Message) -> None:
            if message["type"] == "http.response.start":
                give_back()
            await send(message)

        try:
            await self.app(scope, replay, send_giving_back)
        finally:
            give_back()


def _content_length(scope: Scope) -> int | None:
    """The declared body size; 0 without a body; None when unsized (chunked) or malformed."""
    length = 0
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                return None
        elif name == b"transfer-encoding":
            return None
    return length
