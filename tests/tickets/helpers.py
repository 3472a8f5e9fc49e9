"""Shared helpers for the tickets tests: factories, problem assertions, reads as the database owner."""

from __future__ import annotations

import base64
import contextlib
import contextvars
import json
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any

import asyncpg
import httpx
from sqlalchemy import event

from libs.common.db import plain_dsn
from tests.conftest import Infra

PROBLEM = "application/problem+json"
TICKETS = "/api/v1/tickets"


def assert_problem(
    response: httpx.Response,
    status: int,
    *,
    fields: tuple[str, ...] = (),
    detail: str | None = None,
) -> dict[str, Any]:
    """`response` is an RFC 9457 problem with `status`, a title and a detail; a 422 lists `fields`."""
    assert response.status_code == status, f"{response.status_code} != {status}: {response.text[:500]}"
    assert response.headers["content-type"] == PROBLEM, response.headers["content-type"]
    problem = response.json()
    assert problem["status"] == status
    assert problem["title"] and problem["detail"] and problem["type"]
    # Never a stack trace, never an internal error text.
    assert "Traceback" not in response.text and "asyncpg" not in response.text
    if status == 422:
        named = [error["field"] for error in problem["errors"]]
        assert all(error["message"] for error in problem["errors"])
        for field in fields:
            assert field in named, f"{field!r} not among the errors' fields {named}"
    if detail is not None:
        assert detail in problem["detail"], problem["detail"]
    return problem


def cursor_of(values: Any) -> str:
    """A cursor in the service's encoding (urlsafe base64 of JSON), with any content."""
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


async def admin_fetch(infra: Infra, sql: str, *args: Any) -> list[asyncpg.Record]:
    """Read with the superuser (no row-level security), to see what really is in the tables."""
    conn = await asyncpg.connect(plain_dsn(infra.admin_url))
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def tenant_state(infra: Infra, tenant: str) -> dict[str, list[dict[str, Any]]]:
    """Every row the tenant owns in the tickets schema, plus its outbox events.

    Compared before and after a rejected request to prove it wrote nothing. Ticket numbers
    are left out on purpose: like a sequence, a create that fails late may skip a number.
    """
    queries = {
        "tickets": "SELECT * FROM tickets.tickets WHERE tenant_id = $1 ORDER BY id",
        "comments": "SELECT * FROM tickets.comments WHERE tenant_id = $1 ORDER BY id",
        "history": "SELECT * FROM tickets.ticket_history WHERE tenant_id = $1 ORDER BY id",
        "statuses": "SELECT * FROM tickets.statuses WHERE tenant_id = $1 ORDER BY key",
        "categories": "SELECT * FROM tickets.categories WHERE tenant_id = $1 ORDER BY key",
        "idempotency_keys": "SELECT * FROM tickets.idempotency_keys WHERE tenant_id = $1 ORDER BY key",
        "outbox": "SELECT id, subject, aggregate_id FROM tickets.outbox WHERE subject LIKE $1 ORDER BY id",
    }
    conn = await asyncpg.connect(plain_dsn(infra.admin_url))
    try:
        state = {}
        for name, sql in queries.items():
            argument = f"tickets.{tenant}.%" if name == "outbox" else tenant
            state[name] = [dict(row) for row in await conn.fetch(sql, argument)]
        return state
    finally:
        await conn.close()


async def create_ticket(client: httpx.AsyncClient, headers: dict[str, str], **fields: Any) -> dict[str, Any]:
    response = await client.post(
        TICKETS, json={"subject": "elevator stuck on floor 3", **fields}, headers=headers
    )
    assert response.status_code == 201, response.text
    return response.json()


async def add_comment(
    client: httpx.AsyncClient, headers: dict[str, str], ticket_id: str, body: str, visibility: str = "public"
) -> dict[str, Any]:
    response = await client.post(
        f"{TICKETS}/{ticket_id}/comments", json={"body": body, "visibility": visibility}, headers=headers
    )
    assert response.status_code == 201, response.text
    return response.json()


