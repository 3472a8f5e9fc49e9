"""SLA rules: deadlines of new and changed tickets, policy and calendar management, breaches.

Targets are minutes; with a policy's `business_hours_only` they count inside the tenant's
business calendar, otherwise round the clock. Pausing (`pause_while_pending`) stores when the
clock stopped; resuming pushes the open deadlines later by the business time spent paused.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from libs.common.auth import Identity
from libs.common.errors import ProblemError, invalid_field
from libs.common.events import build_event
from libs.common.outbox import record_events
from services.tickets.events import SERVICE, TicketSlaBreached, snapshot
from services.tickets.models import outbox
from services.tickets.sla import repository
from services.tickets.sla.calendar import (
    MAX_HORIZON_DAYS,
    ROUND_THE_CLOCK,
    BusinessCalendar,
    CalendarError,
    add_business_minutes,
    business_minutes_between,
    parse_business_hours,
    parse_time_zone,
)
from services.tickets.sla.repository import BreachKind
from services.tickets.sla.schemas import CalendarWrite, SlaPolicyWrite

log = structlog.get_logger()

PENDING = "pending"
DEFAULT_CALENDAR = {"time_zone": "UTC", "business_hours": {}, "holidays": []}


# -- deadlines ----------------------------------------------------------------------------------


def business_calendar(
    policy: dict[str, Any] | None, settings: dict[str, Any] | None
) -> BusinessCalendar | None:
    """The calendar a policy counts in; None = round the clock.

    A tenant with holidays but no weekly hours is open all day except on holidays.
    """
    if policy is None or not policy["business_hours_only"] or settings is None:
        return None
    hours, holidays = settings["business_hours"] or {}, settings["holidays"] or []
    if not hours and not holidays:
        return None
    try:
        zone = parse_time_zone(settings["time_zone"])
        return BusinessCalendar(zone, parse_business_hours(hours) or ROUND_THE_CLOCK, frozenset(holidays))
    except CalendarError as error:  # the API validates; only hand-edited rows get here
        log.warning("sla_calendar_invalid", field=error.field, error=error.message)
        return None


_POLICY_CACHE = "sla_policy_and_calendar"
Targets = tuple[dict[str, Any] | None, BusinessCalendar | None]  # a priority's policy and its calendar


def _forget_policies(session: AsyncSession) -> None:
    session.info.pop(_POLICY_CACHE, None)


async def policy_and_calendar(session: AsyncSession, tenant_id: str, priority: str) -> Targets:
    """The priority's SLA policy and the tenant's calendar."""
    # Kept for the transaction: a bulk update of 500 tickets reads each priority's policy once.
    cache = session.info.setdefault(_POLICY_CACHE, {})
    key = (tenant_id, priority)
    if key not in cache:
        policy, settings = await repository.get_policy_and_calendar(session, tenant_id, priority)
        cache[key] = (policy, business_calendar(policy, settings))
    return cache[key]


def _deadline(start: datetime, minutes: float, calendar: BusinessCalendar | None) -> datetime | None:
    try:
        return add_business_minutes(start, minutes, calendar)
    except CalendarError as error:  # a calendar too sparse for the target: no deadline, not a 500
        log.warning("sla_deadline_out_of_range", error=str(error))
        return None


def new_ticket_deadlines(targets: Targets, created_at: datetime) -> dict[str, datetime | None]:
    """The deadlines of a ticket created at `created_at` under a policy and its calendar."""
    policy, calendar = targets
    if policy is None:
        return {"first_response_due_at": None, "due_at": None}
    return {
        "first_response_due_at": _deadline(created_at, policy["first_response_minutes"], calendar),
        "due_at": _deadline(created_at, policy["resolution_minutes"], calendar),
    }


def _recomputed(
    created_at: datetime, minutes: int | None, calendar: BusinessCalendar | None, paused_minutes: float
) -> datetime | None:
    """A deadline counted from creation under a target, pushed later by the pause credit."""
    if minutes is None:
        return None
    deadline = _deadline(created_at, minutes, calendar)
    if deadline is None or paused_minutes <= 0:
        return deadline
    return _deadline(deadline, paused_minutes, calendar)


async def deadline_changes(
    session: AsyncSession, tenant_id: str, before: dict[str, Any], after: dict[str, Any], now: datetime
) -> dict[str, Any]:
    """Column updates caused by a ticket change (before/after are full ticket row dicts). {} when none.

    - priority changed: deadlines recomputed for the new priority from created_at (time spent
      paused still credited); a first-response target already met stays;
    - entering the pending category under a policy with pause_while_pending: {"sla_paused_at": now};
    - leaving pending while paused: due_at (and first_response_due_at if not yet responded)
      pushed later by the paused business time, {"sla_paused_at": None};
    - a deadline moved past `now` clears its breach mark, so a new breach is announced again.
    """
    priority_changed = str(after["priority"]) != str(before["priority"])
    entering_pending = after["status_category"] == PENDING and before["status_category"] != PENDING
    paused_at = before.get("sla_paused_at")
    resuming = paused_at is not None and after["status_category"] != PENDING
    if not (priority_changed or entering_pending or resuming):
        return {}
    policy, calendar = await policy_and_calendar(session, tenant_id, str(after["priority"]))
    responded = after.get("first_responded_at") is not None
    first_due, due = after.get("first_response_due_at"), after.get("due_at")
    changes: dict[str, Any] = {}

    if priority_changed:
        first_due, due = _retargeted(before, (policy, calendar))

    if entering_pending and paused_at is None and policy is not None and policy["pause_while_pending"]:
        changes["sla_paused_at"] = now
    elif resuming:
        paused = business_minutes_between(paused_at, now, calendar)
        if due is not None:
            due = _deadline(due, paused, calendar) or due
        if first_due is not None and not responded:
            first_due = _deadline(first_due, paused, calendar) or first_due
        changes["sla_paused_at"] = None
        changes["sla_paused_minutes"] = before["sla_paused_minutes"] + paused

    changes.update(_deadline_columns(before, first_due, due, now))
    return changes


def _retargeted(ticket: dict[str, Any], targets: Targets) -> tuple[datetime | None, datetime | None]:
    """(first_response_due_at, due_at) of `ticket` counted from its creation under `targets`,
    with the time its clock was paused credited; a first-response target already met stays."""
    policy, calendar = targets
    credit = ticket["sla_paused_minutes"]

    def recomputed(key: str) -> datetime | None:
        return _recomputed(ticket["created_at"], policy[key] if policy else None, calendar, credit)

    due = recomputed("resolution_minutes")
    if ticket.get("first_responded_at") is not None:
        return ticket.get("first_response_due_at"), due
    return recomputed("first_response_minutes"), due


def _deadline_columns(
    ticket: dict[str, Any], first_due: datetime | None, due: datetime | None, now: datetime
) -> dict[str, Any]:
    """Column updates for new deadlines; a deadline moved past `now` clears its breach mark."""
    changes: dict[str, Any] = {}
    for column, value, marker in (
        ("due_at", due, "resolution_breached_at"),
        ("first_response_due_at", first_due, "first_response_breached_at"),
    ):
        if value == ticket.get(column):
            continue
        changes[column] = value
        # A deadline moved into the future is a new target: its breach is announced afresh.
        if value is not None and value > now and ticket.get(marker) is not None:
            changes[marker] = None
    return changes


async def current_deadline_changes(
    session: AsyncSession, tenant_id: str, ticket: dict[str, Any], now: datetime
) -> dict[str, Any]:
    """Column updates that give an open ticket the deadlines its priority's policy and the
    calendar set now (after an admin changed them); {} when nothing moves."""
    targets = await policy_and_calendar(session, tenant_id, str(ticket["priority"]))
    first_due, due = _retargeted(ticket, targets)
    return _deadline_columns(
        ticket,
        _unless_rounding(first_due, ticket["first_response_due_at"]),
        _unless_rounding(due, ticket["due_at"]),
        now,
    )


def _unless_rounding(new: datetime | None, old: datetime | None) -> datetime | None:
    # Pushes added one by one and their sum may round a microsecond apart: not a change.
    if new is not None and old is not None and abs(new - old) < timedelta(seconds=1):
        return old
    return new


# -- policies and calendar ----------------------------------------------------------------------


async def list_policies(session: AsyncSession, tenant_id: str) -> list[dict[str, Any]]:
    return await repository.list_policies(session, tenant_id)


def _check_reachable(policy: dict[str, Any], settings: dict[str, Any] | None, field: str) -> None:
    """A 422 naming `field` if the calendar cannot supply the policy's resolution target within
    MAX_HORIZON_DAYS (say an hour a week and a year of minutes): every ticket would get no
    deadline, after walking twenty years of calendar."""
    calendar = business_calendar(policy, settings)
    if calendar is None:
        return
    try:
        add_business_minutes(datetime.now(UTC), policy["resolution_minutes"], calendar)
    except CalendarError:
        raise invalid_field(
            f"the {policy.get('priority', 'new')} policy's {policy['resolution_minutes']} business minutes"
            f" take more than {MAX_HORIZON_DAYS // 366} years of these business hours",
            field,
        ) from None


async def put_policy(
    session: AsyncSession, tenant_id: str, priority: str, data: SlaPolicyWrite
) -> dict[str, Any]:
    """Create or replace the policy of one priority (for tickets created or re-prioritised later,
    and open ones the caller retargets)."""
    values = data.model_dump()
    _check_reachable(values, await repository.get_calendar(session, tenant_id), "resolution_minutes")
    _forget_policies(session)
    return await repository.upsert_policy(session, tenant_id, priority, values)


async def delete_policy(session: AsyncSession, tenant_id: str, priority: str) -> None:
    _forget_policies(session)
    if not await repository.delete_policy(session, tenant_id, priority):
        raise ProblemError(404, "Not Found", f"no SLA policy for priority {priority!r}")


async def get_calendar(session: AsyncSession, tenant_id: str) -> dict[str, Any]:
    return await repository.get_calendar(session, tenant_id) or dict(DEFAULT_CALENDAR)


async def put_calendar(session: AsyncSession, tenant_id: str, data: CalendarWrite) -> dict[str, Any]:
    settings = {"time_zone": data.time_zone, "business_hours": data.business_hours, "holidays": data.holidays}
    for policy in await repository.list_policies(session, tenant_id):
        _check_reachable(policy, settings, "business_hours")
    _forget_policies(session)
    return await repository.upsert_calendar(
        session, tenant_id, data.time_zone, data.business_hours, data.holidays
    )


# -- retargets (open tickets moved to new targets in the background) ----------------------------


# A failing batch is tried again after these delays (the last one repeating), so a retarget
# never gives up on its own: a passing cause (a lock, an outage) costs a delay, a lasting one
# shows as `failing` until an admin cancels it. Its successes reset the count.
RETARGET_RETRY_DELAYS = (
    timedelta(minutes=1),
    timedelta(minutes=5),
    timedelta(minutes=15),
    timedelta(hours=1),
)


def retarget_retry_delay(failures: int) -> timedelta:
    """How long the retarget waits after its `failures`-th failed batch in a row."""
    return RETARGET_RETRY_DELAYS[min(failures, len(RETARGET_RETRY_DELAYS)) - 1]


def _retarget_status(row: dict[str, Any]) -> str:
    if row["cancelled_at"] is not None:
        return "cancelled"
    if row["finished_at"] is not None:
        return "done"
    if row["failures"]:
        return "failing"
    return "running" if row["after_id"] is not None else "queued"


def retarget_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "status": _retarget_status(row),
        "priorities": row["priorities"],
        "open_tickets": row["open_tickets"],
        "tickets_updated": row["tickets_updated"],
        "requested_by": row["requested_by"],
        "created_at": row["created_at"],
        "finished_at": row["finished_at"],
        "failures": row["failures"],
        "next_attempt_at": row["next_attempt_at"],
        "cancelled_at": row["cancelled_at"],
        "cancelled_by": row["cancelled_by"],
    }


def _retarget_not_found(retarget_id: UUID) -> ProblemError:
    return ProblemError(404, "Not Found", f"SLA retarget {retarget_id} not found")


async def get_retarget(session: AsyncSession, tenant_id: str, retarget_id: UUID) -> dict[str, Any]:
    row = await repository.get_retarget(session, tenant_id, retarget_id)
    if row is None:
        raise _retarget_not_found(retarget_id)
    return retarget_view(row)


async def list_retargets(
    session: AsyncSession, tenant_id: str, *, limit: int, before: tuple[datetime, UUID] | None
) -> list[dict[str, Any]]:
    rows = await repository.list_retargets(session, tenant_id, limit=limit, before=before)
    return [retarget_view(row) for row in rows]


async def cancel_retarget(session: AsyncSession, identity: Identity, retarget_id: UUID) -> dict[str, Any]:
    """Stop a background retarget: tickets already moved keep their new deadlines, the rest keep
    their old ones. Waits for a batch being moved to commit; cancelling twice changes nothing."""
    row = await repository.get_retarget(session, identity.tenant, retarget_id, for_update=True)
    if row is None:
        raise _retarget_not_found(retarget_id)
    if row["cancelled_at"] is None:
        if row["finished_at"] is not None:
            raise ProblemError(409, "Conflict", f"SLA retarget {retarget_id} is already done")
        now = datetime.now(UTC)
        changes = {"finished_at": now, "cancelled_at": now, "cancelled_by": identity.user_id}
        await repository.update_retarget(session, identity.tenant, retarget_id, changes)
        row = {**row, **changes}
    return retarget_view(row)


# -- breaches -----------------------------------------------------------------------------------

BREACH_KINDS: tuple[BreachKind, ...] = ("first_response", "resolution")


async def announce_breaches(session: AsyncSession, tenant_id: str, now: datetime, limit: int) -> int:
    """Mark up to `limit` breaches per kind in the tenant and record one `ticket.sla_breached` each.

    The session must already be scoped to the tenant; marks and events commit together.
    """
    announced = 0
    for kind in BREACH_KINDS:
        events = []
        for row in await repository.mark_breaches(session, tenant_id, kind, now, limit):
            deadline = row["first_response_due_at"] if kind == "first_response" else row["due_at"]
            payload = TicketSlaBreached(
                ticket_id=row["id"], kind=kind, due_at=deadline, breached_at=now, ticket=snapshot(row)
            )
            events.append(
                build_event(
                    service=SERVICE,
                    tenant=tenant_id,
                    aggregate="ticket",
                    event="sla_breached",
                    aggregate_id=str(row["id"]),
                    data=payload,
                )
            )
            # Debug: after downtime a scan can announce thousands; the scheduler logs a count per tenant.
            log.debug("sla_breached", tenant=tenant_id, ticket_id=str(row["id"]), kind=kind)
        await record_events(session, outbox, events)  # one statement for the batch
        announced += len(events)
    return announced
