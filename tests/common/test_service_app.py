"""Shared HTTP behaviour: problems, request ids, metrics, health, deadlines, role isolation."""

import asyncio
import gc
import signal
import time
import uuid

import asyncpg
import pytest
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from sqlalchemy import text

from libs.common.db import SessionDep, create_engine, finish_read_only_transactions, plain_dsn
from libs.common.launcher import free_port
from libs.common.service_app import GC_YOUNG_THRESHOLD, ServiceDefinition, create_service_app
from libs.common.settings import CommonSettings
from tests.conftest import app_client, auth_headers, settings_for
from tests.tickets.helpers import admin_fetch

router = APIRouter()


@router.get("/boom")
async def boom() -> dict:
    raise RuntimeError("secret internal detail: password=hunter2")


@router.get("/slow-query")
async def slow_query(session: SessionDep) -> dict:
    await session.execute(text("SELECT pg_sleep(5)"))  # beyond the statement timeout below
    return {}


UNREACHABLE = {
    "tcp": "postgresql://nobody:x@127.0.0.1:1/none",
    # A stopped server removes its Unix socket: connecting raises FileNotFoundError.
    "socket": "postgresql://nobody:x@/none?host=/nonexistent-socket-dir",
}


@router.get("/unreachable-database/{how}")
async def unreachable_database(request: Request, how: str) -> dict:
    nowhere = request.app.state.settings.model_copy(update={"database_url": UNREACHABLE[how]})
    engine = create_engine(nowhere)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    finally:
        await engine.dispose()
    return {}


@router.post("/slow-write/{tenant}")
async def slow_write(tenant: str, session: SessionDep) -> dict:
    await session.execute(
        text("INSERT INTO analytics.daily_ticket_counts (tenant_id, day) VALUES (:t, current_date)"),
        {"t": tenant},
    )
    await asyncio.sleep(5)  # beyond the request deadline below
    return {}


class SlowToStart(Response):
    """A response that takes its time to start, after the endpoint's transaction committed."""

    async def __call__(self, scope, receive, send) -> None:
        await asyncio.sleep(1.2)  # past the deadline below
        await super().__call__(scope, receive, send)


@router.post("/write-then-slow-response/{tenant}")
async def write_then_slow_response(tenant: str, session: SessionDep) -> Response:
    await session.execute(
        text("INSERT INTO analytics.daily_ticket_counts (tenant_id, day) VALUES (:t, current_date)"),
        {"t": tenant},
    )
    return SlowToStart(b"saved")


@router.get("/write-in-a-read/{tenant}")
async def write_in_a_read(tenant: str, session: SessionDep) -> dict:
    await session.execute(
        text("INSERT INTO analytics.daily_ticket_counts (tenant_id, day) VALUES (:t, current_date)"),
        {"t": tenant},
    )
    return {}


