"""Prometheus metrics shared by every service, plus the HTTP middleware and /metrics route.

A service run with several worker processes (`--workers`, see `libs.common.serve`) shares one
port, so a scrape reaches one worker at random. The supervisor then sets
`PROMETHEUS_MULTIPROC_DIR` before starting the workers: prometheus-client's multiprocess mode
keeps every worker's values in files there, and /metrics answers with all workers' values
combined (counters summed, including those of a worker that has since died, so they never go
back; gauges as each one's `multiprocess_mode` says).
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import time

from fastapi import APIRouter, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
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
    multiprocess_mode="livesum",  # the workers' queues together
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
DEAD_LETTERS_REPLAYED = Counter(
    "helpdesk_dead_letters_replayed_total", "Dead-lettered events replayed by an admin", ["service", "stream"]
)
# Every worker measures the same shared table or consumer: the latest reading is the value.
OUTBOX_BACKLOG = Gauge(
    "helpdesk_outbox_backlog", "Unpublished outbox rows", ["service"], multiprocess_mode="livemostrecent"
)
CONSUMER_LAG = Gauge(
    "helpdesk_consumer_lag",
    "Messages pending for the durable consumer",
    ["service", "stream"],
    multiprocess_mode="livemostrecent",
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
    """Prometheus text exposition of this process's metrics, or of all its workers' together."""
    return Response(exposition(), media_type=CONTENT_TYPE_LATEST)


def exposition() -> bytes:
    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not metrics_dir:
        return generate_latest()
    forget_dead_workers(metrics_dir)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=metrics_dir)
    return generate_latest(registry)


_LIVE_GAUGE_FILE = re.compile(r"gauge_live\w+_(\d+)\.db$")


def forget_dead_workers(metrics_dir: str) -> None:
    """Drop the live gauges of workers that are gone (ended, or killed and restarted by the
    supervisor), so a dead worker's queue length is not reported as current."""
    for path in glob.glob(os.path.join(metrics_dir, "gauge_live*_*.db")):
        match = _LIVE_GAUGE_FILE.search(path)
        if match and not _alive(pid := int(match.group(1))):
            with contextlib.suppress(FileNotFoundError):  # another worker got there first
                multiprocess.mark_process_dead(pid, metrics_dir)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, someone else's
        return True
    return True
