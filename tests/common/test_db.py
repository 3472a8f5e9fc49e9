"""Pooled connections after an interrupted statement: never reused with a transaction left open.

The scenario from a QA run: PostgreSQL froze, the request deadline cancelled a request whose
`BEGIN` was already on its way, and the connection went back to the pool looking idle. When the
server resumed it ran the `BEGIN`, and the connection stayed "idle in transaction" holding the
row locks of whatever ran on it next. Here only the connection's own backend is frozen (SIGSTOP),
so nothing else of the shared test server is affected.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace

import pytest
from sqlalchemy import text

from libs.common.db import autocommit_driver_connection, create_engine, create_session_factory, transaction
from libs.common.settings import CommonSettings
from tests.conftest import settings_for
from tests.tickets.helpers import admin_fetch


@contextlib.asynccontextmanager
async def one_connection_app(infra) -> AsyncIterator[SimpleNamespace]:
    engine = create_engine(settings_for(infra, CommonSettings, "analytics"), pool_size=1, max_overflow=0)
    try:
        yield SimpleNamespace(
            state=SimpleNamespace(engine=engine, session_factory=create_session_factory(engine))
        )
    finally:
        await engine.dispose()


async def open_transaction(app) -> None:
    async with transaction(app, "acme"):
        pass


async def autocommit_statement(app) -> None:
    async with autocommit_driver_connection(app.state.engine) as raw:
        await raw.fetchval("SELECT 1")


@pytest.mark.parametrize("use_connection", [open_transaction, autocommit_statement])
async def test_a_statement_cut_off_by_cancellation_leaves_no_transaction_open(
    infra, use_connection: Callable
) -> None:
    async with one_connection_app(infra) as app:
        async with transaction(app, "acme") as session:
            backend = (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        os.kill(backend, signal.SIGSTOP)  # the pool's only connection: its server process freezes
        try:
            user = asyncio.create_task(use_connection(app))
            await asyncio.sleep(0.3)  # the statement is on its way, no answer comes
            user.cancel()  # as the request deadline does
            with pytest.raises(asyncio.CancelledError):
                await user
        finally:
            os.kill(backend, signal.SIGCONT)
        await asyncio.sleep(0.5)  # the server catches up with what it was sent

        rows = await admin_fetch(infra, "SELECT state FROM pg_stat_activity WHERE pid = $1", backend)
        assert [row["state"] for row in rows] == [], "the interrupted connection is still open"
        # The pool carries on with a new connection, outside any transaction.
        async with transaction(app, "acme") as session:
            assert (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one() != backend
        async with autocommit_driver_connection(app.state.engine) as raw:
            assert not raw.is_in_transaction()
            assert await raw.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", backend) == 0


async def test_a_connection_put_back_inside_a_transaction_is_never_handed_out(infra) -> None:
    """Whatever returns a connection to the pool inside a transaction (SQLAlchemy's reset rolls
    back only its own), the next checkout discards it: no write may run in a transaction nobody
    commits."""
    async with one_connection_app(infra) as app:
        async with app.state.engine.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            backend = await raw.fetchval("SELECT pg_backend_pid()")
            await raw.execute("BEGIN")  # behind SQLAlchemy's back
        async with autocommit_driver_connection(app.state.engine) as raw:
            assert not raw.is_in_transaction()
            assert await raw.fetchval("SELECT pg_backend_pid()") != backend
        await asyncio.sleep(0.2)
        rows = await admin_fetch(infra, "SELECT state FROM pg_stat_activity WHERE pid = $1", backend)
        assert rows == []
