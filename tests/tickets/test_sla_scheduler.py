"""The SLA breach scheduler against real PostgreSQL (and NATS for the end-to-end path)."""

import asyncio
import contextlib
import json
import logging
import uuid
from datetime import UTC, datetime, timedelta

import nats
import pytest
import structlog.testing
from fastapi import FastAPI
from sqlalchemy import insert, text
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.ext.asyncio import create_async_engine

from libs.common.db import async_url, create_engine, create_session_factory
from services.tickets.app import create_app
from services.tickets.models import tickets as tickets_table
from services.tickets.settings import Settings
from services.tickets.sla import repository
from services.tickets.sla import scheduler as scheduler_module
from services.tickets.sla import service as sla_service_module
from services.tickets.sla.scheduler import run_sla_scheduler, scan_once, scan_tenant
from tests.conftest import app_client, settings_for, unique_tenant, wait_until
from tests.tickets.helpers import count_statements, statements_run

BREACHED_TYPE = "helpdesk.tickets.ticket.sla_breached.v1"


@pytest.fixture(scope="module")
async def admin_engine(infra):
    engine = create_async_engine(async_url(infra.admin_url), pool_size=2)
    yield engine
    await engine.dispose()


_numbers: dict[str, int] = {}


async def insert_ticket(admin_engine, tenant: str, **overrides) -> uuid.UUID:
    """A ticket row written straight into the table (admin role, no row-level security)."""
    now = datetime.now(UTC)
    _numbers[tenant] = _numbers.get(tenant, 0) + 1
    values = {
        "id": uuid.uuid4(),
        "tenant_id": tenant,
        "number": _numbers[tenant],
        "subject": f"ticket {_numbers[tenant]}",
        "status": "open",
        "status_category": "open",
        "priority": "high",
        "requester_id": "req-1",
        "created_at": now - timedelta(hours=3),
        "updated_at": now - timedelta(hours=3),
        "first_response_due_at": now - timedelta(hours=2),
        "due_at": now - timedelta(hours=1),
    }
    values.update(overrides)
    async with admin_engine.begin() as conn:
        await conn.execute(insert(tickets_table).values(values))
        await conn.execute(
            text("INSERT INTO tickets.tenants (tenant_id) VALUES (:t) ON CONFLICT DO NOTHING"), {"t": tenant}
        )
    return values["id"]


async def breach_events(admin_engine, tenant: str) -> list[dict]:
    async with admin_engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT subject, payload FROM tickets.outbox "
                "WHERE payload->>'tenant' = :t AND payload->>'type' = :type ORDER BY id"
            ),
            {"t": tenant, "type": BREACHED_TYPE},
        )
        return [{**payload, "nats_subject": subject} for subject, payload in rows]


async def marks(admin_engine, ticket_id: uuid.UUID) -> tuple:
    async with admin_engine.connect() as conn:
        row = await conn.execute(
            text(
                "SELECT first_response_breached_at, resolution_breached_at "
                "FROM tickets.tickets WHERE id = :id"
            ),
            {"id": ticket_id},
        )
        return tuple(row.one())


@contextlib.asynccontextmanager
async def running_schedulers(infra, count: int, **overrides):
    """`count` schedulers, each with its own engine, as separate replicas would run them."""
    stop = asyncio.Event()
    apps, engines = [], []
    for _ in range(count):
        settings = settings_for(infra, Settings, "tickets", sla_scan_interval_s=0.02, **overrides)
        app = FastAPI()
        engine = create_engine(settings)
        app.state.settings, app.state.session_factory = settings, create_session_factory(engine)
        apps.append(app)
        engines.append(engine)
    tasks = [asyncio.create_task(run_sla_scheduler(app, stop)) for app in apps]
    try:
        yield tasks
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=5)
        for engine in engines:
            await engine.dispose()


async def test_two_schedulers_announce_each_breach_exactly_once(infra, admin_engine):
    tenant = unique_tenant("sla")
    breached = [await insert_ticket(admin_engine, tenant) for _ in range(25)]
    async with running_schedulers(infra, 2, sla_scan_batch_size=3):
        # More arrive while both are scanning.
        breached += [await insert_ticket(admin_engine, tenant) for _ in range(5)]
        await wait_until(lambda: _count_at_least(admin_engine, tenant, 60))
        await asyncio.sleep(0.5)  # dozens more scans by each scheduler
    events = await breach_events(admin_engine, tenant)
    pairs = [(e["data"]["ticket_id"], e["data"]["kind"]) for e in events]
    assert len(pairs) == 60
    assert sorted(pairs) == sorted(
        (str(t), kind) for t in breached for kind in ("first_response", "resolution")
    )
    assert len({e["id"] for e in events}) == 60
    for ticket_id in breached:
        assert all(mark is not None for mark in await marks(admin_engine, ticket_id))


