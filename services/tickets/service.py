"""Ticket business rules. Takes a session, records events in the outbox, never commits."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, NoReturn
from uuid import UUID

import structlog
from pydantic import BaseModel
from pydantic_core import to_json
from sqlalchemy.ext.asyncio import AsyncSession

from libs.common.auth import Identity
from libs.common.errors import ProblemError, invalid_field
from libs.common.events import CloudEvent, build_event
from libs.common.ids import new_id
from libs.common.outbox import record_event, record_events
from services.tickets import repository, search
from services.tickets.events import (
    SERVICE,
    CommentAdded,
    FieldChange,
    TicketAssigned,
    TicketCreated,
    TicketDeleted,
    TicketMerged,
    TicketRestored,
    TicketStatusChanged,
    TicketUpdated,
    snapshot,
)
from services.tickets.models import outbox
from services.tickets.richtext import html_to_text
from services.tickets.schemas import (
    MAX_TAGS,
    REQUESTER_UPDATE_FIELDS,
    STAFF_ONLY_CREATE_FIELDS,
    BulkUpdate,
    CommentCreate,
    StatusUpdate,
    TicketCreate,
    TicketUpdate,
)
from services.tickets.sla import repository as sla_repository
from services.tickets.sla import service as sla
from services.tickets.workflow import Status, StatusCategory, Workflow

log = structlog.get_logger()

STAFF_ROLES = ("agent", "admin", "service")
REOPENED_BY_REQUESTER_REPLY = ("pending", "resolved")
# Fields whose changes are recorded in the history and announced in ticket.updated.
TRACKED_FIELDS = (
    "subject",
    "description",
    "status",
    "priority",
    "category",
    "type",
    "location",
    "building",
    "floor",
    "room",
    "requester_name",
    "requester_email",
    "assignee_id",
    "group_id",
    "tags",
    "custom_fields",
    "watchers",
    "parent_id",
    "due_at",
    "first_response_due_at",
    "first_responded_at",
    "resolved_at",
    "closed_at",
    "merged_into_id",
    "deleted_at",
)


def is_staff(identity: Identity) -> bool:
    return identity.has_any(*STAFF_ROLES)


def own_requester_id(identity: Identity) -> str | None:
    """Requesters see only what they requested; agents, admins and services see the tenant's."""
    return None if is_staff(identity) else identity.user_id


def _not_found(ticket_id: UUID | str) -> ProblemError:
    return ProblemError(404, "Not Found", f"ticket {ticket_id} not found")


def _forbidden(detail: str) -> ProblemError:
    return ProblemError(403, "Forbidden", detail, type_="https://helpdesk.dev/problems/forbidden")


def _merged(ticket: dict[str, Any]) -> ProblemError:
    """A merged ticket stays closed: its conversation goes on in the ticket it was merged into."""
    return ProblemError(
        409,
        "Conflict",
        f"ticket #{ticket['number']} was merged into ticket {ticket['merged_into_id']}; work on that one",
        type_="https://helpdesk.dev/problems/merged",
        merged_into_id=str(ticket["merged_into_id"]),
    )


def _visible(ticket: dict[str, Any] | None, identity: Identity, *, include_deleted: bool = False) -> bool:
    if ticket is None:
        return False
    if ticket["deleted_at"] is not None and not (include_deleted and identity.has_any("admin")):
        return False
    return is_staff(identity) or ticket["requester_id"] == identity.user_id


async def load_workflow(session: AsyncSession, tenant_id: str) -> Workflow:
    rows = await repository.list_statuses(session, tenant_id)
    return Workflow(
        [
            Status(row["key"], row["name"], StatusCategory(row["category"]), False, row["position"])
            for row in rows
        ]
    )


async def update_status(session: AsyncSession, tenant_id: str, key: str, data: StatusUpdate) -> Status:
    """Rename a status or move it within its category; a built-in one can only be renamed."""
    current = (await load_workflow(session, tenant_id)).get(key)
    if current is None:
        raise ProblemError(404, "Not Found", f"status {key!r} not found")
    changes = data.model_dump(exclude_unset=True)
    if current.builtin:
        if "position" in changes:
            raise invalid_field(f"built-in status {key!r} keeps its place, first in its category", "position")
        values = {"key": key, "name": changes["name"], "category": current.category.value, "position": 0}
        await repository.name_builtin_status(session, tenant_id, values)
    else:
        await repository.update_status(session, tenant_id, key, changes)
    return replace(current, **changes)


