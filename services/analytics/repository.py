"""Every query of the analytics service."""

from __future__ import annotations

from datetime import date

from sqlalchemy import bindparam, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.analytics.models import daily_ticket_counts

# Built once: this runs for every ticket.created event.
_COUNT_CREATED_TICKET = (
    pg_insert(daily_ticket_counts)
    .values(tenant_id=bindparam("tenant_id"), day=bindparam("day"), tickets_created=bindparam("count"))
    .on_conflict_do_update(
        index_elements=[daily_ticket_counts.c.tenant_id, daily_ticket_counts.c.day],
        set_={"tickets_created": daily_ticket_counts.c.tickets_created + bindparam("count")},
    )
)


async def add_created_tickets(session: AsyncSession, counts: dict[tuple[str, date], int]) -> None:
    """Add `count` created tickets to each (tenant, day)."""
    conn = await session.connection()
    for (tenant_id, day), count in counts.items():
        await conn.execute(_COUNT_CREATED_TICKET, {"tenant_id": tenant_id, "day": day, "count": count})


async def created_counts_by_day(
    session: AsyncSession, tenant_id: str, first: date, last: date
) -> dict[date, int]:
    rows = await session.execute(
        select(daily_ticket_counts.c.day, daily_ticket_counts.c.tickets_created).where(
            daily_ticket_counts.c.tenant_id == tenant_id,
            daily_ticket_counts.c.day >= first,
            daily_ticket_counts.c.day <= last,
        )
    )
    return {row.day: row.tickets_created for row in rows}
