"""Prometheus metrics shared by every service, plus the HTTP middleware and /metrics route."""

from __future__ import annotations

import time

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HTTP_LATENCY = Histogram(
    "helpdesk_http_request_duration_seconds",
    "HTTP request latency by route template",
    ["service", "method", "route", "status"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
HTTP_WAITING = Gauge(
    "helpdesk_http_requests_waiting",
    "Requests waiting for a place under the process's concurrency limit",
    ["service"],
)
EVENTS_PUBLISHED = Counter(
    "helpdesk_events_published_total", "Outbox events acknowledged by JetStream", ["service"]
)
EVENTS_CONSUMED = Counter("helpdesk_events_consumed_total", "Events handled and acked", ["service", "stream"])
EVENTS_FAILED = Counter(
    "helpdesk_events_failed_total", "Event handler failures (nak or dead-letter)", ["service", "stream"]
)
EVENTS_DUPLICATE = Counter(
    "helpdesk_events_duplicate_total", "Redelivered events skipped by the inbox", ["service", "stream"]
)
DEAD_LETTERS = Counter(
    "helpdesk_dead_letters_total", "Events moved to the dead-letter table", ["service", "stream"]
)
OUTBOX_BACKLOG = Gauge("helpdesk_outbox_backlog", "Unpublished outbox rows", ["service"])
CONSUMER_LAG = Gauge(
    "helpdesk_consumer_lag", "Messages pending for the durable consumer", ["service", "stream"]
)


def route_template(scope: Scope) -> str:
    """The matched route's path template (set by the router once it has matched), so
    /tickets/{ticket_id} is one series, not one per id."""
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


class MetricsMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware overhead): one latency observation per HTTP request."""

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            HTTP_LATENCY.labels(self.service, scope["method"], route_template(scope), str(status)).observe(
                time.perf_counter() - started
            )


metrics_router = APIRouter()


@metrics_router.get("/metrics", include_in_schema=False)
async def metrics() -> Response:
    """Prometheus text exposition of this process's metrics."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
