"""Shared HTTP behaviour: problems, request ids, metrics, health, role isolation."""

import asyncpg
import pytest
from fastapi import APIRouter, Request
from sqlalchemy import text

from libs.common.db import SessionDep, create_engine, plain_dsn
from libs.common.service_app import ServiceDefinition, create_service_app
from libs.common.settings import CommonSettings
from tests.conftest import app_client, auth_headers, settings_for

router = APIRouter()


@router.get("/boom")
async def boom() -> dict:
    raise RuntimeError("secret internal detail: password=hunter2")


@router.get("/slow-query")
async def slow_query(session: SessionDep) -> dict:
    await session.execute(text("SELECT pg_sleep(5)"))  # beyond the statement timeout below
    return {}


@router.get("/unreachable-database")
async def unreachable_database(request: Request) -> dict:
    nowhere = request.app.state.settings.model_copy(
        update={"database_url": "postgresql://nobody:x@127.0.0.1:1/none"}
    )
    engine = create_engine(nowhere)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    finally:
        await engine.dispose()
    return {}


@pytest.fixture(scope="module")
async def client(infra):
    settings = settings_for(infra, CommonSettings, "analytics", db_statement_timeout_ms=200)
    app = create_service_app(ServiceDefinition(name="probe", settings=settings, routers=[router]))
    async with app_client(app) as client:
        yield client


async def test_unknown_error_is_a_500_problem_without_internals(client):
    response = await client.get("/boom", headers={"X-Request-ID": "boom-1"})
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert "hunter2" not in response.text and "Traceback" not in response.text
    assert response.json()["title"] == "Internal Server Error"
    # The id to quote when reporting it.
    assert response.headers["x-request-id"] == "boom-1"


@pytest.mark.parametrize("path", ["/slow-query", "/unreachable-database"])
async def test_an_unavailable_or_overloaded_database_is_a_503_to_retry(client, path):
    response = await client.get(path)
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "1"
    assert response.headers["x-request-id"]
    assert response.json()["type"] == "https://helpdesk.dev/problems/unavailable"
    assert "nobody" not in response.text and "pg_sleep" not in response.text


async def test_unknown_route_is_a_404_problem(client):
    response = await client.get("/nope")
    assert response.status_code == 404
    assert response.json()["status"] == 404


async def test_request_id_is_generated_or_passed_through(client):
    generated = await client.get("/healthz")
    assert len(generated.headers["x-request-id"]) >= 32
    passed = await client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert passed.headers["x-request-id"] == "abc-123"
    hostile = await client.get("/healthz", headers={"X-Request-ID": "bad\tid with spaces"})
    assert hostile.headers["x-request-id"] != "bad\tid with spaces"


async def test_metrics_are_labelled_by_route_template(client):
    await client.get("/boom")
    await client.get("/slow-query")
    body = (await client.get("/metrics")).text
    series = (
        'helpdesk_http_request_duration_seconds_count{method="GET",route="%s",service="probe",status="%s"}'
    )
    assert series % ("/boom", 500) in body
    # The status the client got, not a 500 for every error.
    assert series % ("/slow-query", 503) in body and series % ("/slow-query", 500) not in body


async def test_readyz_reports_database_and_nats(client):
    from tests.conftest import wait_until

    async def ready():
        return (await client.get("/readyz")).status_code == 200

    await wait_until(ready)
    assert (await client.get("/readyz")).json()["checks"] == {"database": True, "nats": True}


async def test_readyz_is_503_when_the_database_is_unreachable(infra):
    settings = settings_for(
        infra, CommonSettings, "analytics", database_url="postgresql://nobody:x@127.0.0.1:1/none"
    )
    app = create_service_app(ServiceDefinition(name="probe", settings=settings, routers=[]))
    async with app_client(app) as client:
        response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["database"] is False
    assert "database" in response.json()["detail"]


@pytest.mark.parametrize(
    ("service", "foreign_table"),
    [
        ("tickets", "analytics.daily_ticket_counts"),
        ("analytics", "tickets.tickets"),
        ("summarization", "identity.users"),
        ("notifications", "tickets.outbox"),
    ],
)
async def test_a_service_role_cannot_read_another_services_schema(infra, service, foreign_table):
    conn = await asyncpg.connect(plain_dsn(infra.database_url_for(service)))
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetch(f"SELECT * FROM {foreign_table} LIMIT 1")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(f"CREATE TABLE {service}.sneaky (id int)")
    finally:
        await conn.close()


async def test_a_service_role_can_use_its_own_schema(infra):
    conn = await asyncpg.connect(plain_dsn(infra.database_url_for("tickets")))
    try:
        assert await conn.fetchval("SELECT count(*) >= 0 FROM tickets.tickets")
    finally:
        await conn.close()


async def test_dead_letters_endpoint_is_admin_only(infra):
    from services.analytics.app import create_app
    from services.analytics.settings import Settings

    async with app_client(create_app(settings_for(infra, Settings, "analytics"))) as client:
        agent = await client.get(
            "/api/v1/analytics/dead-letters", headers=auth_headers(infra, "x", ["agent"])
        )
        admin = await client.get(
            "/api/v1/analytics/dead-letters", headers=auth_headers(infra, "x", ["admin"])
        )
    assert agent.status_code == 403
    assert admin.status_code == 200 and admin.json() == {"items": [], "next_cursor": None}
