"""RFC 9457 problem+json responses for every error a service can return."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import asyncpg
import sqlalchemy.exc
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match, Route, get_route_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_BASE = "https://helpdesk.dev/problems/"

log = structlog.get_logger()


class ProblemError(Exception):
    """Raise anywhere below an endpoint to answer with a problem document."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        *,
        type_: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type_ or PROBLEM_BASE + title.lower().replace(" ", "-")
        self.headers = headers
        self.extra = extra

    def response(self) -> JSONResponse:
        """The problem document this error answers with."""
        return problem_response(
            self.status, self.title, self.detail, type_=self.type, headers=self.headers, **self.extra
        )


def problem_response(
    status: int,
    title: str,
    detail: str | None = None,
    *,
    type_: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """Build an application/problem+json response."""
    body: dict[str, Any] = {
        "type": type_ or PROBLEM_BASE + title.lower().replace(" ", "-"),
        "title": title,
        "status": status,
        "detail": detail or title,
    }
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def invalid_field(detail: str, field: str) -> ProblemError:
    """A 422 problem naming one offending field, shaped like the request-validation ones."""
    return ProblemError(
        422,
        "Unprocessable Content",
        detail,
        type_=PROBLEM_BASE + "validation",
        errors=[{"field": field, "message": detail}],
    )


_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    409: "Conflict",
    412: "Precondition Failed",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Validation Error",
    428: "Precondition Required",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def title_for(status: int) -> str:
    return _TITLES.get(status, "Error")


def _jsonable_location(loc: tuple[Any, ...]) -> list[str | int]:
    return [part if isinstance(part, int) else str(part) for part in loc]


async def _problem_error(_: Request, exc: ProblemError) -> JSONResponse:
    return exc.response()


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    detail = exc.detail if isinstance(exc.detail, str) else title_for(exc.status_code)
    headers = getattr(exc, "headers", None)
    if exc.status_code == 405:
        # Starlette names the methods of the first route on the path; RFC 9110 wants them all.
        headers = {**(headers or {}), "Allow": ", ".join(_methods_on_path(request))}
    return problem_response(exc.status_code, title_for(exc.status_code), detail, headers=headers)


def _methods_on_path(request: Request) -> list[str]:
    matching = [
        route
        for route in request.app.router.routes
        if isinstance(route, Route) and route.methods and route.matches(request.scope)[0] is not Match.NONE
    ]
    # A fixed path's own methods: `/tickets/bulk` allows POST, not the GET of `/tickets/{id}`.
    fixed = [route for route in matching if not route.param_convertors]
    return sorted(set().union(*(route.methods for route in fixed or matching)))


class WrongMethodRoute(BaseRoute):
    """A 405 for a method that a fixed path does not serve, where a route with a parameter in
    its place would otherwise take the request: `GET /tickets/bulk` went to
    `GET /tickets/{ticket_id}` and was told "ticket_id is not a UUID"."""

    def __init__(self, path: str, served: set[str]) -> None:
        self.path = path
        self.served = frozenset(served)

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        wrong_method = scope["type"] == "http" and scope["method"] not in self.served
        return (Match.FULL if wrong_method and get_route_path(scope) == self.path else Match.NONE), {}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise StarletteHTTPException(405)


def wrong_method_routes(routes: Sequence[BaseRoute]) -> list[WrongMethodRoute]:
    """One `WrongMethodRoute` per fixed path that a parameterised route's pattern also matches;
    they go before the parameterised routes."""
    served: dict[str, set[str]] = defaultdict(set)
    for route in routes:
        if isinstance(route, Route) and route.methods and not route.param_convertors:
            served[route.path] |= route.methods
    patterns = [route.path_regex for route in routes if isinstance(route, Route) and route.param_convertors]
    return [
        WrongMethodRoute(path, methods)
        for path, methods in served.items()
        if any(pattern.match(path) for pattern in patterns)
    ]


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [
        {
            "loc": _jsonable_location(tuple(err.get("loc", ()))),
            "field": ".".join(str(p) for p in err.get("loc", ())[1:]) or str(err.get("loc", [""])[0]),
            "message": err.get("msg", "invalid"),
            "type": err.get("type", "value_error"),
        }
        for err in exc.errors()
    ]
    fields = ", ".join(sorted({e["field"] for e in errors})) or "request"
    return problem_response(
        422,
        "Validation Error",
        f"Invalid request: {fields}",
        type_=PROBLEM_BASE + "validation",
        errors=errors,
    )


# The database (or another server the request needs) is gone, restarting, out of connections
# or too slow: the request may well succeed when retried, so 503 + Retry-After, not a 500.
_UNAVAILABLE = (
    ConnectionError,  # refused or reset while connecting to / talking with a server
    asyncpg.PostgresConnectionError,  # class 08, e.g. the connection does not exist any more
    asyncpg.exceptions.AdminShutdownError,  # terminated by an administrator, server shutting down
    asyncpg.exceptions.CannotConnectNowError,  # starting up / in recovery
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.QueryCanceledError,  # statement_timeout
    sqlalchemy.exc.TimeoutError,  # no pooled connection free in time
)


def _unavailable(exc: BaseException) -> bool:
    if isinstance(exc, sqlalchemy.exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        # SQLAlchemy wraps the driver's error: `orig` is its DBAPI adapter's, caused by asyncpg's.
        driver_error = exc.orig.__cause__ if exc.orig is not None else None
        return driver_error is not None and _unavailable(driver_error)
    if isinstance(exc, asyncpg.InterfaceError):  # the driver's own "connection is closed"
        return "connection is closed" in str(exc)
    if isinstance(exc, asyncpg.InternalClientError):  # its state after the server dropped it
        return True
    return isinstance(exc, _UNAVAILABLE)


async def _unhandled_error(_: Request, exc: Exception) -> JSONResponse:
    # The stack trace goes to the log, never to the client.
    log.exception("unhandled_error", error_type=type(exc).__name__)
    if _unavailable(exc):
        return problem_response(
            503,
            "Service Unavailable",
            "the database or a server this request needs is unavailable or overloaded; retry shortly",
            type_=PROBLEM_BASE + "unavailable",
            headers={"Retry-After": "1"},
        )
    return problem_response(500, "Internal Server Error", "An unexpected error occurred.")


class UnexpectedErrorMiddleware:
    """Answers an error no handler took (500, or 503 for an unavailable database) right here.

    Starlette's last-resort handler sits outside every middleware of the app, so its response
    would carry no X-Request-ID, and the request log line and the latency metric would record
    a 500 for what the client got as a 503. Added first, this runs inside all of them.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        except Exception as exc:
            if started:  # too late for a problem response: the server aborts the connection
                raise
            response = await _unhandled_error(Request(scope), exc)
            await response(scope, receive, send)


def install_problem_handlers(app: FastAPI) -> None:
    """Every error leaves the service as problem+json; unknown errors leak no internals.

    Call it before adding other middleware, so unexpected errors are answered inside them.
    """
    app.add_exception_handler(ProblemError, _problem_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unhandled_error)  # errors raised by middleware itself
    app.add_middleware(UnexpectedErrorMiddleware)
