"""Row-level security as the tickets service's own login role sees it.

Queries here are deliberately unscoped (no `WHERE tenant_id = ...`): only PostgreSQL's policies
stand between a transaction and another tenant's rows. Two tenants' rows exist in every tenant
table (made through the API, plus a few admin inserts for tables the API does not fill yet).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import SimpleNamespace

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from libs.common.db import (
    SessionDep,
    create_engine,
    create_session_factory,
    plain_dsn,
    set_tenant,
    transaction,
)
from libs.common.stack import SERVICES
from services.tickets.app import create_app
from services.tickets.settings import Settings
from tests.conftest import app_client, auth_headers, settings_for, unique_tenant, wait_until
from tests.tickets.helpers import TICKETS, add_comment, admin_fetch, create_ticket, patch_ticket

# Tables holding one tenant's rows. A new table with a tenant_id column must join this list (or
# INFRASTRUCTURE_TABLES with a reason), or test_every_table_with_a_tenant_column_is_classified fails.
TENANT_TABLES = [
    "tickets",
    "idempotency_keys",
    "comments",
    "ticket_history",
    "attachments",
    "statuses",
    "categories",
    "sla_policies",
    "tenant_settings",
    "sla_retargets",
]
# Written by the consumer runner for events of every tenant before any tenant is known; the
# dead-letter API filters by the caller's tenant explicitly.
INFRASTRUCTURE_TABLES = {"dead_letters"}


@dataclass
class TwoTenants:
    a: str
    b: str
    a_ticket: str
    b_ticket: str


@pytest.fixture(scope="module")
async def two_tenants(infra) -> TwoTenants:
    tenants, tickets_of = [unique_tenant("rls-a"), unique_tenant("rls-b")], []
    async with app_client(create_app(settings_for(infra, Settings, "tickets"))) as client:
        for tenant in tenants:
            admin = auth_headers(infra, tenant, ["admin"], "admin-1")
            ticket = await create_ticket(
                client, admin | {"Idempotency-Key": "first"}, subject=f"{tenant} boiler"
            )
            await add_comment(client, admin, ticket["id"], "checked", "internal")
            ticket = (await client.get(f"{TICKETS}/{ticket['id']}", headers=admin)).json()
            assert (await patch_ticket(client, admin, ticket, priority="high")).status_code == 200
            for path, body in [
                ("statuses", {"key": "on_hold", "name": "On hold", "category": "pending"}),
                ("categories", {"key": "hvac", "name": "HVAC"}),
            ]:
                assert (await client.post(f"{TICKETS}/{path}", json=body, headers=admin)).status_code == 201
            tickets_of.append(ticket["id"])
    conn = await asyncpg.connect(plain_dsn(infra.admin_url))
    try:  # superuser: tables the API does not write yet
        for tenant, ticket_id in zip(tenants, tickets_of, strict=True):
            await conn.execute(
                "INSERT INTO tickets.sla_policies (tenant_id, priority, first_response_minutes,"
                " resolution_minutes) VALUES ($1, 'low', 600, 6000)",
                tenant,
            )
            await conn.execute("INSERT INTO tickets.tenant_settings (tenant_id) VALUES ($1)", tenant)
            await conn.execute(
                "INSERT INTO tickets.sla_retargets (id, tenant_id, priorities, requested_by, open_tickets,"
                " finished_at) VALUES ($1, $2, '{low}', 'admin-1', 0, now())",
                uuid.uuid4(),
                tenant,
            )
            await conn.execute(
                "INSERT INTO tickets.attachments (id, tenant_id, ticket_id, filename, content_type,"
                " size_bytes, sha256, storage_key, uploaded_by)"
                " VALUES ($1, $2, $3, 'a.png', 'image/png', 1, 'x', 'k', 'u')",
                uuid.uuid4(),
                tenant,
                uuid.UUID(ticket_id),
            )
    finally:
        await conn.close()
    return TwoTenants(tenants[0], tenants[1], tickets_of[0], tickets_of[1])


@pytest.fixture
async def service_conn(infra) -> AsyncIterator[asyncpg.Connection]:
    """A raw connection as the tickets service's login role."""
    conn = await asyncpg.connect(plain_dsn(infra.database_url_for("tickets")))
    try:
        yield conn
    finally:
        await conn.close()


