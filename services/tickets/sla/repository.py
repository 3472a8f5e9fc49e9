"""Every SLA query: policies, the tenant calendar, and the breach scan. No commits.

Each query filters by tenant explicitly as well as through row-level security.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal
from uuid import UUID

from sqlalchemy import ColumnElement, Select, and_, bindparam, delete, func, or_, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from libs.common.db import fetch_all, rows_as_dicts
from services.tickets.models import sla_policies, sla_retargets, tenant_settings, tickets

POLICY_COLUMNS = [
    sla_policies.c.priority,
    sla_policies.c.first_response_minutes,
    sla_policies.c.resolution_minutes,
    sla_policies.c.business_hours_only,
    sla_policies.c.pause_while_pending,
    sla_policies.c.created_at,
]
CALENDAR_COLUMNS = [
    tenant_settings.c.time_zone,
    tenant_settings.c.business_hours,
    tenant_settings.c.holidays,
]
# Written as literal SQL so the planner can match the partial indexes of migration 0004
# (a bound parameter list would hide the implication from generic plans).
_NOT_FINISHED = text("status_category NOT IN ('resolved', 'closed')")


async def get_policy(session: AsyncSession, tenant: str, priority: str) -> dict[str, Any] | None:
    result = await session.execute(
        select(*POLICY_COLUMNS).where(sla_policies.c.tenant_id == tenant, sla_policies.c.priority == priority)
    )
    rows = rows_as_dicts(result)
    return rows[0] if rows else None


# Every ticket create and priority change reads this: built once, run as a prepared statement.
_POLICY_AND_CALENDAR = (
    select(*POLICY_COLUMNS, tenant_settings.c.tenant_id.label("calendar_tenant"), *CALENDAR_COLUMNS)
    .select_from(sla_policies)
    .outerjoin(tenant_settings, tenant_settings.c.tenant_id == sla_policies.c.tenant_id)
    .where(sla_policies.c.tenant_id == bindparam("tenant"), sla_policies.c.priority == bindparam("priority"))
)


async def get_policy_and_calendar(
    session: AsyncSession, tenant: str, priority: str
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The priority's policy and the tenant's calendar in one round trip (ticket writes call this)."""
    rows = await fetch_all(session, _POLICY_AND_CALENDAR, tenant=tenant, priority=priority)
    return policy_and_calendar_of(rows[0]) if rows else (None, None)


