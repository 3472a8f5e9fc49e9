"""Liveness and readiness endpoints."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

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


@health_router.get("/readyz", include_in_schema=False)
async def readyz(request: Request) -> JSONResponse:
    """Ready when the database answers and NATS is connected; 503 problem otherwise."""
    checks = {"database": await _database_ok(request)}
    # Only apps that use NATS (every service, not the gateway) set app.state.nats.
    if hasattr(request.app.state, "nats"):
        nc = request.app.state.nats
        checks["nats"] = bool(nc is not None and nc.is_connected)
    if all(checks.values()):
        return JSONResponse({"status": "ready", "checks": checks})
    failing = ", ".join(name for name, ok in checks.items() if not ok)
    return problem_response(503, "Service Unavailable", f"not ready: {failing} unreachable", checks=checks)