async def scope(conn: asyncpg.Connection, tenant: str) -> None:
    await conn.execute("SELECT set_config('app.tenant_id', $1, true)", tenant)


async def tenants_visible(conn: asyncpg.Connection, table: str) -> list[str]:
    return [row["tenant_id"] for row in await conn.fetch(f"SELECT * FROM tickets.{table}")]


@pytest.mark.parametrize("table", TENANT_TABLES)
async def test_a_scoped_transaction_sees_only_its_tenants_rows(two_tenants, infra, service_conn, table):
    everyone = {
        row["tenant_id"] for row in await admin_fetch(infra, f"SELECT tenant_id FROM tickets.{table}")
    }
    assert {two_tenants.a, two_tenants.b} <= everyone  # both really are there
    for tenant in (two_tenants.a, two_tenants.b):
        async with service_conn.transaction():
            await scope(service_conn, tenant)
            seen = await tenants_visible(service_conn, table)
        assert seen and set(seen) == {tenant}


@pytest.mark.parametrize("table", TENANT_TABLES)
async def test_without_a_tenant_nothing_is_visible(two_tenants, service_conn, table):
    assert await tenants_visible(service_conn, table) == []
    async with service_conn.transaction():
        await scope(service_conn, "")
        assert await tenants_visible(service_conn, table) == []
    async with service_conn.transaction():
        await scope(service_conn, f"{two_tenants.a}%")  # no pattern matching in the policy
        assert await tenants_visible(service_conn, table) == []


async def test_search_and_joins_see_only_the_scoped_tenant(two_tenants, service_conn):
    async with service_conn.transaction():
        await scope(service_conn, two_tenants.a)
        rows = await service_conn.fetch(
            "SELECT t.tenant_id, c.tenant_id AS comment_tenant FROM tickets.tickets t"
            " FULL JOIN tickets.comments c ON c.ticket_id = t.id WHERE t.subject ILIKE '%boiler%'"
            " OR c.body ILIKE '%checked%'"
        )
        assert rows and {row["tenant_id"] for row in rows} == {two_tenants.a}
        assert {row["comment_tenant"] for row in rows} == {two_tenants.a}
        by_id = await service_conn.fetch(
            "SELECT id FROM tickets.tickets WHERE id = $1", uuid.UUID(two_tenants.b_ticket)
        )
        assert by_id == []


INSERTS = {
    "tickets": (
        "INSERT INTO tickets.tickets (id, tenant_id, number, subject, description, status, priority,"
        " requester_id) VALUES (gen_random_uuid(), $1, 999999, 'planted', '', 'open', 'low', 'x')"
    ),
    "comments": (
        "INSERT INTO tickets.comments (id, tenant_id, ticket_id, author_id, visibility, body)"
        " VALUES (gen_random_uuid(), $1, gen_random_uuid(), 'x', 'public', 'planted')"
    ),
    "ticket_history": (
        "INSERT INTO tickets.ticket_history (id, tenant_id, ticket_id, actor_id, field)"
        " VALUES (gen_random_uuid(), $1, gen_random_uuid(), 'x', 'subject')"
    ),
    "statuses": (
        "INSERT INTO tickets.statuses (tenant_id, key, name, category) VALUES ($1, 'planted', 'P', 'open')"
    ),
    "categories": "INSERT INTO tickets.categories (tenant_id, key, name) VALUES ($1, 'planted', 'P')",
    "tenants": "INSERT INTO tickets.tenants (tenant_id) VALUES ($1 || '-new')",
}


@pytest.mark.parametrize("table", list(INSERTS))
async def test_writing_a_row_for_another_tenant_fails(two_tenants, infra, service_conn, table):
    for scoped in (True, False):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            async with service_conn.transaction():
                if scoped:
                    await scope(service_conn, two_tenants.a)
                await service_conn.execute(INSERTS[table], two_tenants.b)
    planted = await admin_fetch(
        infra, f"SELECT * FROM tickets.{table} WHERE tenant_id LIKE $1", f"{two_tenants.b}%"
    )
    assert all("planted" not in str(dict(row).values()) for row in planted)