def policy_and_calendar_of(row: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The policy and calendar of a row with POLICY_COLUMNS, `calendar_tenant` and CALENDAR_COLUMNS
    (from an outer join: a missing policy's columns are NULL)."""
    if row["priority"] is None:
        return None, None
    policy = {column.name: row[column.name] for column in POLICY_COLUMNS}
    calendar = (
        {column.name: row[column.name] for column in CALENDAR_COLUMNS} if row["calendar_tenant"] else None
    )
    return policy, calendar


async def list_policies(session: AsyncSession, tenant: str) -> list[dict[str, Any]]:
    # Priority order low..urgent, as people read it.
    rank = text("CASE priority WHEN 'low' THEN 1 WHEN 'medium' THEN 2 WHEN 'high' THEN 3 ELSE 4 END")
    result = await session.execute(
        select(*POLICY_COLUMNS).where(sla_policies.c.tenant_id == tenant).order_by(rank)
    )
    return rows_as_dicts(result)


async def upsert_policy(
    session: AsyncSession, tenant: str, priority: str, values: dict[str, Any]
) -> dict[str, Any]:
    statement = insert(sla_policies).values(tenant_id=tenant, priority=priority, **values)
    statement = statement.on_conflict_do_update(
        index_elements=[sla_policies.c.tenant_id, sla_policies.c.priority], set_=values
    ).returning(*POLICY_COLUMNS)
    return rows_as_dicts(await session.execute(statement))[0]


async def delete_policy(session: AsyncSession, tenant: str, priority: str) -> bool:
    result = await session.execute(
        delete(sla_policies)
        .where(sla_policies.c.tenant_id == tenant, sla_policies.c.priority == priority)
        .returning(sla_policies.c.priority)
    )
    return result.first() is not None


async def get_calendar(session: AsyncSession, tenant: str) -> dict[str, Any] | None:
    result = await session.execute(select(*CALENDAR_COLUMNS).where(tenant_settings.c.tenant_id == tenant))
    rows = rows_as_dicts(result)
    return rows[0] if rows else None


async def upsert_calendar(
    session: AsyncSession, tenant: str, time_zone: str, business_hours: dict[str, Any], holidays: list[date]
) -> dict[str, Any]:
    values = {"time_zone": time_zone, "business_hours": business_hours, "holidays": holidays}
    statement = (
        insert(tenant_settings)
        .values(tenant_id=tenant, **values)
        .on_conflict_do_update(index_elements=[tenant_settings.c.tenant_id], set_=values)
        .returning(*CALENDAR_COLUMNS)
    )
    return rows_as_dicts(await session.execute(statement))[0]


RETARGET_COLUMNS = [
    sla_retargets.c.id,
    sla_retargets.c.priorities,
    sla_retargets.c.requested_by,
    sla_retargets.c.open_tickets,
    sla_retargets.c.tickets_updated,
    sla_retargets.c.after_id,
    sla_retargets.c.created_at,
    sla_retargets.c.finished_at,
    sla_retargets.c.failures,
    sla_retargets.c.next_attempt_at,
    sla_retargets.c.cancelled_at,
    sla_retargets.c.cancelled_by,
]


async def insert_retarget(session: AsyncSession, values: dict[str, Any]) -> dict[str, Any]:
    statement = insert(sla_retargets).values(**values).returning(*RETARGET_COLUMNS)
    return rows_as_dicts(await session.execute(statement))[0]


async def get_retarget(
    session: AsyncSession, tenant: str, retarget_id: UUID, *, for_update: bool = False
) -> dict[str, Any] | None:
    """One retarget; `for_update` locks it, waiting for a batch being moved to commit."""
    statement = select(*RETARGET_COLUMNS).where(
        sla_retargets.c.tenant_id == tenant, sla_retargets.c.id == retarget_id
    )
    rows = rows_as_dicts(await session.execute(statement.with_for_update() if for_update else statement))
    return rows[0] if rows else None


async def list_retargets(
    session: AsyncSession, tenant: str, *, limit: int, before: tuple[datetime, UUID] | None
) -> list[dict[str, Any]]:
    """Newest first; one row more than `limit` tells the caller a next page exists."""
    conditions = [sla_retargets.c.tenant_id == tenant]
    if before is not None:
        conditions.append(tuple_(sla_retargets.c.created_at, sla_retargets.c.id) < tuple_(*before))
    result = await session.execute(
        select(*RETARGET_COLUMNS)
        .where(*conditions)
        .order_by(sla_retargets.c.created_at.desc(), sla_retargets.c.id.desc())
        .limit(limit + 1)
    )
    return rows_as_dicts(result)


async def claim_retarget(session: AsyncSession, tenant: str) -> dict[str, Any] | None:
    """The tenant's oldest unfinished retarget due for its next batch, locked; None if there is
    none or another replica holds it (SKIP LOCKED: it is being worked on)."""
    result = await session.execute(
        select(*RETARGET_COLUMNS)
        .where(
            sla_retargets.c.tenant_id == tenant,
            sla_retargets.c.finished_at.is_(None),
            or_(sla_retargets.c.next_attempt_at.is_(None), sla_retargets.c.next_attempt_at <= func.now()),
        )
        .order_by(sla_retargets.c.created_at, sla_retargets.c.id)
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    rows = rows_as_dicts(result)
    return rows[0] if rows else None


async def update_retarget(
    session: AsyncSession, tenant: str, retarget_id: UUID, values: dict[str, Any]
) -> None:
    await session.execute(
        update(sla_retargets)
        .where(sla_retargets.c.tenant_id == tenant, sla_retargets.c.id == retarget_id)
        .values(**values)
    )


async def tenants_with_retargets(session: AsyncSession) -> list[str]:
    """The tenants with an unfinished retarget due for its next batch (the function of migrations
    0010 and 0011, as for breaches)."""
    statement = text("SELECT tickets.tenants_with_sla_retargets() AS tenant_id ORDER BY 1")
    result = await session.execute(statement)
    return list(result.scalars())


async def tenants_with_due_breaches(session: AsyncSession, now: datetime) -> list[str]:
    """The tenants with a breach to announce at `now`, in one query over every tenant's deadlines
    (migration 0007's function; a transaction scoped to no tenant sees no tickets itself)."""
    result = await session.execute(
        text("SELECT tickets.tenants_with_due_sla_breaches(:now) AS tenant_id ORDER BY 1"), {"now": now}
    )
    return list(result.scalars())


BreachKind = Literal["first_response", "resolution"]


def _breach_condition(kind: BreachKind, now: datetime) -> tuple[ColumnElement[bool], Any, Any]:
    """(where clause, deadline column, marker column) of one breach kind."""
    c = tickets.c
    common = [c.sla_paused_at.is_(None), c.deleted_at.is_(None), _NOT_FINISHED]
    if kind == "first_response":
        where = and_(
            c.first_response_due_at < now,
            c.first_responded_at.is_(None),
            c.first_response_breached_at.is_(None),
            *common,
        )
        return where, c.first_response_due_at, c.first_response_breached_at
    where = and_(c.due_at < now, c.resolution_breached_at.is_(None), *common)
    return where, c.due_at, c.resolution_breached_at


def breach_candidates(tenant: str, kind: BreachKind, now: datetime, limit: int) -> Select:
    """Ids of tickets breaching `kind` at `now`, oldest deadline first, locked (skipping locked rows)."""
    where, deadline, _ = _breach_condition(kind, now)
    return (
        select(tickets.c.id)
        .where(tickets.c.tenant_id == tenant, where)
        .order_by(deadline)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )


async def mark_breaches(
    session: AsyncSession, tenant: str, kind: BreachKind, now: datetime, limit: int
) -> list[dict[str, Any]]:
    """Claim up to `limit` tickets breaching `kind` at `now`, mark them, return them (after update).

    Rows are claimed with FOR UPDATE SKIP LOCKED, and a row marked by a concurrent scan fails
    the re-checked condition, so each breach is marked (and announced) by exactly one scan.
    """
    where, _, marker = _breach_condition(kind, now)
    claimed = breach_candidates(tenant, kind, now, limit).scalar_subquery()
    statement = (
        update(tickets)
        .where(tickets.c.tenant_id == tenant, tickets.c.id.in_(claimed), where)
        .values({marker.name: now})
        .returning(*tickets.c)
    )
    return rows_as_dicts(await session.execute(statement))