async def _count_at_least(admin_engine, tenant, expected):
    return len(await breach_events(admin_engine, tenant)) >= expected


async def test_a_scan_records_a_batch_of_breaches_in_one_statement_per_kind(infra, admin_engine):
    """After an outage a scan may announce thousands of breaches: their events are written with
    one outbox statement per batch and kind, not one per breach."""
    tenant = unique_tenant("sla")
    for _ in range(10):
        await insert_ticket(admin_engine, tenant)
    engine = create_engine(settings_for(infra, Settings, "tickets"))
    try:
        count_statements(engine)
        with statements_run() as statements:
            announced = await scan_tenant(create_session_factory(engine), tenant, 50)
    finally:
        await engine.dispose()
    assert announced == 20
    inserts = [statement for statement in statements if "INTO tickets.outbox" in statement]
    assert len(inserts) == 2 * 2, statements  # one executemany per kind, seen by both counting hooks
    events = await breach_events(admin_engine, tenant)
    assert sorted(event["data"]["kind"] for event in events) == ["first_response"] * 10 + ["resolution"] * 10


async def test_breach_event_carries_the_deadline_and_the_ticket(infra, admin_engine):
    tenant = unique_tenant("sla")
    due = datetime.now(UTC) - timedelta(minutes=5)
    ticket_id = await insert_ticket(
        admin_engine,
        tenant,
        first_response_due_at=due + timedelta(hours=1),  # not yet due
        due_at=due,
        subject="3층 엘리베이터 고장",
    )
    async with running_schedulers(infra, 1):
        await wait_until(lambda: _count_at_least(admin_engine, tenant, 1))
        await asyncio.sleep(0.2)
    [event] = await breach_events(admin_engine, tenant)
    assert event["nats_subject"] == f"tickets.{tenant}.ticket.sla_breached"
    assert event["source"] == "/helpdesk/tickets" and event["tenant"] == tenant
    assert event["subject"] == event["data"]["ticket_id"] == str(ticket_id)
    data = event["data"]
    assert data["kind"] == "resolution"
    assert datetime.fromisoformat(data["due_at"]) == due
    assert data["ticket"]["subject"] == "3층 엘리베이터 고장"
    assert data["ticket"]["ticket_id"] == str(ticket_id) and data["ticket"]["number"] == 1
    first_mark, resolution_mark = await marks(admin_engine, ticket_id)
    assert first_mark is None
    assert datetime.fromisoformat(data["breached_at"]) == resolution_mark


async def test_paused_finished_deleted_and_future_tickets_are_not_breached(infra, admin_engine):
    tenant = unique_tenant("sla")
    now = datetime.now(UTC)
    quiet = {
        "paused": await insert_ticket(admin_engine, tenant, status_category="pending", sla_paused_at=now),
        "resolved": await insert_ticket(admin_engine, tenant, status_category="resolved", resolved_at=now),
        "closed": await insert_ticket(admin_engine, tenant, status_category="closed", closed_at=now),
        "deleted": await insert_ticket(admin_engine, tenant, deleted_at=now),
        "future": await insert_ticket(
            admin_engine,
            tenant,
            first_response_due_at=now + timedelta(hours=1),
            due_at=now + timedelta(hours=2),
        ),
        "no deadlines": await insert_ticket(admin_engine, tenant, first_response_due_at=None, due_at=None),
        "already announced": await insert_ticket(
            admin_engine, tenant, first_response_breached_at=now, resolution_breached_at=now
        ),
    }
    # Pending without pausing still breaches: the clock runs unless the policy pauses it.
    running = await insert_ticket(admin_engine, tenant, status_category="pending")
    responded = await insert_ticket(
        admin_engine, tenant, first_responded_at=now - timedelta(hours=2, minutes=30)
    )
    async with running_schedulers(infra, 1):
        await wait_until(lambda: _count_at_least(admin_engine, tenant, 3))
        await asyncio.sleep(0.3)
    events = await breach_events(admin_engine, tenant)
    assert sorted((e["data"]["ticket_id"], e["data"]["kind"]) for e in events) == sorted(
        [(str(running), "first_response"), (str(running), "resolution"), (str(responded), "resolution")]
    )
    for name, ticket_id in quiet.items():
        if name != "already announced":
            assert await marks(admin_engine, ticket_id) == (None, None), name