async def test_another_tenants_rows_cannot_be_updated_or_deleted(two_tenants, infra, service_conn):
    b_ticket = uuid.UUID(two_tenants.b_ticket)
    transaction = service_conn.transaction()
    await transaction.start()
    try:
        await scope(service_conn, two_tenants.a)
        update_b = "UPDATE tickets.tickets SET subject = 'pwned' WHERE id = $1"
        assert await service_conn.execute(update_b, b_ticket) == "UPDATE 0"
        # Unfiltered writes reach only the scoped tenant's rows (A has one comment, one status).
        assert await service_conn.execute("UPDATE tickets.comments SET body = 'pwned'") == "UPDATE 1"
        assert await service_conn.execute("DELETE FROM tickets.statuses") == "DELETE 1"
        assert await service_conn.execute("DELETE FROM tickets.tickets WHERE id = $1", b_ticket) == "DELETE 0"
    finally:
        await transaction.rollback()
    rows = await admin_fetch(infra, "SELECT subject FROM tickets.tickets WHERE id = $1", b_ticket)
    assert rows[0]["subject"] == f"{two_tenants.b} boiler"


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE tickets.tickets SET tenant_id = $2 WHERE id = $1",
        "UPDATE tickets.comments SET tenant_id = $2 WHERE ticket_id = $1",
    ],
)
async def test_a_row_cannot_be_moved_to_another_tenant(two_tenants, infra, service_conn, statement):
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
        async with service_conn.transaction():
            await scope(service_conn, two_tenants.a)
            await service_conn.execute(statement, uuid.UUID(two_tenants.a_ticket), two_tenants.b)
    rows = await admin_fetch(
        infra, "SELECT tenant_id FROM tickets.tickets WHERE id = $1", uuid.UUID(two_tenants.a_ticket)
    )
    assert rows[0]["tenant_id"] == two_tenants.a


async def test_the_tenant_registry_is_readable_without_a_scope(two_tenants, service_conn):
    slugs = {row["tenant_id"] for row in await service_conn.fetch("SELECT tenant_id FROM tickets.tenants")}
    assert {two_tenants.a, two_tenants.b} <= slugs


async def test_the_service_role_owns_no_table_and_cannot_bypass_policies(infra, service_conn):
    role = await service_conn.fetchval("SELECT current_user")
    assert role == SERVICES["tickets"].role
    owners = await service_conn.fetch(
        "SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'tickets' ORDER BY tablename"
    )
    assert {row["tablename"] for row in owners} >= set(TENANT_TABLES)
    assert [row["tablename"] for row in owners if row["tableowner"] == role] == []
    flags = await service_conn.fetchrow(
        "SELECT rolsuper, rolbypassrls, rolcreaterole FROM pg_roles WHERE rolname = current_user"
    )
    assert dict(flags) == {"rolsuper": False, "rolbypassrls": False, "rolcreaterole": False}
    # The service role cannot switch row-level security off either.
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await service_conn.execute("ALTER TABLE tickets.tickets NO FORCE ROW LEVEL SECURITY")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await service_conn.execute("SET row_security = off; SELECT * FROM tickets.tickets")


async def test_every_tenant_table_forces_row_level_security_with_the_tenant_policy(service_conn):
    rows = await service_conn.fetch(
        """SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity,
                  array_agg(p.qual) FILTER (WHERE p.qual IS NOT NULL) AS quals,
                  array_agg(p.with_check) FILTER (WHERE p.with_check IS NOT NULL) AS checks
           FROM pg_class c
           JOIN pg_namespace n ON n.oid = c.relnamespace
           LEFT JOIN pg_policies p ON p.schemaname = n.nspname AND p.tablename = c.relname
                AND p.policyname NOT IN ('sla_breach_scan', 'sla_retarget_scan')
           WHERE n.nspname = 'tickets' AND c.relname = ANY($1::text[])
           GROUP BY c.relname, c.relrowsecurity, c.relforcerowsecurity""",
        TENANT_TABLES,
    )
    assert sorted(row["relname"] for row in rows) == sorted(TENANT_TABLES)
    for row in rows:
        assert row["relrowsecurity"] and row["relforcerowsecurity"], row["relname"]
        assert row["quals"] and all("current_setting('app.tenant_id'" in q for q in row["quals"]), row
        assert row["checks"] and all("current_setting('app.tenant_id'" in c for c in row["checks"]), row
    registry = await service_conn.fetchrow(
        "SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = 'tickets.tenants'::regclass"
    )
    assert registry["relrowsecurity"] and registry["relforcerowsecurity"]
    # The two other policies let the tables' owner (the migration role, which the SLA scans'
    # functions run as) read tickets and retargets; the service role is not among their roles.
    owner_policies = await service_conn.fetch(
        "SELECT p.tablename, p.cmd, p.roles, pg_get_userbyid(c.relowner) AS owner FROM pg_policies p"
        " JOIN pg_class c ON c.relname = p.tablename AND c.relnamespace = 'tickets'::regnamespace"
        " WHERE p.schemaname = 'tickets' AND p.policyname IN ('sla_breach_scan', 'sla_retarget_scan')"
        " ORDER BY p.tablename"
    )
    assert [row["tablename"] for row in owner_policies] == ["sla_retargets", "tickets"]
    for owner_policy in owner_policies:
        assert owner_policy["cmd"] == "SELECT" and owner_policy["roles"] == [owner_policy["owner"]]
        assert await service_conn.fetchval("SELECT current_user") != owner_policy["owner"]