async def _check_category(session: AsyncSession, tenant_id: str, category: str | None) -> None:
    """A tenant that defined categories gets only those; a tenant without a list takes any key."""
    if category is None or await repository.category_allowed(session, tenant_id, category):
        return
    await _unknown_category(session, tenant_id, category)


async def _unknown_category(session: AsyncSession, tenant_id: str, category: str | None) -> NoReturn:
    defined = sorted(row["key"] for row in await repository.list_categories(session, tenant_id))
    raise invalid_field(f"unknown category {category!r}; defined: {defined}", "category")


async def _check_parent(
    session: AsyncSession, tenant_id: str, ticket_id: str | None, parent_id: UUID | None
) -> None:
    if parent_id is None:
        return
    if ticket_id is not None and str(parent_id) == ticket_id:
        raise invalid_field("a ticket cannot be its own parent", "parent_id")
    if ticket_id is not None:
        # Re-linking an existing ticket: one at a time per tenant, so two concurrent changes
        # (X under Y, Y under X) cannot each pass the walk below and form a cycle together.
        await repository.serialize_parent_changes(session, tenant_id)
    seen = {ticket_id}
    current: str | None = str(parent_id)
    while current is not None:  # walk up: the new parent must exist and not descend from this ticket
        parent = await repository.get_ticket(session, tenant_id, current)
        # The new parent must be a live ticket; an ancestor further up may be deleted.
        if parent is None or (current == str(parent_id) and parent["deleted_at"] is not None):
            raise invalid_field(f"parent ticket {parent_id} not found", "parent_id")
        if current in seen:
            raise invalid_field("parent links may not form a cycle", "parent_id")
        seen.add(current)
        current = parent["parent_id"]


def _event(tenant: str, aggregate: str, event: str, aggregate_id: str, data: BaseModel):
    return build_event(
        service=SERVICE, tenant=tenant, aggregate=aggregate, event=event, aggregate_id=aggregate_id, data=data
    )


async def _record(
    session: AsyncSession, tenant: str, aggregate: str, event: str, aggregate_id: str, data: BaseModel
) -> None:
    subject, envelope = _event(tenant, aggregate, event, aggregate_id, data)
    await record_event(session, outbox, subject, envelope)


# -- create and read ---------------------------------------------------------------------------


# The rules of recent creates per (tenant, priority), with their SLA calendar, kept between
# requests: a create then needs no round trip to read them. Never trusted blindly: the INSERT
# writes only while the rows they came from are unchanged, else they are read again.
_KNOWN_RULES: OrderedDict[tuple[str, str], tuple[repository.NewTicketRules, sla.Targets]] = OrderedDict()
_KNOWN_RULES_KEPT = 4096
# Rules read afresh that fail their INSERT again mean an admin is changing them at this moment.
_CREATE_ATTEMPTS = 3


async def _new_ticket_rules(
    session: AsyncSession, tenant: str, category: str | None, priority: str
) -> tuple[repository.NewTicketRules, sla.Targets]:
    rules = await repository.new_ticket_rules(session, tenant, category, priority)
    if rules is None:
        await _unknown_category(session, tenant, category)
    known = rules, (rules.policy, sla.business_calendar(rules.policy, rules.calendar))
    _KNOWN_RULES[(tenant, priority)] = known
    _KNOWN_RULES.move_to_end((tenant, priority))
    if len(_KNOWN_RULES) > _KNOWN_RULES_KEPT:
        _KNOWN_RULES.popitem(last=False)
    return known


