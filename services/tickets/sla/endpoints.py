"""SLA management API: per-priority policies and the tenant's business calendar."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from libs.common.auth import IdentityDep, require_roles
from libs.common.db import TenantSessionDep
from services.tickets.schemas import Priority
from services.tickets.sla import service
from services.tickets.sla.schemas import (
    CalendarRead,
    CalendarWrite,
    SlaPolicyList,
    SlaPolicyRead,
    SlaPolicyWrite,
)

router = APIRouter(prefix="/api/v1/tickets/sla", tags=["sla"])

STAFF = require_roles("agent", "admin")
ADMIN = require_roles("admin")


@router.get("/policies", response_model=SlaPolicyList, dependencies=[STAFF])
async def list_policies(session: TenantSessionDep, identity: IdentityDep) -> dict:
    """The tenant's SLA policies, one per priority that has one (agents and admins)."""
    return {"items": await service.list_policies(session, identity.tenant)}


@router.put("/policies/{priority}", response_model=SlaPolicyRead, dependencies=[ADMIN])
async def put_policy(
    priority: Priority, data: SlaPolicyWrite, session: TenantSessionDep, identity: IdentityDep
) -> dict:
    """Create or replace the policy of a priority (admins). Tickets created or re-prioritised
    afterwards get deadlines from it; existing deadlines stay as they are."""
    return await service.put_policy(session, identity.tenant, priority.value, data)


@router.delete(
    "/policies/{priority}",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[ADMIN],
    response_class=Response,
)
async def delete_policy(priority: Priority, session: TenantSessionDep, identity: IdentityDep) -> Response:
    """Remove the policy of a priority (admins): new tickets of that priority get no deadlines."""
    await service.delete_policy(session, identity.tenant, priority.value)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/calendar", response_model=CalendarRead, dependencies=[STAFF])
async def get_calendar(session: TenantSessionDep, identity: IdentityDep) -> dict:
    """The tenant's business calendar (time zone, weekly hours, holidays) used by policies with
    `business_hours_only` (agents and admins). Defaults to UTC with no hours (round the clock)."""
    return await service.get_calendar(session, identity.tenant)


@router.put("/calendar", response_model=CalendarRead, dependencies=[ADMIN])
async def put_calendar(data: CalendarWrite, session: TenantSessionDep, identity: IdentityDep) -> dict:
    """Replace the tenant's business calendar (admins). Intervals of one day must not overlap;
    times are local to `time_zone` (IANA name). Existing deadlines stay as they are."""
    return await service.put_calendar(session, identity.tenant, data)
