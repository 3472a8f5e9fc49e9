"""SLA management API: per-priority policies and the tenant's business calendar."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, BackgroundTasks, Query, Request, Response, status
from sqlalchemy.ext.asyncio import AsyncSession

from libs.common.auth import Identity, IdentityDep, require_roles
from libs.common.db import TenantSessionDep
from libs.common.pagination import CursorQuery, LimitQuery, Page, decode_time_cursor, time_page
from libs.common.responses import FastJSONResponse
from services.tickets import service as tickets_service
from services.tickets.schemas import Priority
from services.tickets.sla import service
from services.tickets.sla.scheduler import wake_scheduler
from services.tickets.sla.schemas import (
    CalendarPut,
    CalendarRead,
    CalendarWrite,
    SlaPolicyList,
    SlaPolicyPut,
    SlaPolicyWrite,
    SlaRetarget,
)

router = APIRouter(prefix="/api/v1/tickets/sla", tags=["sla"])

STAFF = require_roles("agent", "admin")
ADMIN = require_roles("admin")
ApplyToOpenTickets = Annotated[
    bool,
    Query(
        description="Also move the deadlines of the open tickets concerned to the new targets (counted "
        "from each ticket's creation, paused time still credited; each change in the ticket's history). "
        "By default existing deadlines stay as they are. Up to `HELPDESK_SLA_RETARGET_MAX_TICKETS` "
        "(2000) open tickets move within the request; more are moved by a background job, batch by "
        "batch (`retarget` in the answer; progress at `GET /api/v1/tickets/sla/retargets/{id}`)."
    ),
]


@router.get("/policies", response_model=SlaPolicyList, dependencies=[STAFF])
async def list_policies(session: TenantSessionDep, identity: IdentityDep) -> dict:
    """The tenant's SLA policies, one per priority that has one (agents and admins)."""
    return {"items": await service.list_policies(session, identity.tenant)}


@router.put("/policies/{priority}", response_model=SlaPolicyPut, dependencies=[ADMIN])
async def put_policy(
    request: Request,
    priority: Priority,
    data: SlaPolicyWrite,
    session: TenantSessionDep,
    identity: IdentityDep,
    background: BackgroundTasks,
    apply_to_open_tickets: ApplyToOpenTickets = False,
) -> dict:
    """Create or replace the policy of a priority (admins). Tickets created or re-prioritised
    afterwards get deadlines from it; open ones too with `apply_to_open_tickets=true`."""
    policy = await service.put_policy(session, identity.tenant, priority.value, data)
    updated, retarget = (0, None)
    if apply_to_open_tickets:
        updated, retarget = await _retarget(request, session, identity, [priority.value], background)
    return {**policy, "open_tickets_updated": updated, "retarget": retarget}


@router.delete(
    "/policies/{priority}",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[ADMIN],
    response_class=Response,
    responses={
        202: {
            "model": SlaRetarget,
            "description": "Deleted; the open tickets lose their deadlines in the background",
        }
    },
)
async def delete_policy(
    request: Request,
    priority: Priority,
    session: TenantSessionDep,
    identity: IdentityDep,
    background: BackgroundTasks,
    apply_to_open_tickets: ApplyToOpenTickets = False,
) -> Response:
    """Remove the policy of a priority (admins): new tickets of that priority get no deadlines,
    and with `apply_to_open_tickets=true` the open ones lose theirs (202 with the background job
    when there are too many to do within the request)."""
    await service.delete_policy(session, identity.tenant, priority.value)
    if apply_to_open_tickets:
        _, retarget = await _retarget(request, session, identity, [priority.value], background)
        if retarget is not None:
            return FastJSONResponse(
                retarget, status_code=202, headers={"Location": f"{router.prefix}/retargets/{retarget['id']}"}
            )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/calendar", response_model=CalendarRead, dependencies=[STAFF])
async def get_calendar(session: TenantSessionDep, identity: IdentityDep) -> dict:
    """The tenant's business calendar (time zone, weekly hours, holidays) used by policies with
    `business_hours_only` (agents and admins). Defaults to UTC with no hours (round the clock)."""
    return await service.get_calendar(session, identity.tenant)


@router.put("/calendar", response_model=CalendarPut, dependencies=[ADMIN])
async def put_calendar(
    request: Request,
    data: CalendarWrite,
    session: TenantSessionDep,
    identity: IdentityDep,
    background: BackgroundTasks,
    apply_to_open_tickets: ApplyToOpenTickets = False,
) -> dict:
    """Replace the tenant's business calendar (admins). Intervals of one day must not overlap;
    times are local to `time_zone` (IANA name). Existing deadlines stay as they are unless
    `apply_to_open_tickets=true` (tickets whose policy counts business hours only)."""
    calendar = await service.put_calendar(session, identity.tenant, data)
    updated, retarget = (0, None)
    if apply_to_open_tickets:
        policies = await service.list_policies(session, identity.tenant)
        counting_hours = [policy["priority"] for policy in policies if policy["business_hours_only"]]
        updated, retarget = await _retarget(request, session, identity, counting_hours, background)
    return {**calendar, "open_tickets_updated": updated, "retarget": retarget}


@router.get("/retargets", response_model=Page[SlaRetarget], dependencies=[ADMIN])
async def list_retargets(
    session: TenantSessionDep,
    identity: IdentityDep,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
) -> dict:
    """The tenant's background retargets, newest first, cursor-paginated (admins)."""
    before = decode_time_cursor(cursor) if cursor else None
    rows = await service.list_retargets(session, identity.tenant, limit=limit, before=before)
    return time_page(rows, limit)


@router.get("/retargets/{retarget_id}", response_model=SlaRetarget, dependencies=[ADMIN])
async def get_retarget(retarget_id: UUID, session: TenantSessionDep, identity: IdentityDep) -> dict:
    """How far a background retarget got (admins): its `status` and how many open tickets changed
    so far."""
    return await service.get_retarget(session, identity.tenant, retarget_id)


@router.post(
    "/retargets/{retarget_id}/cancel",
    response_model=SlaRetarget,
    dependencies=[ADMIN],
    responses={409: {"description": "The retarget is already done"}},
)
async def cancel_retarget(retarget_id: UUID, session: TenantSessionDep, identity: IdentityDep) -> dict:
    """Stop a background retarget, e.g. one that keeps failing (admins). Tickets it moved keep
    their new deadlines, the others keep their old ones; a batch being moved finishes first.
    Cancelling a cancelled retarget answers the same again; a done one is a 409."""
    return await service.cancel_retarget(session, identity, retarget_id)


async def _retarget(
    request: Request,
    session: AsyncSession,
    identity: Identity,
    priorities: list[str],
    background: BackgroundTasks,
) -> tuple[int, dict[str, Any] | None]:
    """`apply_to_open_tickets`: the open tickets of `priorities` get the current targets, here or,
    when there are many, in the background (see `retarget_open_tickets`)."""
    max_tickets = request.app.state.settings.sla_retarget_max_tickets
    updated, retarget = await tickets_service.retarget_open_tickets(
        session, identity, priorities, max_tickets=max_tickets
    )
    if retarget is not None:
        # Background tasks run once the response is sent, after the request's transaction
        # committed: the scheduler's pass then sees the retarget.
        background.add_task(wake_scheduler, request.app)
    return updated, retarget