async def create_ticket(session: AsyncSession, identity: Identity, data: TicketCreate) -> dict[str, Any]:
    if not is_staff(identity):
        restricted = sorted(STAFF_ONLY_CREATE_FIELDS & data.model_fields_set)
        if restricted:
            raise _forbidden(f"requesters cannot set: {', '.join(restricted)}")
    tenant = identity.tenant
    await _check_parent(session, tenant, None, data.parent_id)
    now = datetime.now(UTC)
    priority = data.priority.value
    values = data.model_dump(mode="python")
    values.update(
        id=new_id(),
        tenant_id=tenant,
        number=0,  # the INSERT takes it from the tenant's sequence, and puts it in the event too
        status="open",
        status_category="open",
        priority=priority,
        requester_id=data.requester_id or identity.user_id,
        search_terms=search.search_terms_of(f"{data.subject} {data.description}"),
        created_at=now,
        updated_at=now,
    )
    known = _KNOWN_RULES.get((tenant, priority))
    for _ in range(_CREATE_ATTEMPTS):
        if known is None:
            known = await _new_ticket_rules(session, tenant, data.category, priority)
        rules, targets = known
        values.update(sla.new_ticket_deadlines(targets, now))
        payload = TicketCreated(
            ticket_id=values["id"], **{k: v for k, v in values.items() if k in TicketCreated.model_fields}
        )
        subject, event = _event(tenant, "ticket", "created", str(values["id"]), payload)
        created = await repository.insert_ticket(session, values, rules, subject, event)
        if created is not None:
            return created
        known = None  # the rules changed since they were read, or the category is not allowed
    raise ProblemError(
        503,
        "Service Unavailable",
        "the tenant's SLA settings changed during the create; try again",
        headers={"Retry-After": "1"},
    )


async def get_ticket(session: AsyncSession, identity: Identity, ticket_id: UUID) -> dict[str, Any]:
    ticket = await repository.get_ticket(session, identity.tenant, ticket_id)
    if not _visible(ticket, identity, include_deleted=True):
        raise _not_found(ticket_id)
    return ticket


async def list_tickets(
    session: AsyncSession,
    identity: Identity,
    filters: repository.TicketFilters,
    sort: repository.Sort,
    *,
    limit: int,
    after: list[Any] | None,
) -> list[dict[str, Any]]:
    if filters.deleted and not identity.has_any("admin"):
        raise _forbidden("only admins list deleted tickets")
    return await repository.list_tickets(
        session,
        identity.tenant,
        filters,
        sort,
        limit=limit,
        after=after,
        own_requester_id=own_requester_id(identity),
    )


async def list_split_matches(
    session: AsyncSession,
    identity: Identity,
    filters: repository.TicketFilters,
    *,
    limit: int,
    exclude_ids: list[str],
) -> list[dict[str, Any]]:
    """After `list_tickets` of the same search (which checked the caller may list)."""
    return await repository.list_split_matches(
        session,
        identity.tenant,
        filters,
        limit=limit,
        exclude_ids=exclude_ids,
        own_requester_id=own_requester_id(identity),
    )


async def similar_tickets(session: AsyncSession, identity: Identity, ticket_id: UUID) -> list[dict[str, Any]]:
    """Possible duplicates: open tickets of the tenant like this one, at the same location."""
    if not is_staff(identity):
        raise _forbidden("duplicate hints are for agents and admins")
    ticket = await get_ticket(session, identity, ticket_id)
    return await repository.similar_tickets(session, identity.tenant, ticket)


# -- changes -----------------------------------------------------------------------------------


def _workflow_timestamps(ticket: dict[str, Any], new: Status, now: datetime) -> dict[str, Any]:
    """Resolved/closed times follow the status; reopening clears them."""
    changes: dict[str, Any] = {"status": new.key, "status_category": new.category.value}
    if new.category is StatusCategory.resolved:
        changes["resolved_at"] = ticket["resolved_at"] or now
        changes["closed_at"] = None
    elif new.category is StatusCategory.closed:
        changes["resolved_at"] = ticket["resolved_at"] or now
        changes["closed_at"] = now
    else:
        changes["resolved_at"] = None
        changes["closed_at"] = None
    return changes


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    return value


async def _apply_changes(
    session: AsyncSession,
    identity: Identity,
    ticket: dict[str, Any],
    requested: dict[str, Any],
    workflow: Workflow,
    now: datetime,
) -> dict[str, Any]:
    """Validate and write `requested` column changes on a locked ticket, with history and events."""
    changes = await _planned_changes(session, identity, ticket, requested, workflow, now)
    if not changes:
        return repository.client_view(ticket)
    return (await _write_changes(session, identity, [(ticket, changes)], now))[0]


