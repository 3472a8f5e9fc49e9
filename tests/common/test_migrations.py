"""Every service's migrations upgrade, downgrade to nothing, and upgrade again on a fresh database."""

import asyncio

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from libs.common import migrations
from libs.common.db import plain_dsn
from libs.common.stack import STACK


@pytest.fixture
def scratch_database(infra):
    name = "migration_roundtrip"

    async def recreate(drop_only: bool = False):
        conn = await asyncpg.connect(plain_dsn(infra.admin_url))
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            if not drop_only:
                await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(recreate())
    yield make_url(infra.admin_url).set(database=name).render_as_string(hide_password=False)
    asyncio.run(recreate(drop_only=True))


async def _tables(url: str) -> dict[str, set[str]]:
    conn = await asyncpg.connect(plain_dsn(url))
    try:
        rows = await conn.fetch(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema = ANY($1::text[])",
            [spec.schema for spec in STACK],
        )
    finally:
        await conn.close()
    result: dict[str, set[str]] = {}
    for row in rows:
        result.setdefault(row["table_schema"], set()).add(row["table_name"])
    return result


def test_migrations_upgrade_downgrade_and_upgrade_again(scratch_database):
    for spec in STACK:
        migrations.upgrade(scratch_database, spec.migrations, spec.schema)
    upgraded = asyncio.run(_tables(scratch_database))
    assert {"tickets", "outbox", "inbox", "dead_letters", "alembic_version"} <= upgraded["tickets"]
    assert {"daily_ticket_counts", "inbox", "alembic_version"} <= upgraded["analytics"]
    assert {"users", "tenants", "alembic_version"} <= upgraded["identity"]

    for spec in reversed(STACK):
        migrations.downgrade(scratch_database, spec.migrations, spec.schema)
    downgraded = asyncio.run(_tables(scratch_database))
    assert all(tables <= {"alembic_version"} for tables in downgraded.values()), downgraded

    for spec in STACK:
        migrations.upgrade(scratch_database, spec.migrations, spec.schema)
    assert asyncio.run(_tables(scratch_database)) == upgraded


def test_models_match_migrations(scratch_database):
    """Autogenerate finds nothing to do: the ORM tables and the migrations agree."""
    import importlib

    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy.ext.asyncio import create_async_engine

    from libs.common.db import async_url

    for spec in STACK:
        migrations.upgrade(scratch_database, spec.migrations, spec.schema)

    async def diff_for(module_name: str, schema: str):
        metadata = importlib.import_module(module_name).metadata
        engine = create_async_engine(async_url(scratch_database))
        try:
            async with engine.connect() as conn:

                def compare(sync_conn):
                    context = MigrationContext.configure(
                        sync_conn,
                        opts={
                            "include_schemas": True,
                            "include_object": lambda obj, name, type_, reflected, compare_to: (
                                getattr(obj, "schema", schema) == schema if type_ == "table" else True
                            ),
                            "version_table_schema": schema,
                        },
                    )
                    return compare_metadata(context, metadata)

                return await conn.run_sync(compare)
        finally:
            await engine.dispose()

    model_modules = {
        "identity": "gateway.models",
        "tickets": "services.tickets.models",
        "analytics": "services.analytics.models",
        "summarization": "services.summarization.models",
        "notifications": "services.notifications.models",
    }
    for schema, module_name in model_modules.items():
        diff = asyncio.run(diff_for(module_name, schema))
        relevant = [d for d in diff if not (isinstance(d, tuple) and d[0] == "remove_table")]
        assert relevant == [], f"{schema}: models and migrations differ: {relevant}"


def run_sql(url: str, *statements: str) -> list[asyncpg.Record]:
    """Run statements as the superuser; the rows of the last one."""

    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(plain_dsn(url))
        try:
            for statement in statements[:-1]:
                await conn.execute(statement)
            return await conn.fetch(statements[-1])
        finally:
            await conn.close()

    return asyncio.run(run())