async def test_every_table_with_a_tenant_column_is_classified(service_conn):
    tables = {
        row["table_name"]
        for row in await service_conn.fetch(
            "SELECT table_name FROM information_schema.columns"
            " WHERE table_schema = 'tickets' AND column_name = 'tenant_id'"
        )
    }
    assert tables - {"tenants"} - INFRASTRUCTURE_TABLES == set(TENANT_TABLES)


async def test_no_function_in_the_schema_runs_with_its_owners_rights_but_these(service_conn):
    # A SECURITY DEFINER function owned by the migration role reads past every policy. The SLA
    # scheduler's two return tenant slugs only (which tickets.tenants shows the service anyway);
    # the ticket numbers' makes a tenant's sequence (the service role may make no object).
    definers = await service_conn.fetch(
        "SELECT p.proname, pg_get_function_result(p.oid) AS result, p.proconfig"
        " FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
        " WHERE n.nspname = 'tickets' AND p.prosecdef ORDER BY p.proname"
    )
    assert [(row["proname"], row["result"]) for row in definers] == [
        ("tenants_with_due_sla_breaches", "SETOF text"),
        ("tenants_with_sla_retargets", "SETOF text"),
        ("ticket_number_sequence", "regclass"),
    ]
    # A fixed search path, so no caller's objects can stand in for the ones it means.
    assert all(row["proconfig"] == ["search_path=pg_catalog, pg_temp"] for row in definers)


# -- pooled connections ------------------------------------------------------------------------


async def test_scope_ends_with_the_transaction_on_a_pooled_connection(two_tenants, infra):
    settings = settings_for(infra, Settings, "tickets")
    engine = create_engine(settings, pool_size=1, max_overflow=0)
    factory = create_session_factory(engine)
    count = text("SELECT count(*) FROM tickets.tickets")
    backend = text("SELECT pg_backend_pid()")
    try:
        async with factory() as session, session.begin():
            await set_tenant(session, two_tenants.a)
            pid = (await session.execute(backend)).scalar_one()
            assert (await session.execute(count)).scalar_one() >= 1
        # Committed: the same pooled connection comes back with no tenant.
        async with factory() as session, session.begin():
            assert (await session.execute(backend)).scalar_one() == pid
            assert (await session.execute(count)).scalar_one() == 0
            setting = (await session.execute(text("SELECT current_setting('app.tenant_id', true)"))).scalar()
            assert setting in (None, "")
        # Rolled back after an error: still no tenant afterwards.
        with pytest.raises(RuntimeError):
            async with factory() as session, session.begin():
                await set_tenant(session, two_tenants.b)
                assert (await session.execute(count)).scalar_one() >= 1
                raise RuntimeError("handler failed")
        async with factory() as session, session.begin():
            assert (await session.execute(backend)).scalar_one() == pid
            assert (await session.execute(count)).scalar_one() == 0
            await set_tenant(session, two_tenants.b)
            tenants = (
                (await session.execute(text("SELECT DISTINCT tenant_id FROM tickets.tickets")))
                .scalars()
                .all()
            )
            assert tenants == [two_tenants.b]
    finally:
        await engine.dispose()


