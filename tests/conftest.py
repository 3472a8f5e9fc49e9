"""Test harness: one throwaway PostgreSQL and NATS per session, started by the launcher code."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import jwt
import pytest
from aiohttp import web
from fastapi import FastAPI

from libs.common import migrations
from libs.common.launcher import NatsServer, PostgresServer, Secrets, free_port, service_database_url
from libs.common.settings import CommonSettings
from libs.common.stack import SERVICES, STACK

SettingsT = TypeVar("SettingsT", bound=CommonSettings)


@dataclass
class Infra:
    """The session's servers; tests may stop and restart NATS (outbox tests do)."""

    postgres: PostgresServer
    nats: NatsServer
    secrets: Secrets
    workdir: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def admin_url(self) -> str:
        return self.postgres.admin_url

    @property
    def nats_url(self) -> str:
        return self.nats.url

    @property
    def jwt_secret(self) -> str:
        return self.secrets.jwt_secret

    def database_url_for(self, name: str) -> str:
        role = SERVICES[name].role
        return service_database_url(self.admin_url, role, self.secrets.role_passwords[role])


def migrate_all(admin_url: str, secrets: Secrets) -> None:
    roles = {spec.schema: (spec.role, secrets.role_passwords[spec.role]) for spec in STACK}
    asyncio.run(migrations.provision_roles(admin_url, roles))
    for spec in STACK:
        migrations.upgrade(admin_url, spec.migrations, spec.schema)
    asyncio.run(migrations.provision_roles(admin_url, roles))


@pytest.fixture(scope="session")
def infra() -> Iterator[Infra]:
    workdir = Path(tempfile.mkdtemp(prefix="helpdesk-test-"))
    secrets = Secrets.load_or_create(workdir / "secrets.json")
    postgres = PostgresServer(workdir / "pg", free_port(), secrets.pg_password, durable=False)
    nats_server = NatsServer(workdir / "nats", free_port())
    started = time.monotonic()
    postgres.start()
    nats_server.start()
    try:
        migrate_all(postgres.admin_url, secrets)
        print(
            f"\ntest infra ready in {time.monotonic() - started:.1f}s: "
            f"pg :{postgres.port}, nats :{nats_server.port}"
        )
        yield Infra(postgres, nats_server, secrets, workdir)
    finally:
        nats_server.stop()
        postgres.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def settings_for(infra: Infra, settings_class: type[SettingsT], name: str, **overrides: Any) -> SettingsT:
    """Settings for service `name` pointed at the session's servers (its own login role)."""
    values: dict[str, Any] = {
        "database_url": infra.database_url_for(name),
        "nats_url": infra.nats_url,
        "jwt_secret": infra.jwt_secret,
        "env": "test",
        "log_format": "json",
        "log_level": "WARNING",
        "outbox_poll_interval_s": 0.2,
        "consumer_ack_wait_s": 5.0,
        "consumer_backoff_s": [0.2, 0.5, 1.0],
        "db_pool_size": 5,
    }
    values.update(overrides)
    return settings_class(**values)


def token_claims(
    tenant: str = "acme",
    roles: list[str] | None = None,
    user_id: str = "u1",
    *,
    ttl_s: int = 600,
    **overrides: Any,
) -> dict[str, Any]:
    """Valid JWT claims for tests; an override of None removes that claim."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": user_id,
        "tenant": tenant,
        "roles": ["agent"] if roles is None else roles,
        "iat": now,
        "exp": now + ttl_s,
        "iss": "helpdesk",
        "aud": "helpdesk",
    }
    claims.update(overrides)
    return {key: value for key, value in claims.items() if value is not None}


def make_token(
    infra: Infra, tenant: str, roles: list[str], user_id: str = "u1", *, ttl_s: int = 3600, **claims: Any
) -> str:
    payload = token_claims(tenant, roles, user_id, ttl_s=ttl_s, **claims)
    return jwt.encode(payload, infra.jwt_secret, algorithm="HS256")


def auth_headers(infra: Infra, tenant: str, roles: list[str], user_id: str = "u1") -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(infra, tenant, roles, user_id)}"}


@contextlib.asynccontextmanager
async def app_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan (engine, NATS, relay, consumers) and talk to it in-process."""
    async with app.router.lifespan_context(app):
        # Starlette re-raises after the 500 handler has answered; a real server only logs it.
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


@contextlib.asynccontextmanager
async def local_aiohttp_server(app: web.Application) -> AsyncIterator[str]:
    """Serve an aiohttp app on a free local port (a stand-in for a remote HTTP server); yields its URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def wait_until(predicate, timeout: float = 15.0, interval: float = 0.1) -> Any:
    """Poll an async predicate until it returns a truthy value (events are asynchronous)."""
    deadline = time.monotonic() + timeout
    while True:
        result = await predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value: {result!r})")
        await asyncio.sleep(interval)


_tenant_counter = 0


def ticket_created_data(n: int = 0, **overrides: Any) -> dict[str, Any]:
    """The data of a `ticket.created` event for tests that publish events themselves."""
    return {
        "ticket_id": f"0190f0f0-0000-7000-8000-{n:012d}",
        "number": n + 1,
        "subject": f"s{n}",
        "description": "",
        "status": "open",
        "status_category": "open",
        "priority": "low",
        "category": None,
        "requester_id": "r",
        "assignee_id": None,
        "created_at": "2026-11-22T10:00:00+00:00",
        "updated_at": "2026-11-22T10:00:00+00:00",
        **overrides,
    }


def unique_tenant(prefix: str = "t") -> str:
    """A fresh tenant slug per test, so tests never see each other's rows."""
    global _tenant_counter
    _tenant_counter += 1
    return f"{prefix}-{int(time.time() * 1000) % 10_000_000}-{_tenant_counter}"