async def test_scan_queries_can_use_the_partial_indexes(admin_engine):
    """The scan's conditions must imply the partial indexes' predicates, or every scan reads the
    whole tenant. With every other index dropped (rolled back), the planner must pick them."""
    now = datetime.now(UTC)
    async with admin_engine.connect() as conn, conn.begin() as transaction:
        await _drop_all_but_the_sla_indexes(conn)
        await conn.execute(text("SET LOCAL enable_seqscan = off"))
        for kind, index in [
            ("resolution", "ix_tickets_sla_resolution_scan"),
            ("first_response", "ix_tickets_sla_first_response_scan"),
        ]:
            # As asyncpg runs it: bound parameters, and (after a few runs) a generic plan that
            # cannot see their values.
            compiled = repository.breach_candidates("acme", kind, now, 10).compile(
                dialect=asyncpg_dialect(), compile_kwargs={"render_postcompile": True}
            )
            values = [_sql_literal(compiled.params[name]) for name in compiled.positiontup]
            await conn.execute(text("SET LOCAL plan_cache_mode = force_generic_plan"))
            await conn.execute(text(f"PREPARE scan_{kind} AS {compiled.string}"))
            explained = await conn.execute(text(f"EXPLAIN EXECUTE scan_{kind}({', '.join(values)})"))
            plan = "\n".join(row[0] for row in explained)
            assert index in plan, plan
        await transaction.rollback()


async def test_the_due_tenants_query_reads_only_the_partial_indexes(admin_engine):
    """One query per pass over every tenant's deadlines: it must read just the rows past their
    deadline, whatever the number of tenants and tickets."""
    async with admin_engine.connect() as conn, conn.begin() as transaction:
        source = await conn.scalar(
            text("SELECT prosrc FROM pg_proc WHERE proname = 'tenants_with_due_sla_breaches'")
        )
        await _drop_all_but_the_sla_indexes(conn)
        # 20,000 open tickets of 100 tenants, none due yet: the query must not read through them.
        await conn.execute(
            text(
                "INSERT INTO tickets.tickets (id, tenant_id, number, subject, status, status_category, "
                "priority, requester_id, created_at, updated_at, first_response_due_at, due_at) "
                "SELECT gen_random_uuid(), 'plan-' || (n % 100), n, 'x', 'open', 'open', 'high', 'r', "
                "now(), now(), now() + interval '1 day', now() + interval '2 days' "
                "FROM generate_series(1, 20000) AS n"
            )
        )
        await conn.execute(text("ANALYZE tickets.tickets"))
        await conn.execute(text("SET LOCAL enable_seqscan = off"))
        await conn.execute(text("SET LOCAL plan_cache_mode = force_generic_plan"))
        await conn.execute(text(f"PREPARE due_tenants(timestamptz) AS {source.replace('as_of', '$1')}"))
        explained = await conn.execute(
            text("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE due_tenants(now())")
        )
        scans = list(_plan_nodes(explained.scalar()[0]["Plan"]))
        indexes = {node.get("Index Name") for node in scans}
        assert {"ix_tickets_sla_first_response_scan", "ix_tickets_sla_resolution_scan"} <= indexes, scans
        assert not any(node["Node Type"] == "Seq Scan" for node in scans), scans
        blocks = sum(
            node["Shared Hit Blocks"] + node["Shared Read Blocks"] for node in scans if node.get("Index Name")
        )
        index_pages = await conn.scalar(
            text("SELECT pg_relation_size('tickets.ix_tickets_sla_resolution_scan') / 8192")
        )
        assert blocks < index_pages / 2, (blocks, index_pages)
        await transaction.rollback()


async def _drop_all_but_the_sla_indexes(conn) -> None:
    """Inside a transaction the caller rolls back."""
    others = await conn.execute(
        text(
            "SELECT indexname FROM pg_indexes WHERE schemaname = 'tickets' AND tablename = 'tickets' "
            "AND indexname NOT LIKE 'ix_tickets_sla_%' AND indexname <> 'pk_tickets'"
        )
    )
    for (name,) in others.all():
        await conn.execute(text(f'DROP INDEX tickets."{name}"'))


def _plan_nodes(node: dict):
    yield node
    for child in node.get("Plans", []):
        yield from _plan_nodes(child)