def test_tickets_0013_recomputes_the_stored_search_terms(scratch_database):
    from services.tickets.search import search_terms_of

    tickets = next(spec for spec in STACK if spec.schema == "tickets")
    migrations.upgrade(scratch_database, tickets.migrations, tickets.schema, "0012")

    # More rows than one batch of the migration (2,000), with stale terms.
    run_sql(
        scratch_database,
        "INSERT INTO tickets.tickets (id, tenant_id, number, subject, requester_id, search_terms)"
        " SELECT gen_random_uuid(), 'acme', n, 'Badge ' || n || ' for kim@acme.co.kr, B1층',"
        " 'req-1', 'stale' FROM generate_series(1, 2005) AS n",
        "INSERT INTO tickets.comments (id, tenant_id, ticket_id, author_id, visibility, body)"
        " SELECT gen_random_uuid(), 'acme', id, 'agent-1', 'public', 'Re: <NullPointerException>'"
        " FROM tickets.tickets WHERE number <= 3",
        "INSERT INTO tickets.tickets (id, tenant_id, number, subject, requester_id, tags, building)"
        " VALUES (gen_random_uuid(), 'acme', 9999, $$\u1109\u1166\u1106\u1167\u11ab\u1103\u1162 누수$$,"
        " 'req-1', ARRAY[$$\u1109\u1166\u1106\u1167\u11ab$$], $$\u1107\u1169\u11ab\u1100\u116a\u11ab$$)",
        "SELECT 1",
    )
    migrations.upgrade(scratch_database, tickets.migrations, tickets.schema)
    # Decomposed Hangul (as macOS sends it) is stored composed.
    composed = run_sql(
        scratch_database, "SELECT subject, tags, building FROM tickets.tickets WHERE number = 9999"
    )
    assert tuple(composed[0]) == ("세면대 누수", ["세면"], "본관")
    rows = run_sql(scratch_database, "SELECT subject, description, search_terms FROM tickets.tickets")
    assert len(rows) == 2006
    assert all(row["search_terms"] == search_terms_of(f"{row[0]} {row[1]}") for row in rows)
    assert sum({"acme", "1층"} <= set(row["search_terms"].split()) for row in rows) == 2005
    comments = run_sql(scratch_database, "SELECT search_terms FROM tickets.comments")
    assert [row[0] for row in comments] == ["NullPointerException"] * 3


def test_tickets_0014_lowers_existing_tags_keeping_each_once(scratch_database):
    tickets = next(spec for spec in STACK if spec.schema == "tickets")
    migrations.upgrade(scratch_database, tickets.migrations, tickets.schema, "0013")

    # More tickets than one batch of the migration (2,000).
    run_sql(
        scratch_database,
        "INSERT INTO tickets.tickets (id, tenant_id, number, subject, requester_id, tags)"
        " SELECT gen_random_uuid(), 'acme', n, 'Badge', 'req-1',"
        " CASE WHEN n % 2 = 0 THEN ARRAY['VIP', 'Lift', 'vip', 'ÜBER', '누수'] ELSE ARRAY['lift'] END"
        " FROM generate_series(1, 2005) AS n",
        "INSERT INTO tickets.tickets (id, tenant_id, number, subject, requester_id)"
        " VALUES (gen_random_uuid(), 'acme', 9999, 'No tags', 'req-1')",
        "SELECT 1",
    )
    migrations.upgrade(scratch_database, tickets.migrations, tickets.schema)
    rows = run_sql(scratch_database, "SELECT number, tags, version FROM tickets.tickets")
    assert len(rows) == 2006
    for number, tags, version in rows:
        expected = [] if number == 9999 else ["vip", "lift", "über", "누수"] if number % 2 == 0 else ["lift"]
        assert (tags, version) == (expected, 1), number


def test_tickets_0016_carries_each_tenants_counter_to_its_sequence_and_back(scratch_database):
    tickets = next(spec for spec in STACK if spec.schema == "tickets")
    migrations.upgrade(scratch_database, tickets.migrations, tickets.schema, "0015")
    run_sql(
        scratch_database,
        # The counter's trigger registers each tenant; one tenant id needs quoting as a name.
        """INSERT INTO tickets.ticket_numbers (tenant_id, last_number)
           VALUES ('acme', 1041), ('Bölge "3"; x', 7)""",
        "SELECT 1",
    )
    migrations.upgrade(scratch_database, tickets.migrations, tickets.schema)
    taken = run_sql(
        scratch_database,
        "SELECT tenant, nextval(tickets.ticket_number_sequence(tenant)) AS number"
        """ FROM unnest(ARRAY['acme', 'Bölge "3"; x', 'new']) AS tenant ORDER BY tenant""",
    )
    assert [tuple(row) for row in taken] == [('Bölge "3"; x', 8), ("acme", 1042), ("new", 1)]
    registered = run_sql(scratch_database, "SELECT tenant_id FROM tickets.tenants ORDER BY tenant_id")
    assert [row[0] for row in registered] == ['Bölge "3"; x', "acme", "new"]
    assert run_sql(scratch_database, "SELECT to_regclass('tickets.ticket_numbers')")[0][0] is None

    migrations.downgrade(scratch_database, tickets.migrations, tickets.schema, "0015")
    counters = run_sql(
        scratch_database, "SELECT tenant_id, last_number FROM tickets.ticket_numbers ORDER BY 1"
    )
    assert [tuple(row) for row in counters] == [('Bölge "3"; x', 8), ("acme", 1042), ("new", 1)]
    sequences = run_sql(
        scratch_database,
        "SELECT count(*) FROM pg_sequences"
        " WHERE schemaname = 'tickets' AND sequencename LIKE 'ticket_numbers%'",
    )
    assert sequences[0][0] == 0
    # The previous release's function numbers on from the counters again.
    assert run_sql(scratch_database, "SELECT tickets.next_ticket_number('acme', NULL)")[0][0] == 1043