async def test_ticket_number_allocation_leaves_no_scope_on_the_connection(two_tenants, service_conn):
    # next_ticket_number() serves the previous release during a rolling upgrade: it numbers from
    # the tenant's sequence, as creates do now. It scopes itself; called in autocommit (as the
    # previous release does) that scope must end with the statement.
    last = "SELECT pg_sequence_last_value(tickets.ticket_number_sequence($1))"
    before = await service_conn.fetchval(last, two_tenants.a)
    assert before >= 1
    assert (
        await service_conn.fetchval("SELECT tickets.next_ticket_number($1, NULL)", two_tenants.a)
        == before + 1
    )
    assert await service_conn.fetchval(last, two_tenants.a) == before + 1
    assert await service_conn.fetchval("SELECT current_setting('app.tenant_id', true)") in (None, "")
    assert await service_conn.fetchval("SELECT count(*) FROM tickets.tickets") == 0


async def test_the_apps_pooled_connections_carry_no_tenant_after_requests(two_tenants, infra):
    app = create_app(settings_for(infra, Settings, "tickets", db_pool_size=3, db_max_overflow=0))
    async with app_client(app) as client:
        headers = auth_headers(infra, two_tenants.a, ["agent"])
        assert (await client.get(f"{TICKETS}/{two_tenants.a_ticket}", headers=headers)).status_code == 200
        created = await client.post(TICKETS, json={"subject": "pool check"}, headers=headers)
        assert created.status_code == 201
        failed = await client.post(
            TICKETS, json={"subject": "x", "parent_id": two_tenants.b_ticket}, headers=headers
        )
        assert failed.status_code == 422
        # Check out every idle pooled connection at once: each has served some of the requests.
        engine = app.state.engine
        idle = engine.pool.checkedin()
        assert idle >= 1
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(idle):
                conn = await stack.enter_async_context(engine.connect())
                raw = (await conn.get_raw_connection()).driver_connection
                # Requests drive their transaction at the driver level on an AUTOCOMMIT
                # connection: each comes back outside a transaction, in SQLAlchemy's own mode.
                assert not raw.is_in_transaction()
                assert (await conn.execute(text("SELECT count(*) FROM tickets.tickets"))).scalar_one() == 0
                assert raw.is_in_transaction(), "SQLAlchemy began no transaction: still autocommit"
                assert (await conn.execute(text("SELECT count(*) FROM tickets.comments"))).scalar_one() == 0


async def test_a_failed_request_leaves_nothing_behind(two_tenants, infra):
    """The request transaction is rolled back when the endpoint fails after it has written."""
    # Two connections: a create takes its ticket number on a second one.
    app = create_app(settings_for(infra, Settings, "tickets", db_pool_size=2, db_max_overflow=0))
    async with app_client(app) as client:
        headers = auth_headers(infra, two_tenants.a, ["agent"])
        first = await create_ticket(client, headers, subject="stays open")
        closed = await create_ticket(client, headers, subject="closed for good")
        assert (await patch_ticket(client, headers, closed, status="closed")).status_code == 200
        history = "SELECT count(*) FROM tickets.ticket_history WHERE ticket_id = $1::uuid"
        before = await admin_fetch(infra, history, first["id"])
        # All or nothing: the first ticket is updated, then the closed one refuses (409).
        failed = await client.post(
            f"{TICKETS}/bulk", json={"ids": [first["id"], closed["id"]], "status": "pending"}, headers=headers
        )
        assert failed.status_code == 409, failed.text
        after = (await client.get(f"{TICKETS}/{first['id']}", headers=headers)).json()
        assert (after["status"], after["version"]) == ("open", first["version"])
        assert await admin_fetch(infra, history, first["id"]) == before
        # The pool's connections are clean and serve the next requests.
        for _ in range(3):
            assert (await client.get(f"{TICKETS}/{first['id']}", headers=headers)).status_code == 200


async def test_ticket_number_allocation_inside_a_scoped_transaction_keeps_its_scope(
    two_tenants, service_conn
):
    async with service_conn.transaction():
        await scope(service_conn, two_tenants.a)
        await service_conn.fetchval("SELECT tickets.next_ticket_number($1, NULL)", two_tenants.b)
        assert set(await tenants_visible(service_conn, "tickets")) == {two_tenants.a}


