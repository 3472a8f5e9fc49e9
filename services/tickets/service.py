"""Ticket business rules. Takes a session, records events in the outbox, never commits."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncSession

from libs.common.auth import Identity
from libs.common.errors import ProblemError
from libs.common.events import build_event
from libs.common.ids import new_id
from services.tickets import repository
from services.tickets.events import SERVICE, TicketCreated
from services.tickets.schemas import TicketCreate


def _only_own_tickets(identity: Identity) -> str | None:
    """Requesters see only what they requested; agents, admins and services see the tenant's."""
    return None if identity.has_any("agent", "admin", "service") else identity.user_id


async def create_ticket(session: AsyncSession, identity: Identity, data: TicketCreate) -> dict[str, Any]:
    now = datetime.now(UTC)
    values = {
        "id": new_id(),
        "tenant_id": identity.tenant,
        "number": await repository.allocate_ticket_number(session, identity.tenant),
        "subject": data.subject,
        "description": data.description,
        "status": "open",
        "priority": data.priority.value,
        "category": data.category,
        "requester_id": identity.user_id,
        "created_at": now,
        "updated_at": now,
    }
    payload = TicketCreated(ticket_id=values["id"], assignee_id=None, **values)
    subject, event = build_event(
        service=SERVICE,
        tenant=identity.tenant,
        aggregate="ticket",
        event="created",
        aggregate_id=str(values["id"]),
        data=payload,
    )
    return await repository.insert_ticket(session, values, subject, event)


async def get_ticket(session: AsyncSession, identity: Identity, ticket_id: UUID) -> dict[str, Any]:
    ticket = await repository.get_ticket(session, identity.tenant, ticket_id, _only_own_tickets(identity))
    if ticket is None:
        raise ProblemError(404, "Not Found", f"ticket {ticket_id} not found")
    return ticket


async def list_tickets(
    session: AsyncSession, identity: Identity, *, limit: int, after: tuple[datetime, UUID] | None
) -> list[dict[str, Any]]:
    return await repository.list_tickets(
        session, identity.tenant, limit=limit, after=after, requester_id=_only_own_tickets(identity)
    )