async def test_only_tenants_with_breaches_due_are_scanned(infra, admin_engine):
    due, quiet = unique_tenant("sla"), unique_tenant("sla")
    now = datetime.now(UTC)
    await insert_ticket(admin_engine, quiet, first_response_due_at=now + timedelta(hours=1), due_at=None)
    await insert_ticket(admin_engine, quiet, status_category="pending", sla_paused_at=now)
    await insert_ticket(admin_engine, quiet, first_response_breached_at=now, resolution_breached_at=now)
    await insert_ticket(admin_engine, due, first_response_due_at=None)
    settings = settings_for(infra, Settings, "tickets")
    engine = create_engine(settings)
    factory = create_session_factory(engine)

    async def due_tenants() -> list[str]:
        # As the scheduler asks: the service's own role, in a transaction scoped to no tenant.
        async with factory() as session, session.begin():
            return await repository.tenants_with_due_breaches(session, datetime.now(UTC))

    try:
        tenants = await due_tenants()
        assert due in tenants and quiet not in tenants
        # The service role itself still sees no ticket without a tenant scope.
        async with factory() as session, session.begin():
            assert await session.scalar(text("SELECT count(*) FROM tickets.tickets")) == 0
        await scan_once(factory, batch_size=10)
        assert due not in await due_tenants()
        assert len(await breach_events(admin_engine, due)) == 1
    finally:
        await engine.dispose()


def _sql_literal(value) -> str:
    if isinstance(value, datetime):
        return f"'{value.isoformat()}'::timestamptz"
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


async def test_scheduler_survives_a_failing_scan_and_stops_promptly(infra, admin_engine):
    tenant = unique_tenant("sla")
    settings = settings_for(infra, Settings, "tickets", sla_scan_interval_s=0.05)
    app = FastAPI()
    app.state.settings = settings
    calls = 0
    engine = create_engine(settings)
    real_factory = create_session_factory(engine)

    def flaky_factory():
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise ConnectionError("database away")
        return real_factory()

    app.state.session_factory = flaky_factory
    stop = asyncio.Event()
    task = asyncio.create_task(run_sla_scheduler(app, stop))
    try:
        await insert_ticket(admin_engine, tenant)
        await wait_until(lambda: _count_at_least(admin_engine, tenant, 2))
        assert calls > 2
        # Stop mid-wait with a long interval: it must return well before the interval ends.
        settings.sla_scan_interval_s = 60
        await asyncio.sleep(0.2)
        stop.set()
        await asyncio.wait_for(task, timeout=2)
    finally:
        stop.set()
        await engine.dispose()


async def test_scan_once_counts_and_skips_nothing_twice(infra, admin_engine):
    tenant = unique_tenant("sla")
    await insert_ticket(admin_engine, tenant)
    settings = settings_for(infra, Settings, "tickets")
    engine = create_engine(settings)
    try:
        factory = create_session_factory(engine)
        first = await scan_once(factory, batch_size=1)
        assert first >= 2  # other tests' tenants may have breaches too
        await scan_once(factory, batch_size=1)
        assert len(await breach_events(admin_engine, tenant)) == 2
    finally:
        await engine.dispose()


async def test_service_app_publishes_breaches_to_nats(infra, admin_engine):
    tenant = unique_tenant("sla")
    nc = await nats.connect(infra.nats_url)
    try:
        sub = await nc.subscribe(f"tickets.{tenant}.ticket.sla_breached")
        settings = settings_for(infra, Settings, "tickets", sla_scan_interval_s=0.1)
        async with app_client(create_app(settings)):
            ticket_id = await insert_ticket(admin_engine, tenant, first_response_due_at=None)
            message = await sub.next_msg(timeout=15)
        event = json.loads(message.data)
        assert event["type"] == BREACHED_TYPE
        assert event["data"] == {**event["data"], "ticket_id": str(ticket_id), "kind": "resolution"}
        assert message.headers["Nats-Msg-Id"] == event["id"]
    finally:
        await nc.close()


async def test_a_scan_logs_one_count_per_tenant_not_a_line_per_breach(infra, admin_engine, monkeypatch):
    # After downtime a scan can announce thousands of breaches (the events carry each one).
    tenant = unique_tenant("sla")
    for _ in range(3):
        await insert_ticket(admin_engine, tenant)
    engine = create_engine(settings_for(infra, Settings, "tickets"))
    config = structlog.get_config()
    try:
        # Every level reaches the capture (the tests' setup may filter), and the module loggers,
        # cached with the earlier configuration, are made afresh.
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
        with structlog.testing.capture_logs() as logs:
            for module in (scheduler_module, sla_service_module):
                monkeypatch.setattr(module, "log", structlog.get_logger())
            await scan_tenant(create_session_factory(engine), tenant, batch_size=2)
    finally:
        structlog.configure(**config)
        await engine.dispose()
    info = [entry for entry in logs if entry["log_level"] != "debug"]
    assert info == [{"event": "sla_breaches_announced", "tenant": tenant, "breaches": 6, "log_level": "info"}]
    assert sum(entry["event"] == "sla_breached" for entry in logs) == 6  # each at debug level