async def _planned_changes(
    session: AsyncSession,
    identity: Identity,
    ticket: dict[str, Any],
    requested: dict[str, Any],
    workflow: Workflow,
    now: datetime,
) -> dict[str, Any]:
    """The column changes `requested` makes on a locked ticket, with what the workflow and the SLA
    add (timestamps, deadlines), once checked; empty when nothing changes. Writes nothing."""
    tenant = identity.tenant
    changes = {
        field: value
        for field, value in requested.items()
        if _json_value(value) != _json_value(ticket.get(field))
    }
    if "status" in changes:
        if ticket["merged_into_id"] is not None:
            raise _merged(ticket)
        new_status = await _held_status(session, tenant, workflow, changes["status"])
        current_category = StatusCategory(ticket["status_category"])
        if not workflow.can_move(ticket["status"], new_status.key, current_category):
            allowed = workflow.allowed_next(ticket["status"], current_category)
            raise ProblemError(
                409,
                "Conflict",
                f"cannot move ticket #{ticket['number']} from {ticket['status']!r} to {new_status.key!r}; "
                f"allowed next: {', '.join(allowed)}",
                type_="https://helpdesk.dev/problems/invalid-transition",
                ticket_id=ticket["id"],
                current_status=ticket["status"],
                allowed_next_statuses=allowed,
            )
        changes.update(_workflow_timestamps(ticket, new_status, now))
    if "category" in changes:
        await _check_category(session, tenant, changes["category"])
    if "parent_id" in changes:
        await _check_parent(session, tenant, ticket["id"], changes["parent_id"])
    if not changes:
        return {}
    after = {**ticket, **changes}
    if "subject" in changes or "description" in changes:
        changes["search_terms"] = search.search_terms_of(f"{after['subject']} {after['description']}")
    changes.update(await sla.deadline_changes(session, tenant, ticket, after, now))
    return {
        field: value
        for field, value in changes.items()
        if _json_value(value) != _json_value(ticket.get(field))
    }


async def _held_status(session: AsyncSession, tenant: str, workflow: Workflow, key: str) -> Status:
    """The status tickets move into, held until commit (a tenant's own is locked KEY SHARE, so it
    cannot be removed meanwhile); 422 if the tenant has no such status."""
    status = workflow.get(key)
    held = session.info.setdefault(_HELD_STATUSES, set())
    if status is None:
        raise invalid_field(f"unknown status {key!r}", "status")
    if not status.builtin and key not in held:
        if not await repository.lock_status(session, tenant, key):
            raise invalid_field(f"unknown status {key!r}", "status")
        held.add(key)
    return status


# Key in `session.info` (one session per transaction): the tenant statuses its transaction holds,
# so a bulk move into one locks it once. No savepoint is rolled back around a status move.
_HELD_STATUSES = "held_statuses"


async def _write_changes(
    session: AsyncSession,
    identity: Identity,
    planned: list[tuple[dict[str, Any], dict[str, Any]]],
    now: datetime,
) -> list[dict[str, Any]]:
    """Write each (locked ticket, its column changes) with history and events; the updated
    tickets. Three round trips however many tickets: the updates, the history, the events."""
    writes = [(ticket["id"], {**changes, "updated_at": now}) for ticket, changes in planned]
    updated = await repository.update_tickets(session, identity.tenant, writes)
    history: list[dict[str, Any]] = []
    events: list[tuple[str, CloudEvent]] = []
    for (ticket, changes), after in zip(planned, updated, strict=True):
        entries, announced = _change_records(identity, ticket, after, changes, now)
        history += entries
        events += announced
    await repository.insert_history(session, history)
    await record_events(session, outbox, events)
    return updated


def _history_entry(
    identity: Identity, ticket_id: str, field: str, old: Any, new: Any, now: datetime
) -> dict[str, Any]:
    return {
        "id": new_id(),
        "tenant_id": identity.tenant,
        "ticket_id": UUID(ticket_id),
        "actor_id": identity.user_id,
        "field": field,
        "old_value": _json_value(old),
        "new_value": _json_value(new),
        "created_at": now,
    }


