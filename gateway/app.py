"""Gateway entrypoint: `uvicorn --factory gateway.app:create_app`."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import structlog
from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.gzip import GZipMiddleware

from gateway import asyncapi, auth, openapi, proxy
from gateway.body_limit import BodySizeLimitMiddleware
from gateway.rate_limit import RateLimiter
from gateway.settings import Settings
from libs.common.auth import TokenVerifier
from libs.common.db import create_engine, create_session_factory, finish_read_only_transactions
from libs.common.errors import install_problem_handlers
from libs.common.health import health_router
from libs.common.http import HeadAsGetMiddleware, RequestIdMiddleware
from libs.common.logging import configure_logging
from libs.common.metrics import MetricsMiddleware, metrics_router
from libs.common.responses import FASTAPI_TELEMETRY_OFF
from libs.common.service_app import settle_garbage_collector

log = structlog.get_logger()

DESCRIPTION = """\
The public API of the helpdesk platform. Every path except `/api/v1/auth/token` needs a bearer
token; the gateway verifies it and forwards requests to the service that owns the path.
Errors are RFC 9457 `application/problem+json` documents.
"""
CORS_HEADERS = [
    "Authorization",
    "Content-Type",
    "Accept",
    "Accept-Language",
    "If-Match",
    "If-None-Match",
    "Idempotency-Key",
    "X-Request-ID",
]
CORS_EXPOSED_HEADERS = ["X-Request-ID", "ETag", "Location", "Retry-After", "Idempotent-Replayed"]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    configure_logging(settings.service_name, settings.log_level, settings.log_format)
    token_verifier = TokenVerifier(settings)
    verified_tokens = proxy.VerifiedTokenCache(token_verifier)
    upstreams = proxy.upstreams_from(settings)
    limiter = RateLimiter(
        settings.tenant_rate_limit_per_s, settings.user_rate_limit_per_s, settings.rate_limit_burst_s
    )
    proxies = [proxy.UpstreamProxy(upstream, settings, verified_tokens, limiter) for upstream in upstreams]

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.engine = create_engine(settings)
        app.state.session_factory = create_session_factory(app.state.engine)
        try:
            async with proxy.running(proxies):
                settle_garbage_collector()
                log.info("service_started", service=settings.service_name)
                yield
                log.info("service_stopping", service=settings.service_name)
        finally:
            await finish_read_only_transactions()
            await app.state.engine.dispose()
            log.info("service_stopped", service=settings.service_name)

    app = FastAPI(
        title="helpdesk API",
        description=DESCRIPTION,
        version="0.1.0",
        lifespan=lifespan,
        # Served by gateway.openapi: the merged document of all services.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        telemetry=FASTAPI_TELEMETRY_OFF,
    )
    app.state.settings = settings
    app.state.token_verifier = token_verifier
    app.state.openapi = openapi.MergedOpenAPI(app, upstreams, settings.openapi_cache_s)
    app.state.asyncapi = asyncapi.merged_asyncapi(upstreams, settings.openapi_cache_s)
    # Innermost, inside the problem handlers' middleware: proxied requests leave here.
    app.add_middleware(proxy.ProxiedPaths, proxies=proxies)
    install_problem_handlers(app)
    app.include_router(health_router)
    app.include_router(metrics_router)
    app.include_router(openapi.router)
    app.include_router(asyncapi.router)
    app.include_router(auth.router)

    # Added innermost first: a 413 still gets CORS headers, a request id and a metric.
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        upload_max_bytes=settings.upload_max_body_bytes,
    )
    # Level 1 makes JSON about 10 % bigger than level 6 at 60 % of the CPU time.
    app.add_middleware(GZipMiddleware, minimum_size=settings.gzip_minimum_bytes, compresslevel=1)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=CORS_HEADERS,
            expose_headers=CORS_EXPOSED_HEADERS,
            max_age=600,
        )
    # HEAD wherever GET is served: the gateway's own routes; proxied requests ask for a GET
    # upstream and send its headers only.
    app.add_middleware(HeadAsGetMiddleware)
    app.add_middleware(MetricsMiddleware, service=settings.service_name)
    app.add_middleware(RequestIdMiddleware)
    return app
