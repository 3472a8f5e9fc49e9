"""Events the tickets service publishes (payloads of the CloudEvents `data` field).

Each payload carries what consumers need (notifications write e-mails from it, analytics counts
from it), so nobody has to call the tickets service back.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel

SERVICE = "tickets"
STREAM = "TICKETS"


class TicketSnapshot(BaseModel):
    """The ticket as it is after the change."""

    ticket_id: UUID
    number: int
    subject: str
    description: str
    status: str
    status_category: str
    priority: str
    category: str | None
    type: str | None = None
    source: str = "portal"
    location: str | None = None
    building: str | None = None
    floor: str | None = None
    room: str | None = None
    requester_id: str
    requester_name: str | None = None
    requester_email: str | None = None
    assignee_id: str | None
    group_id: str | None = None
    tags: list[str] = []
    watchers: list[str] = []
    due_at: datetime | None = None
    first_response_due_at: datetime | None = None
    first_responded_at: datetime | None = None
    resolved_at: datetime | None = None
    closed_at: datetime | None = None
    created_at: datetime
    updated_at: datetime


class TicketCreated(TicketSnapshot):
    """`tickets.<tenant>.ticket.created`"""


class FieldChange(BaseModel):
    old: Any = None
    new: Any = None


class TicketUpdated(BaseModel):
    """`tickets.<tenant>.ticket.updated`: every change by a user, with old and new values."""

    ticket_id: UUID
    actor_id: str
    changes: dict[str, FieldChange]
    ticket: TicketSnapshot


class TicketStatusChanged(BaseModel):
    """`tickets.<tenant>.ticket.status_changed`"""

    ticket_id: UUID
    actor_id: str
    old_status: str
    new_status: str
    old_category: str
    new_category: str
    ticket: TicketSnapshot


class TicketAssigned(BaseModel):
    """`tickets.<tenant>.ticket.assigned`: the assignee or the group changed."""

    ticket_id: UUID
    actor_id: str
    old_assignee_id: str | None
    new_assignee_id: str | None
    old_group_id: str | None
    new_group_id: str | None
    ticket: TicketSnapshot


class CommentAdded(BaseModel):
    """`tickets.<tenant>.comment.added`"""

    comment_id: UUID
    ticket_id: UUID
    author_id: str
    visibility: Literal["public", "internal"]
    body: str
    created_at: datetime
    ticket: TicketSnapshot


class TicketMerged(BaseModel):
    """`tickets.<tenant>.ticket.merged`: `ticket_id` was merged into `into_ticket_id` and closed."""

    ticket_id: UUID
    into_ticket_id: UUID
    actor_id: str
    moved_comments: int
    # Public replies made internal notes by the move (the requesters differ).
    made_internal: int = 0
    ticket: TicketSnapshot


class TicketDeleted(BaseModel):
    """`tickets.<tenant>.ticket.deleted` (soft delete; an admin may restore it)."""

    ticket_id: UUID
    actor_id: str
    deleted_at: datetime
    ticket: TicketSnapshot


class TicketRestored(BaseModel):
    """`tickets.<tenant>.ticket.restored`"""

    ticket_id: UUID
    actor_id: str
    ticket: TicketSnapshot


class TicketSlaBreached(BaseModel):
    """`tickets.<tenant>.ticket.sla_breached`: sent once per breach and kind."""

    ticket_id: UUID
    kind: Literal["first_response", "resolution"]
    due_at: datetime
    breached_at: datetime
    ticket: TicketSnapshot


# (aggregate, event) -> payload model: the published contract (JSON Schemas, AsyncAPI).
EVENTS: dict[tuple[str, str], type[BaseModel]] = {
    ("ticket", "created"): TicketCreated,
    ("ticket", "updated"): TicketUpdated,
    ("ticket", "status_changed"): TicketStatusChanged,
    ("ticket", "assigned"): TicketAssigned,
    ("comment", "added"): CommentAdded,
    ("ticket", "merged"): TicketMerged,
    ("ticket", "deleted"): TicketDeleted,
    ("ticket", "restored"): TicketRestored,
    ("ticket", "sla_breached"): TicketSlaBreached,
}

SNAPSHOT_FIELDS = [name for name in TicketSnapshot.model_fields if name != "ticket_id"]


def snapshot(ticket: dict[str, Any]) -> TicketSnapshot:
    return TicketSnapshot(
        ticket_id=ticket["id"], **{name: ticket.get(name) for name in SNAPSHOT_FIELDS if name in ticket}
    )
