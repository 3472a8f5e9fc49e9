"""Streaming reverse proxy from the public /api/v1/<area> paths to the services.

Raw ASGI on purpose: this is the gateway's hot path, so it builds the upstream request straight
from the ASGI scope, streams bodies both ways without parsing them, and answers in one body
message whenever the upstream response is already complete.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp
import structlog
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send
from yarl import URL

from gateway.body_limit import BodyTooLargeError
from gateway.rate_limit import RateLimiter
from gateway.settings import Settings
from libs.common.auth import Identity, TokenVerifier
from libs.common.errors import PROBLEM_BASE, ProblemError, problem_response

log = structlog.get_logger()

# Hop-by-hop headers (RFC 9110 §7.6.1) belong to one connection and are never forwarded.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Identity headers are set only by the gateway, from the verified token.
IDENTITY_HEADERS = frozenset({b"x-tenant-id", b"x-user-id", b"x-user-roles"})
DROPPED_REQUEST_HEADERS = (
    HOP_BY_HOP | IDENTITY_HEADERS | {b"host", b"expect", b"x-request-id", b"x-forwarded-for"}
)
# The gateway's own server adds Date and Server; RequestIdMiddleware sets X-Request-ID.
DROPPED_RESPONSE_HEADERS = HOP_BY_HOP | {b"date", b"server", b"x-request-id"}
# aiohttp would otherwise add headers the client never sent.
SKIP_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
SAFE_PATH_CHARS = "/%:@!$&'()*+,;=-._~"


@dataclass(frozen=True)
class Upstream:
    name: str
    prefix: str  # public path prefix, forwarded unchanged
    url: str


def upstreams_from(settings: Settings) -> list[Upstream]:
    return [
        Upstream("tickets", "/api/v1/tickets", settings.tickets_url),
        Upstream("summarization", "/api/v1/summaries", settings.summarization_url),
        Upstream("notifications", "/api/v1/notifications", settings.notifications_url),
        Upstream("analytics", "/api/v1/analytics", settings.analytics_url),
    ]


def _missing_token() -> JSONResponse:
    return problem_response(
        401, "Unauthorized", "missing bearer token", headers={"WWW-Authenticate": "Bearer"}
    )


def _bearer_token(authorization: bytes | None) -> str | None:
    if authorization is None or authorization[:7].lower() != b"bearer ":
        return None
    token = authorization[7:].strip()
    return token.decode("latin-1") if token else None


def _upstream_path(scope: Scope) -> str:
    raw_path: bytes | None = scope.get("raw_path")
    if raw_path:
        try:
            return raw_path.decode("ascii")
        except UnicodeDecodeError:
            return quote(raw_path, safe=SAFE_PATH_CHARS)
    return quote(scope["path"], safe=SAFE_PATH_CHARS)


def _forwarded_for(received: bytes | None, client: str) -> str:
    """`X-Forwarded-For` for the upstream: the list received, then the client's address.

    Behind a trusted proxy, the server has already taken the client's address from the end of
    that list (`HELPDESK_TRUSTED_PROXIES`); it is not added a second time.
    """
    if not received:
        return client
    addresses = received.decode("latin-1")
    if addresses.rsplit(",", 1)[-1].strip() == client:
        return addresses
    return f"{addresses}, {client}"


def _has_dot_segment(path: str) -> bool:
    return "/." in path and any(segment in (".", "..") for segment in path.split("/"))


class VerifiedTokenCache:
    """Identity headers for a bearer token, from the verifier (which caches verified tokens
    until they expire, at most a minute)."""

    def __init__(self, verifier: TokenVerifier) -> None:
        self.verifier = verifier

    async def identity_headers(self, token: str) -> tuple[Identity, tuple[tuple[str, str], ...]]:
        """The identity of a valid token with its `X-Tenant-Id`, `X-User-Id` and `X-User-Roles`;
        a 401 ProblemError otherwise."""
        identity = await self.verifier.verify_async(token)
        return identity, (
            ("x-tenant-id", identity.tenant),
            ("x-user-id", identity.user_id),
            ("x-user-roles", ",".join(sorted(identity.roles))),
        )


class UpstreamProxy:
    """ASGI app forwarding one public prefix to one service over a pooled keep-alive session."""

    def __init__(
        self, upstream: Upstream, settings: Settings, tokens: VerifiedTokenCache, limiter: RateLimiter
    ) -> None:
        self.upstream = upstream
        self.tokens = tokens
        self.limiter = limiter
        self.base_url = upstream.url.rstrip("/")
        self.settings = settings
        self.session: aiohttp.ClientSession | None = None
        self.timeout = aiohttp.ClientTimeout(
            total=None,
            # Waiting for a free pooled connection counts against the request timeout.
            connect=settings.upstream_timeout_s,
            sock_connect=settings.upstream_connect_timeout_s,
            # Time without any byte from the service; streams (live events) stay open while they flow.
            sock_read=settings.upstream_timeout_s,
        )

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self.settings.upstream_max_connections,
            # Below uvicorn's 5 s keep-alive: the service never closes a connection we are about to reuse.
            keepalive_timeout=4.0,
            ttl_dns_cache=300,
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),  # never share one client's cookies with another
            skip_auto_headers=SKIP_AUTO_HEADERS,
            timeout=self.timeout,
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if _has_dot_segment(scope["path"]):
            await problem_response(400, "Bad Request", "dot segments are not allowed in paths")(
                scope, receive, send
            )
            return

        authorization = None
        forwarded_for = None
        connection_tokens = None
        headers: list[tuple[str, str]] = []
        for name, value in scope["headers"]:
            if name in DROPPED_REQUEST_HEADERS:
                if name == b"x-forwarded-for":
                    forwarded_for = value
                elif name == b"connection":
                    connection_tokens = value
                continue
            if name == b"authorization":
                authorization = value
            headers.append((name.decode("latin-1"), value.decode("latin-1")))

        token = _bearer_token(authorization)
        if token is None:
            await _missing_token()(scope, receive, send)
            return
        try:
            identity, identity_headers = await self.tokens.identity_headers(token)
        except ProblemError as exc:
            await exc.response()(scope, receive, send)
            return
        refusal = self.limiter.refusal(identity.tenant, identity.user_id)
        if refusal is not None:
            over, wait_s = refusal
            await problem_response(
                429,
                "Too Many Requests",
                f"{over}; retry after {wait_s} s",
                type_=PROBLEM_BASE + "rate-limited",
                headers={"Retry-After": str(wait_s)},
            )(scope, receive, send)
            return

        if connection_tokens:
            # Headers named in Connection are hop-by-hop too.
            named = {t.strip().lower() for t in connection_tokens.decode("latin-1").split(",")}
            headers = [(k, v) for k, v in headers if k not in named]
        client = scope.get("client")
        if client:
            headers.append(("x-forwarded-for", _forwarded_for(forwarded_for, client[0])))
        headers.extend(identity_headers)
        request_id = scope.get("state", {}).get("request_id")
        if request_id:
            headers.append(("x-request-id", request_id))

        query = scope.get("query_string")
        url = self.base_url + _upstream_path(scope)
        if query:
            url += "?" + query.decode("latin-1")

        body_state = _RequestBody()
        first = await receive()
        if first["type"] == "http.disconnect":
            return
        body = first.get("body", b"")
        data: bytes | AsyncIterator[bytes] | None
        if first.get("more_body", False):
            data = body_state.stream(body, receive)
        else:
            body_state.complete = True
            data = body or None

        await self._forward(scope, receive, send, url, headers, data, body_state)

    async def _forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        url: str,
        headers: list[tuple[str, str]],
        data: bytes | AsyncIterator[bytes] | None,
        body_state: _RequestBody,
    ) -> None:
        assert self.session is not None, "proxy used outside the app lifespan"
        try:
            response = await self.session.request(
                scope["method"], URL(url, encoded=True), headers=headers, data=data, allow_redirects=False
            )
        except aiohttp.ConnectionTimeoutError:
            await self._unavailable(scope, receive, send, "did not accept a connection in time")
            return
        except (aiohttp.ServerTimeoutError, TimeoutError):
            log.warning("upstream_timeout", upstream=self.upstream.name)
            await problem_response(
                504,
                "Gateway Timeout",
                f"the {self.upstream.name} service did not answer in time",
                type_=PROBLEM_BASE + "gateway-timeout",
            )(scope, receive, send)
            return
        except aiohttp.ClientConnectorError:
            await self._unavailable(scope, receive, send, "is unreachable")
            return
        except aiohttp.ClientError as exc:
            if body_state.too_large:
                raise body_state.too_large from None
            log.warning("upstream_error", upstream=self.upstream.name, error=repr(exc))
            await problem_response(
                502,
                "Bad Gateway",
                f"the {self.upstream.name} service returned an invalid response",
                type_=PROBLEM_BASE + "bad-gateway",
            )(scope, receive, send)
            return

        try:
            await self._relay_response(response, receive, send, body_state)
        finally:
            response.release()

    async def _unavailable(self, scope: Scope, receive: Receive, send: Send, reason: str) -> None:
        log.warning("upstream_unavailable", upstream=self.upstream.name, reason=reason)
        await problem_response(
            503,
            "Service Unavailable",
            f"the {self.upstream.name} service {reason}",
            type_=PROBLEM_BASE + "service-unavailable",
            headers={"Retry-After": "1"},
        )(scope, receive, send)

    async def _relay_response(
        self, response: aiohttp.ClientResponse, receive: Receive, send: Send, body_state: _RequestBody
    ) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [
                    (name.lower(), value)
                    for name, value in response.raw_headers
                    if name.lower() not in DROPPED_RESPONSE_HEADERS
                ],
            }
        )
        content = response.content
        try:
            chunk = await content.readany()
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._abort(response, exc)
            return
        if content.at_eof():  # the common case: the whole body arrived at once
            await send({"type": "http.response.body", "body": chunk, "more_body": False})
            return
        # A long or open-ended body (exports, live event streams): forward chunks as they come,
        # and stop reading from the service as soon as the client goes away.
        watcher = (
            asyncio.create_task(_close_on_disconnect(receive, response)) if body_state.complete else None
        )
        try:
            while chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                chunk = await content.readany()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except (aiohttp.ClientError, TimeoutError) as exc:
            if watcher is None or not watcher.done():
                self._abort(response, exc)
        finally:
            if watcher is not None:
                watcher.cancel()

    def _abort(self, response: aiohttp.ClientResponse, exc: BaseException) -> None:
        # Returning without finishing the body makes the server close the client connection,
        # so the client sees a truncated response rather than a silently short one.
        log.warning("upstream_stream_failed", upstream=self.upstream.name, error=repr(exc))
        response.close()


class _RequestBody:
    """Streams a multi-message request body upstream and remembers how it ended."""

    def __init__(self) -> None:
        self.complete = False
        self.too_large: BodyTooLargeError | None = None

    async def stream(self, first: bytes, receive: Receive) -> AsyncIterator[bytes]:
        if first:
            yield first
        while True:
            try:
                message = await receive()
            except BodyTooLargeError as exc:
                self.too_large = exc
                raise
            if message["type"] == "http.disconnect":
                raise ConnectionAbortedError("client disconnected while sending the body")
            body = message.get("body", b"")
            if body:
                yield body
            if not message.get("more_body", False):
                self.complete = True
                return


async def _close_on_disconnect(receive: Receive, response: aiohttp.ClientResponse) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            response.close()
            return


class ProxiedPaths:
    """The gateway's innermost middleware: a request for a proxied prefix (the collection path
    itself or anything below it) goes straight to its proxy.

    Nearly all traffic is proxied; only the gateway's own endpoints need FastAPI's exception
    middleware, its exit-stack middleware and its router. Past those layers a proxied create
    costs the gateway ~5 % less CPU (bench/README.md). Problems the proxy raises before
    answering (a body over the limit) are answered here, as FastAPI's handler would.
    """

    def __init__(self, app: ASGIApp, proxies: list[UpstreamProxy]) -> None:
        self.app = app
        # The matched "route" the metrics label requests with, as when these were router routes.
        self.prefixes = [
            (
                proxy.upstream.prefix,
                proxy,
                Route(proxy.upstream.prefix, proxy),
                Route(proxy.upstream.prefix + "/{path:path}", proxy),
            )
            for proxy in proxies
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            for prefix, proxy, collection, below in self.prefixes:
                if path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/"):
                    scope["route"] = collection if len(path) == len(prefix) else below
                    try:
                        await proxy(scope, receive, send)
                    except ProblemError as exc:
                        await exc.response()(scope, receive, send)
                    return
        await self.app(scope, receive, send)


@contextlib.asynccontextmanager
async def running(proxies: list[UpstreamProxy]) -> AsyncIterator[None]:
    """Open every upstream session for the app's lifetime."""
    for proxy in proxies:
        await proxy.start()
    try:
        yield
    finally:
        for proxy in proxies:
            await proxy.close()