@router.get("/backend")
async def backend(session: SessionDep) -> dict:
    return {"pid": (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()}


@router.get("/slow-stream")
async def slow_stream() -> StreamingResponse:
    async def chunks():
        for part in (b"one ", b"two ", b"three"):
            yield part
            await asyncio.sleep(0.4)

    return StreamingResponse(chunks(), media_type="text/plain")


@router.post("/upload")
async def upload(request: Request) -> dict:
    return {"bytes": len(await request.body())}


@router.post("/items/bulk")
async def bulk_items() -> dict:
    return {}


@router.get("/items/{item_id}")
async def read_item(item_id: int) -> dict:
    return {"id": item_id}


@router.patch("/items/{item_id}")
async def change_item(item_id: int) -> dict:
    return {"id": item_id}


@router.delete("/items/{item_id}")
async def remove_item(item_id: int) -> dict:
    return {"id": item_id}


@router.get("/page")
async def page() -> dict:
    """Shaped like a page of tickets: rows with nested values (containers the collector tracks)."""
    return {"items": [{"id": n, "tags": [f"t{n}"], "custom_fields": {"n": n}} for n in range(50)]}


@router.get("/own-timeout")
async def own_timeout() -> dict:
    raise TimeoutError("an upstream the endpoint called timed out")


@pytest.fixture(scope="module")
async def client(infra):
    settings = settings_for(
        infra, CommonSettings, "analytics", db_statement_timeout_ms=200, request_deadline_s=0.8
    )
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


@pytest.mark.parametrize("path", ["/slow-query", "/unreachable-database/tcp", "/unreachable-database/socket"])
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


async def test_a_trailing_slash_is_a_404_problem_not_a_redirect_to_the_service(client):
    response = await client.get("/boom/")
    assert response.status_code == 404 and "location" not in response.headers
    assert response.headers["content-type"] == "application/problem+json"


async def test_a_wrong_method_is_a_405_problem_allowing_every_method_of_the_path(client):
    response = await client.put("/items/7")
    assert response.status_code == 405
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["allow"] == "DELETE, GET, PATCH"


async def test_a_wrong_method_on_a_fixed_path_is_a_405_even_where_a_parameter_would_match(client):
    """`/items/bulk` also fits `/items/{item_id}`, whose GET would answer "item_id is wrong"."""
    for method in ("GET", "PATCH", "DELETE", "PUT"):
        response = await client.request(method, "/items/bulk")
        assert response.status_code == 405, method
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["allow"] == "POST"
    assert (await client.post("/items/bulk")).status_code == 200
    assert (await client.get("/items/7")).status_code == 200


async def test_head_answers_the_headers_of_get_without_its_body(client):
    got, head = await client.get("/items/7"), await client.head("/items/7")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == got.headers["content-length"] != "0"
    assert head.headers["content-type"] == got.headers["content-type"]
    assert (await client.head("/upload")).status_code == 405  # POST only


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


async def test_readyz_is_503_while_nats_does_not_answer(client, infra):
    """A hung broker (here: stopped) keeps the client connected for minutes; ready it is not."""
    from tests.conftest import wait_until

    async def ready():
        return (await client.get("/readyz")).status_code == 200

    await wait_until(ready)
    infra.nats.process.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        response = await client.get("/readyz")
        assert time.monotonic() - started < 2.5  # probes must answer within their timeout
    finally:
        infra.nats.process.send_signal(signal.SIGCONT)
    assert response.status_code == 503, response.text
    assert response.json()["checks"] == {"database": True, "nats": False}
    await wait_until(ready)


async def test_a_service_stops_promptly_while_nats_is_still_unreachable(infra):
    """A service that never reached NATS is stopped (SIGTERM): nats-py retries its first connect
    forever, and the shutdown used to wait for that connect, so the process hung until killed."""
    settings = settings_for(infra, CommonSettings, "analytics", nats_url=f"nats://127.0.0.1:{free_port()}")
    app = create_service_app(ServiceDefinition(name="probe", settings=settings, routers=[]))
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    await asyncio.sleep(1.5)  # inside the client's own retries by now (every 0.5 s)
    assert app.state.nats is None
    started = time.monotonic()
    await asyncio.wait_for(lifespan.__aexit__(None, None, None), timeout=15)
    assert time.monotonic() - started < 5


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
        replays = [
            await client.post(
                f"/api/v1/analytics/dead-letters/{dead_letter_id}/replay",
                headers=auth_headers(infra, "x", ["admin"]),
            )
            for dead_letter_id in ("1", str(2**63), "99999999999999999999", "0", "x")
        ]
    assert agent.status_code == 403
    assert admin.status_code == 200 and admin.json() == {"items": [], "next_cursor": None}
    # No such dead letter, or an id no dead letter can have: never a 500 from the driver.
    assert [replay.status_code for replay in replays] == [404, 422, 422, 422, 422]


async def test_a_request_past_its_deadline_is_abandoned_and_its_writes_rolled_back(client, infra):
    tenant = f"deadline-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    response = await client.post(f"/slow-write/{tenant}", headers={"X-Request-ID": "slow-1"})
    assert time.monotonic() - started < 3
    assert response.status_code == 503, response.text
    assert response.json()["type"] == "https://helpdesk.dev/problems/request-timeout"
    assert "nothing it changed was kept" in response.json()["detail"]
    assert response.headers["x-request-id"] == "slow-1"
    rows = await admin_fetch(
        infra, "SELECT 1 FROM analytics.daily_ticket_counts WHERE tenant_id = $1", tenant
    )
    assert rows == []


async def test_the_deadline_ends_when_the_response_starts(client):
    response = await client.get("/slow-stream")  # 1.2 s of streaming, deadline 0.8 s
    assert response.status_code == 200 and response.text == "one two three"


async def test_an_endpoints_own_timeout_is_not_mistaken_for_the_deadline(client):
    response = await client.get("/own-timeout")
    assert response.status_code == 500
    assert response.json()["title"] == "Internal Server Error"


async def test_a_slow_upload_is_not_cut_while_its_bytes_keep_coming(client):
    async def body():
        for _ in range(3):
            yield b"x" * 1000
            await asyncio.sleep(0.5)  # 1.5 s in all, deadline 0.8 s

    response = await client.post("/upload", content=body())
    assert response.status_code == 200, response.text
    assert response.json() == {"bytes": 3000}


async def test_committed_work_is_answered_even_past_the_deadline(client, infra):
    tenant = f"deadline-{uuid.uuid4().hex[:8]}"
    response = await client.post(f"/write-then-slow-response/{tenant}")
    assert response.status_code == 200 and response.text == "saved"
    rows = await admin_fetch(
        infra, "SELECT 1 FROM analytics.daily_ticket_counts WHERE tenant_id = $1", tenant
    )
    assert len(rows) == 1


async def test_a_get_request_reads_in_a_read_only_transaction(client, infra):
    tenant = f"read-only-{uuid.uuid4().hex[:8]}"
    response = await client.get(f"/write-in-a-read/{tenant}")
    assert response.status_code == 500, response.text
    rows = await admin_fetch(
        infra, "SELECT 1 FROM analytics.daily_ticket_counts WHERE tenant_id = $1", tenant
    )
    assert rows == []
    # The same write in a POST is kept (so the GET was refused for being a read, nothing else).
    assert (await client.post(f"/write-then-slow-response/{tenant}")).status_code == 200


async def test_a_read_only_transaction_ends_after_its_response(client, infra):
    """A read answers before its transaction has ended; the ending follows, and the connection
    is back in the pool, outside any transaction, once it has."""
    pids = {(await client.get("/backend")).json()["pid"] for _ in range(5)}
    await finish_read_only_transactions()
    states = await admin_fetch(
        infra, "SELECT state FROM pg_stat_activity WHERE pid = ANY($1::int[])", list(pids)
    )
    assert [row["state"] for row in states] == ["idle"] * len(pids)


def test_service_routes_are_matched_directly(infra):
    """create_service_app puts the routers' routes in the app's own list: FastAPI's
    include_router adds a layer every request walks, ~0.1 ms of a ticket read."""
    from fastapi.routing import APIRoute
    from starlette.routing import Route

    from libs.common.errors import WrongMethodRoute
    from services.tickets.app import create_app
    from services.tickets.settings import Settings

    app = create_app(settings_for(infra, Settings, "tickets"))
    assert {type(route) for route in app.routes} == {APIRoute, Route, WrongMethodRoute}
    assert "/api/v1/tickets/{ticket_id}" in app.openapi()["paths"]
    # Matched in order: paths without parameters first, the service's own before the framework's.
    paths = [route.path for route in app.routes]
    with_parameters = ["{" in path for path in paths]
    assert with_parameters == sorted(with_parameters)
    assert paths.index("/api/v1/tickets") < paths.index("/healthz") < paths.index("/openapi.json")


async def test_requests_in_flight_do_not_set_off_garbage_collections(infra):
    """Young collections are rare once a service has started: run every few requests, they
    found the requests in flight alive and pushed them into the older generations, whose full
    collections then paused a worker for 9-17 ms under load."""
    gc.set_threshold(700, 10, 10)  # CPython's default, whatever earlier tests left
    settings = settings_for(infra, CommonSettings, "analytics")
    app = create_service_app(ServiceDefinition(name="probe", settings=settings, routers=[router]))
    collections = []

    def count(phase: str, info: dict) -> None:
        if phase == "start":
            collections.append(info["generation"])

    async with app_client(app) as client:
        assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD
        assert gc.get_freeze_count() > 0  # start-up objects are out of the collector's way
        gc.callbacks.append(count)
        try:
            for _ in range(300):  # ~18 young collections with CPython's default
                assert (await client.get("/page")).status_code == 200
        finally:
            gc.callbacks.remove(count)
    assert len(collections) <= 2, collections
