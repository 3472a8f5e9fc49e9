"""SLA deadlines (interim: round-the-clock targets; the SLA work replaces this module)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.tickets.models import sla_policies


async def deadlines_for_new_ticket(
    session: AsyncSession, tenant_id: str, priority: str, created_at: datetime
) -> dict[str, datetime | None]:
    query = select(sla_policies.c.first_response_minutes, sla_policies.c.resolution_minutes).where(
        sla_policies.c.tenant_id == tenant_id, sla_policies.c.priority == priority
    )
    policy = (await session.execute(query)).first()
    if policy is None:
        return {"first_response_due_at": None, "due_at": None}
    return {
        "first_response_due_at": created_at + timedelta(minutes=policy.first_response_minutes),
        "due_at": created_at + timedelta(minutes=policy.resolution_minutes),
    }


async def deadline_changes(
    session: AsyncSession, tenant_id: str, before: dict[str, Any], after: dict[str, Any], now: datetime
) -> dict[str, Any]:
    return {}
