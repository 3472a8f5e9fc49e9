"""Alembic per service (version table in the service's own schema) and database provisioning."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
from alembic import command, context, op
from alembic.config import Config
from sqlalchemy import MetaData, pool, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from libs.common.db import async_url, plain_dsn

REPO_ROOT = Path(__file__).resolve().parents[2]


def alembic_config(admin_url: str, migrations_dir: str, schema: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(REPO_ROOT / migrations_dir))
    config.set_main_option("sqlalchemy.url", async_url(admin_url).replace("%", "%%"))
    config.attributes["schema"] = schema
    return config


def upgrade(admin_url: str, migrations_dir: str, schema: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(admin_url, migrations_dir, schema), revision)


def downgrade(admin_url: str, migrations_dir: str, schema: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(admin_url, migrations_dir, schema), revision)


def run_env(target_metadata: MetaData) -> None:
    """Body of every service's migrations/env.py: online, async, limited to its schema."""
    schema = target_metadata.schema
    url = context.config.get_main_option("sqlalchemy.url")

    def include_object(obj, name, type_, reflected, compare_to) -> bool:
        table_schema = getattr(obj, "schema", None) if type_ == "table" else schema
        return table_schema == schema

    def do_run(connection: Connection) -> None:
        connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            version_table_schema=schema,
            include_schemas=True,
            include_object=include_object,
        )
        with context.begin_transaction():
            context.run_migrations()

    async def run_async() -> None:
        engine = create_async_engine(url, poolclass=pool.NullPool)
        async with engine.begin() as connection:
            await connection.run_sync(do_run)
        await engine.dispose()

    asyncio.run(run_async())


def create_messaging_tables(schema: str, *, with_outbox: bool = True) -> None:
    """Outbox (with its NOTIFY trigger), inbox and dead letters: used by initial migrations."""
    from sqlalchemy.schema import CreateIndex, CreateTable

    from libs.common.consumer import dead_letter_table, inbox_table
    from libs.common.db import make_metadata
    from libs.common.outbox import outbox_table

    metadata = make_metadata(schema)
    tables = [inbox_table(metadata), dead_letter_table(metadata, as_first_created=True)]
    if with_outbox:
        tables.insert(0, outbox_table(metadata))
    for table in tables:
        op.execute(CreateTable(table))
        for index in table.indexes:
            op.execute(CreateIndex(index))
    if not with_outbox:
        return
    # A statement trigger wakes the relay on commit without an extra round trip per insert.
    notify_on_every_commit(schema)
    op.execute(
        f"""CREATE TRIGGER outbox_notify AFTER INSERT ON "{schema}".outbox
        FOR EACH STATEMENT EXECUTE FUNCTION "{schema}".notify_outbox()"""
    )


def notify_only_idle_relays(schema: str) -> None:
    """The outbox trigger NOTIFYs only when no relay of the schema is busy (see
    `libs.common.outbox.quiet_lock_key`): a busy relay polls on its own, and under load a NOTIFY
    per commit cost ~7 % of a ticket create (bench/README.md)."""
    from libs.common.outbox import notify_channel, quiet_lock_key

    op.execute(
        f"""CREATE OR REPLACE FUNCTION "{schema}".notify_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF pg_try_advisory_xact_lock_shared({quiet_lock_key(schema)}) THEN
                PERFORM pg_notify('{notify_channel(schema)}', '');
            END IF;
            RETURN NULL;
        END $$"""
    )


def notify_on_every_commit(schema: str) -> None:
    """The outbox trigger's function as `create_messaging_tables` makes it (and as
    `notify_only_idle_relays` is undone): every commit that adds rows NOTIFYs the relay."""
    from libs.common.outbox import notify_channel

    op.execute(
        f"""CREATE OR REPLACE FUNCTION "{schema}".notify_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_notify('{notify_channel(schema)}', ''); RETURN NULL; END $$"""
    )


def drop_messaging_tables(schema: str) -> None:
    op.execute(f'DROP TABLE IF EXISTS "{schema}".dead_letters, "{schema}".inbox, "{schema}".outbox')
    op.execute(f'DROP FUNCTION IF EXISTS "{schema}".notify_outbox()')


def add_dead_letter_replay_columns(schema: str) -> None:
    """When and by whom a dead letter was replayed (libs/common/dead_letters.py)."""
    op.execute(
        f'ALTER TABLE "{schema}".dead_letters ADD COLUMN replayed_at timestamptz, ADD COLUMN replayed_by text'
    )


def drop_dead_letter_replay_columns(schema: str) -> None:
    op.execute(f'ALTER TABLE "{schema}".dead_letters DROP COLUMN replayed_at, DROP COLUMN replayed_by')


def _quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


async def provision_roles(admin_url: str, schemas_to_roles: dict[str, tuple[str, str]]) -> None:
    """Create each service's schema and login role; the role gets rights on its schema only.

    `schemas_to_roles` maps schema -> (role, password). Idempotent; run before and after
    migrations (grants cover tables that exist, default privileges cover later ones).
    """
    conn = await asyncpg.connect(plain_dsn(admin_url))
    try:
        admin = await conn.fetchval("SELECT current_user")
        for schema, (role, password) in schemas_to_roles.items():
            exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
            verb = "ALTER" if exists else "CREATE"
            await conn.execute(
                f'{verb} ROLE "{role}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE '
                f"PASSWORD {_quote_literal(password)}"
            )
            await conn.execute(
                f"""
                CREATE SCHEMA IF NOT EXISTS "{schema}";
                REVOKE ALL ON SCHEMA "{schema}" FROM PUBLIC;
                GRANT USAGE ON SCHEMA "{schema}" TO "{role}";
                GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "{schema}" TO "{role}";
                GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA "{schema}" TO "{role}";
                ALTER DEFAULT PRIVILEGES FOR ROLE "{admin}" IN SCHEMA "{schema}"
                    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO "{role}";
                ALTER DEFAULT PRIVILEGES FOR ROLE "{admin}" IN SCHEMA "{schema}"
                    GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO "{role}";
                ALTER ROLE "{role}" SET search_path = "{schema}";
                """
            )
        await conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    finally:
        await conn.close()