def _change_records(
    identity: Identity,
    before: dict[str, Any],
    after: dict[str, Any],
    changes: dict[str, Any],
    now: datetime,
) -> tuple[list[dict[str, Any]], list[tuple[str, CloudEvent]]]:
    """A change's history entries and events: ticket.updated, then ticket.status_changed and
    ticket.assigned when those moved."""
    tenant, ticket_id = identity.tenant, after["id"]
    tracked = {
        field: FieldChange(old=_json_value(before[field]), new=_json_value(after[field]))
        for field in changes
        if field in TRACKED_FIELDS
    }
    history = [_history_entry(identity, ticket_id, field, c.old, c.new, now) for field, c in tracked.items()]
    events: list[tuple[str, CloudEvent]] = []
    if not tracked:
        return history, events
    state = snapshot(after)

    def announce(event: str, data: BaseModel) -> None:
        events.append(_event(tenant, "ticket", event, ticket_id, data))

    announce(
        "updated",
        TicketUpdated(ticket_id=ticket_id, actor_id=identity.user_id, changes=tracked, ticket=state),
    )
    if "status" in tracked:
        announce(
            "status_changed",
            TicketStatusChanged(
                ticket_id=ticket_id,
                actor_id=identity.user_id,
                old_status=before["status"],
                new_status=after["status"],
                old_category=before["status_category"],
                new_category=after["status_category"],
                ticket=state,
            ),
        )
    if "assignee_id" in tracked or "group_id" in tracked:
        announce(
            "assigned",
            TicketAssigned(
                ticket_id=ticket_id,
                actor_id=identity.user_id,
                old_assignee_id=before["assignee_id"],
                new_assignee_id=after["assignee_id"],
                old_group_id=before["group_id"],
                new_group_id=after["group_id"],
                ticket=state,
            ),
        )
    return history, events


async def _lock_visible(session: AsyncSession, identity: Identity, ticket_id: UUID) -> dict[str, Any]:
    rows = await repository.lock_tickets(session, identity.tenant, [ticket_id])
    ticket = rows[0] if rows else None
    if not _visible(ticket, identity):
        raise _not_found(ticket_id)
    return ticket


def etag(ticket: dict[str, Any]) -> str:
    """`W/"<version>"`, or `W/"<version>-<summary stamp>"` once an AI summary is stored.

    A summary changes what a read returns without bumping the version (see summaries.py), so a
    cached copy validated by the version alone would keep an old summary. `If-Match` compares
    only the version: an edit never fails because an AI finished meanwhile.
    """
    summary = ticket.get("summary")
    if not summary:
        return f'W/"{ticket["version"]}"'
    stamp = hashlib.blake2b(to_json(summary), digest_size=4).hexdigest()
    return f'W/"{ticket["version"]}-{stamp}"'


async def update_ticket(
    session: AsyncSession,
    identity: Identity,
    ticket_id: UUID,
    data: TicketUpdate,
    expected_versions: frozenset[int],
) -> dict[str, Any]:
    """Apply `data` if the ticket's version is one of `expected_versions` (If-Match), else 412."""
    ticket = await _lock_visible(session, identity, ticket_id)
    if ticket["version"] not in expected_versions:
        sent = ", ".join(f'W/"{version}"' for version in sorted(expected_versions))
        raise ProblemError(
            412,
            "Precondition Failed",
            f"ticket changed since you read it (version {ticket['version']}, If-Match {sent}); "
            "read it again and retry",
            type_="https://helpdesk.dev/problems/stale-version",
            headers={"ETag": etag(ticket)},
        )
    requested = {field: getattr(data, field) for field in data.model_fields_set}
    if not is_staff(identity):
        restricted = sorted(set(requested) - REQUESTER_UPDATE_FIELDS)
        if restricted:
            raise _forbidden(f"requesters cannot change: {', '.join(restricted)}")
    if "priority" in requested:
        requested["priority"] = requested["priority"].value
    workflow = await load_workflow(session, identity.tenant)
    return await _apply_changes(session, identity, ticket, requested, workflow, datetime.now(UTC))


async def bulk_update(session: AsyncSession, identity: Identity, data: BulkUpdate) -> list[dict[str, Any]]:
    """All tickets change in one transaction, or none do; each changed ticket gets its own events."""
    if not is_staff(identity):
        raise _forbidden("only agents and admins update tickets in bulk")
    ids = list(dict.fromkeys(data.ids))
    rows = {row["id"]: row for row in await repository.lock_tickets(session, identity.tenant, ids)}
    missing = [str(ticket_id) for ticket_id in ids if not _visible(rows.get(str(ticket_id)), identity)]
    if missing:
        raise ProblemError(404, "Not Found", f"tickets not found: {', '.join(missing)}", missing_ids=missing)
    workflow = await load_workflow(session, identity.tenant)
    now = datetime.now(UTC)
    planned: dict[str, dict[str, Any]] = {}
    for ticket_id in ids:
        ticket = rows[str(ticket_id)]
        requested: dict[str, Any] = {}
        for field in ("status", "assignee_id"):
            if field in data.model_fields_set:
                requested[field] = getattr(data, field)
        if data.priority is not None:
            requested["priority"] = data.priority.value
        if data.tags is not None or data.add_tags or data.remove_tags:
            tags = list(data.tags) if data.tags is not None else list(ticket["tags"])
            tags += [tag for tag in data.add_tags or [] if tag not in tags]
            requested["tags"] = [tag for tag in tags if tag not in set(data.remove_tags or [])]
            if len(requested["tags"]) > MAX_TAGS:  # add_tags would otherwise grow a ticket without bound
                count = len(requested["tags"])
                detail = f"ticket #{ticket['number']} would get {count} tags (at most {MAX_TAGS})"
                raise invalid_field(detail, "tags")
        planned[ticket["id"]] = await _planned_changes(session, identity, ticket, requested, workflow, now)
    changed = [(rows[ticket_id], changes) for ticket_id, changes in planned.items() if changes]
    updated = {ticket["id"]: ticket for ticket in await _write_changes(session, identity, changed, now)}
    return [updated.get(ticket_id) or repository.client_view(rows[ticket_id]) for ticket_id in planned]