async def test_rows_with_an_empty_tenant_id_stay_invisible_after_a_scope_ends(
    two_tenants, infra, service_conn
):
    # After a scoped transaction the setting reads '' rather than NULL on that connection.
    await admin_fetch(
        infra, "INSERT INTO tickets.categories (tenant_id, key, name) VALUES ('', 'ghost', 'g')"
    )
    try:
        async with service_conn.transaction():
            await scope(service_conn, two_tenants.a)
        assert await service_conn.fetchval("SELECT current_setting('app.tenant_id', true)") == ""
        assert (
            await service_conn.fetchval("SELECT count(*) FROM tickets.categories WHERE tenant_id = ''") == 0
        )
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await service_conn.execute(
                "INSERT INTO tickets.categories (tenant_id, key, name) VALUES ('', 'x', 'x')"
            )
    finally:
        await admin_fetch(infra, "DELETE FROM tickets.categories WHERE tenant_id = ''")


@pytest.mark.parametrize("scoped", [True, False], ids=["tenant", "unscoped"])
async def test_a_transaction_opens_on_a_new_connection_when_the_pooled_ones_died(two_tenants, infra, scoped):
    """After a database restart every pooled connection is dead. The first statement finds that
    out, nothing has run yet, so the request goes on on a new connection (and the pool is
    renewed) instead of failing with a 503. The same for tenant-scoped requests and the
    unscoped ones (`get_session`: logins, dashboards, dead letters)."""
    engine = create_engine(settings_for(infra, Settings, "tickets"), pool_size=3, max_overflow=0)
    app = SimpleNamespace(
        state=SimpleNamespace(engine=engine, session_factory=create_session_factory(engine))
    )
    tenant = two_tenants.a if scoped else None

    async def backend_pid(hold_s: float = 0.0) -> int:
        async with transaction(app, tenant) as session:
            await asyncio.sleep(hold_s)
            return (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()

    try:
        pooled = set(await asyncio.gather(*(backend_pid(hold_s=0.2) for _ in range(3))))
        assert len(pooled) == 3
        await admin_fetch(
            infra, "SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", list(pooled)
        )

        async def gone() -> bool:
            return not await admin_fetch(
                infra, "SELECT 1 FROM pg_stat_activity WHERE pid = ANY($1)", list(pooled)
            )

        await wait_until(gone)
        after = [await backend_pid() for _ in range(3)]
        assert not pooled & set(after)
    finally:
        await engine.dispose()


async def test_an_unscoped_request_session_survives_dead_pooled_connections(infra):
    """`SessionDep` endpoints (logins, dashboards) get the same retry as tenant requests."""
    engine = create_engine(settings_for(infra, Settings, "tickets"), pool_size=2, max_overflow=0)
    app = FastAPI()
    app.state.engine, app.state.session_factory = engine, create_session_factory(engine)

    @app.get("/pid")
    async def backend_pid(session: SessionDep) -> int:
        return (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()

    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test"
        ) as client:
            pooled = (await client.get("/pid")).json()
            await admin_fetch(infra, "SELECT pg_terminate_backend($1)", pooled)
            await wait_until(
                lambda: _no_backend(infra, pooled),
            )
            response = await client.get("/pid")
            assert response.status_code == 200 and response.json() != pooled
    finally:
        await engine.dispose()


async def _no_backend(infra, pid: int) -> bool:
    return not await admin_fetch(infra, "SELECT 1 FROM pg_stat_activity WHERE pid = $1", pid)


async def test_a_cancelled_request_transaction_stays_cancelled_and_leaves_the_pool_clean(two_tenants, infra):
    settings = settings_for(infra, Settings, "tickets")
    engine = create_engine(settings, pool_size=1, max_overflow=0)
    app = SimpleNamespace(
        state=SimpleNamespace(engine=engine, session_factory=create_session_factory(engine))
    )
    started = asyncio.Event()

    async def slow_request() -> None:
        async with transaction(app, two_tenants.a) as session:
            await session.execute(text("UPDATE tickets.tickets SET subject = 'changed'"))
            started.set()
            await session.execute(text("SELECT pg_sleep(10)"))

    try:
        task = asyncio.create_task(slow_request())
        await asyncio.wait_for(started.wait(), 5)
        await asyncio.sleep(0.2)  # inside pg_sleep
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)
        # The pool's one connection (or its replacement) serves the next transaction, and the
        # cancelled one's write is gone.
        async with transaction(app, two_tenants.a) as session:
            subjects = (await session.execute(text("SELECT subject FROM tickets.tickets"))).scalars().all()
        assert subjects and "changed" not in subjects
    finally:
        await engine.dispose()