async def patch_ticket(
    client: httpx.AsyncClient, headers: dict[str, str], ticket: dict[str, Any], **changes: Any
) -> httpx.Response:
    """PATCH with the If-Match of the given ticket representation."""
    return await client.patch(
        f"{TICKETS}/{ticket['id']}",
        json=changes,
        headers=headers | {"If-Match": f'W/"{ticket["version"]}"'},
    )


async def outbox_types(infra: Infra, aggregate_id: str) -> list[str]:
    """The event types the ticket's outbox rows carry, oldest first."""
    rows = await admin_fetch(
        infra,
        "SELECT payload->>'type' AS type FROM tickets.outbox WHERE aggregate_id = $1 ORDER BY id",
        aggregate_id,
    )
    return [row["type"] for row in rows]


async def read_ticket(
    client: httpx.AsyncClient, headers: dict[str, str], ticket: dict[str, Any]
) -> dict[str, Any]:
    """The ticket as `headers`' user reads it now."""
    response = await client.get(f"{TICKETS}/{ticket['id']}", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def minutes_after_creation(ticket: dict[str, Any], column: str) -> float | None:
    """How long after its creation the ticket's `column` (a deadline) falls, in minutes."""
    if ticket[column] is None:
        return None
    delta = datetime.fromisoformat(ticket[column]) - datetime.fromisoformat(ticket["created_at"])
    return delta.total_seconds() / 60


@contextlib.asynccontextmanager
async def updates_refused(infra, ticket_id: str) -> AsyncIterator[None]:
    """While inside, the database refuses every update of the ticket (a trigger raising), as a
    constraint or a bug would."""
    name = f"tickets.refuse_update_{ticket_id.replace('-', '_')}"
    await admin_fetch(
        infra,
        f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        f" IF NEW.id = '{ticket_id}' THEN RAISE EXCEPTION 'refused by the test'; END IF;"
        " RETURN NEW; END $$",
    )
    await admin_fetch(
        infra,
        "CREATE TRIGGER refuse_update BEFORE UPDATE ON tickets.tickets"
        f" FOR EACH ROW EXECUTE FUNCTION {name}()",
    )
    try:
        yield
    finally:
        await admin_fetch(infra, "DROP TRIGGER refuse_update ON tickets.tickets")
        await admin_fetch(infra, f"DROP FUNCTION {name}()")


# -- statements per request ---------------------------------------------------------------------

_counting: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("counting", default=None)


def _record(statement: str) -> None:
    statements = _counting.get()
    if statements is not None:
        statements.append(statement.split(None, 1)[0].upper() + " " + statement[:80])


# What asyncpg runs on its own the first time a connection meets a type (its introspection, with
# JIT switched off around it): once per connection, not per request.
_DRIVER_INTROSPECTION = ("typeinfo_tree", "current_setting('jit')", "set_config('jit'")


def _log_query(record: Any) -> None:  # asyncpg query logger: raw driver statements (fetch_all, BEGIN)
    if not any(marker in record.query for marker in _DRIVER_INTROSPECTION):
        _record(record.query)


def count_statements(engine) -> None:
    """Count every statement the engine's connections run in the current context.

    Two places, because the service uses two paths: SQLAlchemy executions (prepared statements,
    invisible to asyncpg's query logger) and raw asyncpg calls (`fetch_all`, BEGIN/COMMIT).
    Only statements issued under the test's context variable count, so the outbox relay
    polling in its own task does not.
    """

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _before(_conn, _cursor, statement, _params, _context, _executemany) -> None:
        _record(statement)

    @event.listens_for(engine.sync_engine.pool, "checkout")
    def _checkout(dbapi_connection, _record_, _proxy) -> None:
        dbapi_connection.driver_connection.add_query_logger(_log_query)


@contextlib.contextmanager
def statements_run() -> Iterator[list[str]]:
    """The statements run inside the block by engines `count_statements` watches."""
    statements: list[str] = []
    token = _counting.set(statements)
    try:
        yield statements
    finally:
        _counting.reset(token)