async def retarget_open_tickets(
    session: AsyncSession, identity: Identity, priorities: list[str], *, max_tickets: int
) -> tuple[int, dict[str, Any] | None]:
    """After an admin changed SLA policies or the calendar (in this transaction): give the
    tenant's open tickets of `priorities` the deadlines the current targets set, each change with
    history and a `ticket.updated` event. Deadlines count from each ticket's creation, paused
    time credited; one now in the past is announced as a breach by the next scan.

    Up to `max_tickets` open tickets move here, in the admin's transaction: returns (how many
    changed, None). More are left to the SLA scheduler, which moves them in batches of its own
    (`continue_retarget`): returns (0, the queued retarget), committed with the change itself."""
    if not priorities:
        return 0, None
    concerned = await repository.count_open_tickets(session, identity.tenant, priorities)
    if concerned > max_tickets:
        queued = await sla_repository.insert_retarget(
            session,
            {
                "id": new_id(),
                "tenant_id": identity.tenant,
                "priorities": priorities,
                "requested_by": identity.user_id,
                "open_tickets": concerned,
            },
        )
        return 0, sla.retarget_view(queued)
    changed, _, _ = await _retarget_batch(session, identity, priorities)
    return changed, None


async def continue_retarget(session: AsyncSession, tenant: str, batch_size: int) -> bool:
    """Move the next batch of open tickets of the tenant's oldest unfinished retarget (in the
    caller's transaction, scoped to `tenant`) and record how far it got; the batch and that mark
    commit together, so a crash repeats nothing and skips nothing. A batch that fails is undone
    and the retarget put off (`sla.retarget_retry_delay`), so its tenant's other retargets go on.
    False when no retarget is due (or each is being worked on by another replica)."""
    job = await sla_repository.claim_retarget(session, tenant)
    if job is None:
        return False
    # Changes are the admin's who asked for them (history, events).
    identity = Identity(tenant=tenant, user_id=job["requested_by"], roles=frozenset({"admin"}))
    try:
        async with session.begin_nested():
            changed, seen, last_id = await _retarget_batch(
                session, identity, job["priorities"], after_id=job["after_id"], limit=batch_size
            )
    except Exception as exc:  # whatever broke the batch: retried later, never lost
        failures = job["failures"] + 1
        next_attempt_at = datetime.now(UTC) + sla.retarget_retry_delay(failures)
        put_off = {"failures": failures, "next_attempt_at": next_attempt_at}
        await sla_repository.update_retarget(session, tenant, job["id"], put_off)
        log.error(
            "sla_retarget_failed",
            tenant=tenant,
            retarget_id=str(job["id"]),
            failures=failures,
            next_attempt_at=next_attempt_at.isoformat(),
            error=repr(exc),
        )
        return True
    progress: dict[str, Any] = {
        "tickets_updated": job["tickets_updated"] + changed,
        "failures": 0,
        "next_attempt_at": None,
    }
    if last_id is not None:
        progress["after_id"] = last_id
    if seen < batch_size:
        progress["finished_at"] = datetime.now(UTC)
    await sla_repository.update_retarget(session, tenant, job["id"], progress)
    return True


