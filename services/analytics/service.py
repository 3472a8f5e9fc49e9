"""Analytics rules: how events become aggregates, and how aggregates are read."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from libs.common.errors import ProblemError
from services.analytics import repository
from services.analytics.schemas import DayCount, Overview

DEFAULT_RANGE_DAYS = 30
MAX_RANGE_DAYS = 3660


async def count_created_tickets(session: AsyncSession, created: list[tuple[str, datetime]]) -> None:
    """Count tickets, given as (tenant, created_at), on their creation day (UTC)."""
    counts = Counter((tenant_id, created_at.astimezone(UTC).date()) for tenant_id, created_at in created)
    await repository.add_created_tickets(session, counts)


async def overview(session: AsyncSession, tenant_id: str, first: date | None, last: date | None) -> Overview:
    last = last or datetime.now(UTC).date()
    # Clamped: the calendar starts at 0001-01-01 (to=0001-01-15 would step before it).
    first = first or last - timedelta(days=min(DEFAULT_RANGE_DAYS - 1, (last - date.min).days))
    if first > last:
        raise ProblemError(400, "Bad Request", "'from' must not be after 'to'")
    if (last - first).days >= MAX_RANGE_DAYS:
        raise ProblemError(400, "Bad Request", f"date range is limited to {MAX_RANGE_DAYS} days")
    counts = await repository.created_counts_by_day(session, tenant_id, first, last)
    days = [first + timedelta(days=n) for n in range((last - first).days + 1)]
    by_day = [DayCount(date=day, count=counts.get(day, 0)) for day in days]
    return Overview(tickets_created=sum(d.count for d in by_day), by_day=by_day)
