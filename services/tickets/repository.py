"""Every query of the tickets service. Hot read paths return rows (Core), not ORM entities."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import and_, insert, select, tuple_
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.tickets.models import ticket_numbers, tickets

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


async def next_ticket_number(session: AsyncSession, tenant_id: str) -> int:
    statement = (
        pg_insert(ticket_numbers)
        .values(tenant_id=tenant_id, last_number=1)
        .on_conflict_do_update(
            index_elements=[ticket_numbers.c.tenant_id],
            set_={"last_number": ticket_numbers.c.last_number + 1},
        )
        .returning(ticket_numbers.c.last_number)
    )
    return await session.scalar(statement)


async def insert_ticket(session: AsyncSession, values: dict[str, Any]) -> dict[str, Any]:
    row = (await session.execute(insert(tickets).values(**values).returning(*TICKET_COLUMNS))).one()
    return dict(row._mapping)


async def get_ticket(
    session: AsyncSession, tenant_id: str, ticket_id: UUID, requester_id: str | None = None
) -> dict[str, Any] | None:
    query = select(*TICKET_COLUMNS).where(tickets.c.tenant_id == tenant_id, tickets.c.id == ticket_id)
    if requester_id is not None:
        query = query.where(tickets.c.requester_id == requester_id)
    row = (await session.execute(query)).first()
    return dict(row._mapping) if row else None


async def list_tickets(
    session: AsyncSession,
    tenant_id: str,
    *,
    limit: int,
    after: tuple[datetime, UUID] | None = None,
    requester_id: str | None = None,
) -> list[dict[str, Any]]:
    """Newest first, keyset-paginated on (created_at, id); fetches limit + 1 to detect more."""
    conditions = [tickets.c.tenant_id == tenant_id]
    if requester_id is not None:
        conditions.append(tickets.c.requester_id == requester_id)
    if after is not None:
        conditions.append(tuple_(tickets.c.created_at, tickets.c.id) < tuple_(*after))
    query = (
        select(*TICKET_COLUMNS)
        .where(and_(*conditions))
        .order_by(tickets.c.created_at.desc(), tickets.c.id.desc())
        .limit(limit + 1)
    )
    return [dict(row._mapping) for row in await session.execute(query)]