async def _retarget_batch(
    session: AsyncSession,
    identity: Identity,
    priorities: list[str],
    *,
    after_id: UUID | None = None,
    limit: int | None = None,
) -> tuple[int, int, UUID | None]:
    """(tickets changed, tickets looked at, id of the last one) of one locked batch."""
    tenant, now = identity.tenant, datetime.now(UTC)
    batch = await repository.lock_open_tickets(session, tenant, priorities, after_id=after_id, limit=limit)
    planned = []
    for ticket in batch:
        if changes := await sla.current_deadline_changes(session, tenant, ticket, now):
            planned.append((ticket, changes))
    await _write_changes(session, identity, planned, now)
    return len(planned), len(batch), UUID(str(batch[-1]["id"])) if batch else None


# -- comments ----------------------------------------------------------------------------------


async def add_comment(
    session: AsyncSession, identity: Identity, ticket_id: UUID, data: CommentCreate
) -> dict[str, Any]:
    ticket = await _lock_visible(session, identity, ticket_id)
    if data.visibility == "internal" and not is_staff(identity):
        raise _forbidden("requesters cannot write internal notes")
    if ticket["merged_into_id"] is not None:
        raise _merged(ticket)
    body = html_to_text(data.body) if data.content_type == "text/html" else data.body
    if not body.strip():
        raise invalid_field("the comment is empty (after removing HTML)", "body")
    now = datetime.now(UTC)
    comment = await repository.insert_comment(
        session,
        {
            "id": new_id(),
            "tenant_id": identity.tenant,
            "ticket_id": UUID(ticket["id"]),
            "author_id": identity.user_id,
            "visibility": data.visibility,
            "body": body,
            "search_terms": search.search_terms_of(body),
            "created_at": now,
        },
    )
    requested: dict[str, Any] = {}
    # The first public reply by staff to someone else's ticket is the first response (SLA).
    if (
        data.visibility == "public"
        and is_staff(identity)
        and identity.user_id != ticket["requester_id"]
        and ticket["first_responded_at"] is None
    ):
        requested["first_responded_at"] = now
    # A requester answering a ticket that waits on them (or was resolved) puts it back in the queue.
    if not is_staff(identity) and ticket["status_category"] in REOPENED_BY_REQUESTER_REPLY:
        requested["status"] = StatusCategory.open.value
    if requested:
        workflow = await load_workflow(session, identity.tenant) if "status" in requested else Workflow([])
        updated = await _apply_changes(session, identity, ticket, requested, workflow, now)
    else:
        updated = await repository.update_ticket(session, identity.tenant, ticket["id"], {"updated_at": now})
    await _record(
        session,
        identity.tenant,
        "comment",
        "added",
        comment["id"],
        CommentAdded(
            comment_id=comment["id"],
            ticket_id=ticket["id"],
            author_id=identity.user_id,
            visibility=data.visibility,
            body=body,
            created_at=now,
            ticket=snapshot(updated),
        ),
    )
    return comment


async def list_comments(
    session: AsyncSession,
    identity: Identity,
    ticket_id: UUID,
    *,
    limit: int,
    after: tuple[datetime, UUID] | None,
) -> list[dict[str, Any]]:
    await get_ticket(session, identity, ticket_id)
    return await repository.list_comments(
        session, identity.tenant, str(ticket_id), public_only=not is_staff(identity), limit=limit, after=after
    )


async def list_history(
    session: AsyncSession,
    identity: Identity,
    ticket_id: UUID,
    *,
    limit: int,
    after: tuple[datetime, UUID] | None,
) -> list[dict[str, Any]]:
    await get_ticket(session, identity, ticket_id)
    if not is_staff(identity):
        raise _forbidden("the change history is for agents and admins")
    return await repository.list_history(session, identity.tenant, str(ticket_id), limit=limit, after=after)


# -- merge, delete, restore --------------------------------------------------------------------


