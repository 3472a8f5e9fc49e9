"""Every query of the tickets service. Hot read paths return rows (Core), not ORM entities."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Select, and_, bindparam, insert, select, tuple_
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from libs.common.db import fetch_all, rows_as_dicts
from libs.common.events import CloudEvent
from libs.common.outbox import outbox_row_cte, outbox_row_params
from services.tickets.models import outbox, ticket_numbers, tickets

TICKET_COLUMNS = [
    tickets.c.id,
    tickets.c.number,
    tickets.c.subject,
    tickets.c.description,
    tickets.c.status,
    tickets.c.priority,
    tickets.c.category,
    tickets.c.requester_id,
    tickets.c.assignee_id,
    tickets.c.created_at,
    tickets.c.updated_at,
    tickets.c.version,
]


_NEXT_TICKET_NUMBER = (
    pg_insert(ticket_numbers)
    .values(tenant_id=bindparam("tenant_id"), last_number=1)
    .on_conflict_do_update(
        index_elements=[ticket_numbers.c.tenant_id],
        set_={"last_number": ticket_numbers.c.last_number + 1},
    )
    .returning(ticket_numbers.c.last_number)
)
_INSERT_COLUMNS = [
    "id",
    "tenant_id",
    "number",
    "subject",
    "description",
    "status",
    "priority",
    "category",
    "requester_id",
    "created_at",
    "updated_at",
]
# The ticket and its `ticket.created` outbox row in one statement.
_INSERT_TICKET_WITH_EVENT = (
    insert(tickets)
    # Parameter names must not equal column names: SQLAlchemy would treat such keys as extra
    # column values for both INSERTs.
    .values({name: bindparam(f"ticket_{name}", type_=tickets.c[name].type) for name in _INSERT_COLUMNS})
    .add_cte(outbox_row_cte(outbox))
    .returning(*TICKET_COLUMNS)
)


async def allocate_ticket_number(session: AsyncSession, tenant_id: str) -> int:
    """The tenant's next ticket number, taken like a sequence's nextval().

    It runs as its own single-statement (autocommit) transaction, so the tenant's counter row
    is locked only inside that statement, not until the create commits: creates of one tenant
    no longer queue behind each other. Like a sequence, a create that fails afterwards leaves
    a gap; numbers stay unique and increasing.
    """
    async with session.bind.connect() as conn:
        autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
        return await autocommit.scalar(_NEXT_TICKET_NUMBER, {"tenant_id": tenant_id})


async def insert_ticket(
    session: AsyncSession, values: dict[str, Any], event_subject: str, event: CloudEvent
) -> dict[str, Any]:
    """Insert a ticket together with the outbox row of its event."""
    conn = await session.connection()
    params = {f"ticket_{name}": value for name, value in values.items()}
    params.update(outbox_row_params(event_subject, event))
    return rows_as_dicts(await conn.execute(_INSERT_TICKET_WITH_EVENT, params))[0]


def _ticket_query(*, own_only: bool, after_cursor: bool = False, by_id: bool = False) -> Select:
    """A prepared SELECT of tickets; one statement object per shape (see fetch_all)."""
    conditions = [tickets.c.tenant_id == bindparam("tenant_id")]
    if by_id:
        conditions.append(tickets.c.id == bindparam("ticket_id"))
    if own_only:
        conditions.append(tickets.c.requester_id == bindparam("requester_id"))
    if after_cursor:
        conditions.append(
            tuple_(tickets.c.created_at, tickets.c.id)
            < tuple_(bindparam("after_created_at"), bindparam("after_id"))
        )
    query = select(*TICKET_COLUMNS).where(and_(*conditions))
    if by_id:
        return query
    return query.order_by(tickets.c.created_at.desc(), tickets.c.id.desc()).limit(bindparam("limit"))


_QUERIES = {
    (own_only, after_cursor, by_id): _ticket_query(own_only=own_only, after_cursor=after_cursor, by_id=by_id)
    for own_only in (False, True)
    for after_cursor in (False, True)
    for by_id in (False, True)
    if not (by_id and after_cursor)
}


async def get_ticket(
    session: AsyncSession, tenant_id: str, ticket_id: UUID, requester_id: str | None = None
) -> dict[str, Any] | None:
    query = _QUERIES[(requester_id is not None, False, True)]
    rows = await fetch_all(
        session, query, tenant_id=tenant_id, ticket_id=ticket_id, requester_id=requester_id
    )
    return rows[0] if rows else None


async def list_tickets(
    session: AsyncSession,
    tenant_id: str,
    *,
    limit: int,
    after: tuple[datetime, UUID] | None = None,
    requester_id: str | None = None,
) -> list[dict[str, Any]]:
    """Newest first, keyset-paginated on (created_at, id); fetches limit + 1 to detect more."""
    query = _QUERIES[(requester_id is not None, after is not None, False)]
    after_created_at, after_id = after or (None, None)
    return await fetch_all(
        session,
        query,
        tenant_id=tenant_id,
        requester_id=requester_id,
        limit=limit + 1,
        after_created_at=after_created_at,
        after_id=after_id,
    )
