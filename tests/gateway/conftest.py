"""Gateway fixtures: the gateway app against the test database and a real echo upstream."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
import pytest_asyncio
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.requests import ClientDisconnect

from gateway.app import create_app
from gateway.settings import Settings
from libs.common.launcher import free_port
from tests.conftest import Infra, app_client, settings_for

ALLOWED_ORIGIN = "https://app.helpdesk.test"
MAX_BODY_BYTES = 64 * 1024
UPSTREAM_TIMEOUT_S = 1.0


class TokenRead(BaseModel):
    """Same name as the gateway's own schema, different shape: the merged OpenAPI must keep both."""

    echo_only: int


def echo_app() -> FastAPI:
    """A stand-in tickets service that answers with what it received."""
    app = FastAPI(title="echo")
    app.state.hits = 0

    @app.get("/api/v1/tickets/big")
    async def big() -> dict:
        app.state.hits += 1
        return {"items": [{"id": i, "subject": "elevator stuck on floor 3"} for i in range(500)]}

    @app.get("/api/v1/tickets/stream")
    async def stream() -> StreamingResponse:
        app.state.hits += 1

        async def chunks():
            for i in range(5):
                yield f"data: {i}\n\n".encode()
                await asyncio.sleep(0.05)

        return StreamingResponse(chunks(), media_type="text/event-stream")

    @app.get("/api/v1/tickets/token-shaped", response_model=TokenRead)
    async def token_shaped() -> TokenRead:
        return TokenRead(echo_only=1)

    async def echo(request: Request, rest: str) -> dict:
        app.state.hits += 1
        try:
            body = await request.body()
        except ClientDisconnect:  # the gateway gave up on an oversized upload
            return {}
        if "sleep" in request.query_params:
            await asyncio.sleep(float(request.query_params["sleep"]))
        return {
            "method": request.method,
            "path": request.url.path,
            "query": request.url.query,
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.scope["headers"]],
            "body_length": len(body),
        }

    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        app.add_api_route("/api/v1/tickets/{rest:path}", echo, methods=[method], name=f"echo_{method}")

    return app


@dataclass
class EchoUpstream:
    app: FastAPI
    url: str

    @property
    def hits(self) -> int:
        return self.app.state.hits


@contextlib.asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[str]:
    """Serve `app` on a free loopback port (no lifespan); yields its base URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", lifespan="off", access_log=False
        )
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def echo_upstream() -> AsyncIterator[EchoUpstream]:
    app = echo_app()
    async with serving(app) as url:
        yield EchoUpstream(app, url)


def gateway_settings(infra: Infra, echo_url: str, **overrides) -> Settings:
    values = {
        "tickets_url": echo_url,
        # Nothing listens on these ports: the services are "down".
        "summarization_url": f"http://127.0.0.1:{free_port()}",
        "notifications_url": f"http://127.0.0.1:{free_port()}",
        "analytics_url": f"http://127.0.0.1:{free_port()}",
        "cors_origins": [ALLOWED_ORIGIN],
        "max_body_bytes": MAX_BODY_BYTES,
        "upload_max_body_bytes": MAX_BODY_BYTES * 4,
        "upstream_timeout_s": UPSTREAM_TIMEOUT_S,
        "openapi_cache_s": 0,
        "login_max_failures": 5,
        "login_max_failures_per_ip": 12,
        "login_failure_window_s": 900,
    }
    values.update(overrides)
    return settings_for(infra, Settings, "gateway", **values)


@dataclass
class Gateway:
    app: FastAPI
    client: httpx.AsyncClient
    settings: Settings

    def client_from(self, ip: str) -> httpx.AsyncClient:
        """A client with its own source address (login throttling counts per address)."""
        transport = httpx.ASGITransport(app=self.app, client=(ip, 40000))
        return httpx.AsyncClient(transport=transport, base_url="http://test")


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def gateway(infra: Infra, echo_upstream: EchoUpstream) -> AsyncIterator[Gateway]:
    settings = gateway_settings(infra, echo_upstream.url)
    app = create_app(settings)
    async with app_client(app) as client:
        yield Gateway(app, client, settings)


_addresses = itertools.count(1)


@pytest.fixture
def client_ip() -> str:
    """A source address no other test uses."""
    n = next(_addresses)
    return f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}"