async def merge_ticket(
    session: AsyncSession,
    identity: Identity,
    ticket_id: UUID,
    into_id: UUID,
    *,
    keep_public_comments: bool = False,
) -> dict[str, Any]:
    """Move the ticket's comments and attachments to `into_id`, close it and point it there.

    Between tickets of different requesters the target's requester would see the other's
    replies and files: the public replies become internal notes and the attachments not on a
    comment stay on the merged ticket (which agents still reach), unless `keep_public_comments`.
    """
    if not is_staff(identity):
        raise _forbidden("only agents and admins merge tickets")
    if ticket_id == into_id:
        raise invalid_field("a ticket cannot be merged into itself", "into_ticket_id")
    rows = {
        row["id"]: row
        for row in await repository.lock_tickets(session, identity.tenant, [ticket_id, into_id])
    }
    source, target = rows.get(str(ticket_id)), rows.get(str(into_id))
    if not _visible(source, identity):
        raise _not_found(ticket_id)
    if not _visible(target, identity):
        raise invalid_field(f"target ticket {into_id} not found", "into_ticket_id")
    for ticket in (source, target):
        if ticket["merged_into_id"] is not None:
            raise ProblemError(
                409,
                "Conflict",
                f"ticket #{ticket['number']} is already merged into {ticket['merged_into_id']}",
            )
    now = datetime.now(UTC)
    private = source["requester_id"] != target["requester_id"] and not keep_public_comments
    made_internal = (
        await repository.make_comments_internal(session, identity.tenant, source["id"]) if private else 0
    )
    moved = await repository.move_comments(session, identity.tenant, source["id"], target["id"])
    await repository.move_attachments(
        session, identity.tenant, source["id"], target["id"], only_on_comments=private
    )
    changes = {
        **_workflow_timestamps(source, Workflow([]).get("closed"), now),
        "merged_into_id": target["id"],
    }
    merged = await repository.update_ticket(
        session, identity.tenant, source["id"], {**changes, "updated_at": now}
    )
    await repository.update_ticket(session, identity.tenant, target["id"], {"updated_at": now})
    history = [
        _history_entry(identity, source["id"], field, source[field], merged[field], now)
        for field in changes
        if field in TRACKED_FIELDS and _json_value(source[field]) != _json_value(merged[field])
    ]
    # The target's history says what came into it (its conversation grew by the source's).
    history.append(_history_entry(identity, target["id"], "merged_from", None, source["id"], now))
    await repository.insert_history(session, history)
    await _record(
        session,
        identity.tenant,
        "ticket",
        "merged",
        source["id"],
        TicketMerged(
            ticket_id=source["id"],
            into_ticket_id=target["id"],
            actor_id=identity.user_id,
            moved_comments=moved,
            made_internal=made_internal,
            ticket=snapshot(merged),
        ),
    )
    return merged


async def delete_ticket(session: AsyncSession, identity: Identity, ticket_id: UUID) -> None:
    if not identity.has_any("admin"):
        raise _forbidden("only admins delete tickets")
    ticket = await _lock_visible(session, identity, ticket_id)
    # Read after the lock: a merge into this ticket that committed meanwhile is seen.
    merged = await repository.merged_into(session, identity.tenant, ticket["id"])
    if merged:
        numbers = ", ".join(f"#{number}" for number in merged)
        raise ProblemError(
            409,
            "Conflict",
            f"tickets {numbers} were merged into this one and point at it; delete them first",
            type_="https://helpdesk.dev/problems/merge-target",
            merged_tickets=merged,
        )
    now = datetime.now(UTC)
    deleted = await repository.update_ticket(
        session, identity.tenant, ticket["id"], {"deleted_at": now, "updated_at": now}
    )
    await repository.insert_history(
        session, [_history_entry(identity, ticket["id"], "deleted_at", None, now, now)]
    )
    await _record(
        session,
        identity.tenant,
        "ticket",
        "deleted",
        ticket["id"],
        TicketDeleted(
            ticket_id=ticket["id"], actor_id=identity.user_id, deleted_at=now, ticket=snapshot(deleted)
        ),
    )


async def restore_ticket(session: AsyncSession, identity: Identity, ticket_id: UUID) -> dict[str, Any]:
    if not identity.has_any("admin"):
        raise _forbidden("only admins restore tickets")
    rows = await repository.lock_tickets(session, identity.tenant, [ticket_id])
    if not rows:
        raise _not_found(ticket_id)
    ticket = rows[0]
    if ticket["deleted_at"] is None:
        raise ProblemError(409, "Conflict", f"ticket {ticket_id} is not deleted")
    now = datetime.now(UTC)
    restored = await repository.update_ticket(
        session, identity.tenant, ticket["id"], {"deleted_at": None, "updated_at": now}
    )
    await repository.insert_history(
        session, [_history_entry(identity, ticket["id"], "deleted_at", ticket["deleted_at"], None, now)]
    )
    await _record(
        session,
        identity.tenant,
        "ticket",
        "restored",
        ticket["id"],
        TicketRestored(ticket_id=ticket["id"], actor_id=identity.user_id, ticket=snapshot(restored)),
    )
    return restored
