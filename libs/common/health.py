"""Liveness and readiness endpoints."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from nats.aio.client import Client as NATS

from libs.common.db import autocommit_driver_connection
from libs.common.errors import problem_response

health_router = APIRouter(tags=["health"])


@health_router.get("/healthz", include_in_schema=False)
async def healthz() -> dict[str, str]:
    """The process is alive (no dependencies checked)."""
    return {"status": "ok"}


async def _database_ok(request: Request) -> bool:
    try:
        async with asyncio.timeout(2.0):
            # Cut off by the timeout, the connection is discarded, never pooled in an unknown state.
            async with autocommit_driver_connection(request.app.state.engine) as raw:
                await raw.fetchval("SELECT 1")
        return True
    except Exception:
        return False


async def _nats_ok(nc: NATS | None) -> bool:
    """The server answers a PING. A hung server leaves the client "connected" for minutes (until
    its pings time out) while nothing is published: the outbox grows, readiness said yes."""
    if nc is None or not nc.is_connected:
        return False
    try:
        await nc.flush(timeout=0.5)
        return True
    except Exception:
        return False


@health_router.get("/readyz", include_in_schema=False)
async def readyz(request: Request) -> JSONResponse:
    """Ready when the database and NATS answer; 503 problem otherwise."""
    checks = {"database": await _database_ok(request)}
    # Only apps that use NATS (every service, not the gateway) set app.state.nats.
    if hasattr(request.app.state, "nats"):
        checks["nats"] = await _nats_ok(request.app.state.nats)
    if all(checks.values()):
        return JSONResponse({"status": "ready", "checks": checks})
    failing = ", ".join(name for name, ok in checks.items() if not ok)
    return problem_response(503, "Service Unavailable", f"not ready: {failing} unreachable", checks=checks)
