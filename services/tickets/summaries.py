"""AI summaries on tickets: the latest summary from summarization is kept on the ticket row.

The summary is a read-model annotation, not a user edit: storing it leaves `version` and
`updated_at` alone and records no event. A user's `If-Match` must not fail because an AI
finished in the meantime, "recently updated" lists must not reshuffle, and a `ticket.updated`
event would make summarization summarise the ticket again, in a loop.
"""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

import structlog
from pydantic import ValidationError, field_validator
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.tickets.models import tickets
from services.tickets.schemas import Summary

log = structlog.get_logger()


class CompletedSummary(Summary):
    """A finished summary as summarization announces it (extra fields are ignored)."""

    ticket_id: UUID
    created_at: datetime  # required here: it orders summaries

    @field_validator("created_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        return value if value.tzinfo else value.replace(tzinfo=UTC)


def _stored_created_at(stored: dict | None) -> datetime | None:
    if not stored:
        return None
    try:
        created_at = Summary.model_validate(stored).created_at
    except ValidationError:
        return None  # unreadable: any real summary replaces it
    if created_at is not None and created_at.tzinfo is None:
        created_at = created_at.replace(tzinfo=UTC)
    return created_at


async def record_summary(session: AsyncSession, tenant: str, completed: CompletedSummary) -> bool:
    """Keep `completed` on its ticket unless a newer summary is already there.

    The session must be scoped to `tenant` (row-level security). Returns whether the ticket
    changed; an unknown ticket (deleted for good, or another tenant's id) is only logged.
    """
    # The row lock orders concurrent summaries of one ticket (replicas share the consumer).
    stored = (
        await session.execute(
            select(tickets.c.summary)
            .where(tickets.c.tenant_id == tenant, tickets.c.id == completed.ticket_id)
            .with_for_update()
        )
    ).one_or_none()
    if stored is None:
        log.info("summary_for_unknown_ticket_ignored", ticket_id=str(completed.ticket_id))
        return False
    stored_at = _stored_created_at(stored.summary)
    if stored_at is not None and stored_at >= completed.created_at:
        log.info(
            "older_summary_ignored",
            ticket_id=str(completed.ticket_id),
            stored_created_at=stored_at.isoformat(),
            created_at=completed.created_at.isoformat(),
        )
        return False
    summary = Summary.model_validate(completed.model_dump(exclude={"ticket_id"}))
    await session.execute(
        update(tickets)
        .where(tickets.c.tenant_id == tenant, tickets.c.id == completed.ticket_id)
        .values(summary=summary.model_dump(mode="json"))
    )
    return True
