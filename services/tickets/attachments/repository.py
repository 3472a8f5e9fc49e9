"""Queries of the attachments sub-domain (tickets schema; row-level security applies too)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import and_, delete, exists, insert, or_, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from libs.common.db import rows_as_dicts
from services.tickets.models import attachments, comments, tickets

# What a client sees; tenant_id and storage_key stay inside.
PUBLIC_COLUMNS = [
    attachments.c.id,
    attachments.c.ticket_id,
    attachments.c.comment_id,
    attachments.c.filename,
    attachments.c.content_type,
    attachments.c.size_bytes,
    attachments.c.sha256,
    attachments.c.uploaded_by,
    attachments.c.created_at,
]


async def ticket_is_visible(
    session: AsyncSession, tenant_id: str, ticket_id: UUID, requester_id: str | None, *, include_deleted: bool
) -> bool:
    """The ticket exists in the tenant, is not deleted (unless `include_deleted`), and (for a
    requester) is theirs."""
    conditions = [tickets.c.tenant_id == tenant_id, tickets.c.id == ticket_id]
    if not include_deleted:
        conditions.append(tickets.c.deleted_at.is_(None))
    if requester_id is not None:
        conditions.append(tickets.c.requester_id == requester_id)
    return (await session.scalar(select(tickets.c.id).where(*conditions))) is not None


async def comment_visibility(
    session: AsyncSession, tenant_id: str, ticket_id: UUID, comment_id: UUID
) -> str | None:
    """'public' or 'internal' for a comment of this ticket; None if it has no such comment."""
    query = select(comments.c.visibility).where(
        comments.c.tenant_id == tenant_id, comments.c.ticket_id == ticket_id, comments.c.id == comment_id
    )
    return await session.scalar(query)


def _visible_to_requester() -> Any:
    # Requesters never see what hangs on an internal note.
    public_comment = exists().where(
        comments.c.tenant_id == attachments.c.tenant_id,
        comments.c.id == attachments.c.comment_id,
        comments.c.visibility == "public",
    )
    return or_(attachments.c.comment_id.is_(None), public_comment)


async def insert_attachment(session: AsyncSession, values: dict[str, Any]) -> dict[str, Any]:
    result = await session.execute(insert(attachments).values(**values).returning(*PUBLIC_COLUMNS))
    return rows_as_dicts(result)[0]


async def list_attachments(
    session: AsyncSession,
    tenant_id: str,
    ticket_id: UUID,
    *,
    public_only: bool,
    limit: int,
    after: tuple[datetime, UUID] | None,
) -> list[dict[str, Any]]:
    """Oldest first (upload order); one row more than `limit` tells the caller a next page exists."""
    conditions = [attachments.c.tenant_id == tenant_id, attachments.c.ticket_id == ticket_id]
    if public_only:
        conditions.append(_visible_to_requester())
    if after is not None:
        conditions.append(tuple_(attachments.c.created_at, attachments.c.id) > tuple_(*after))
    query = (
        select(*PUBLIC_COLUMNS)
        .where(and_(*conditions))
        .order_by(attachments.c.created_at, attachments.c.id)
        .limit(limit + 1)
    )
    return rows_as_dicts(await session.execute(query))


async def get_attachment(
    session: AsyncSession, tenant_id: str, ticket_id: UUID, attachment_id: UUID, *, public_only: bool
) -> dict[str, Any] | None:
    """One attachment with its storage key."""
    conditions = [
        attachments.c.tenant_id == tenant_id,
        attachments.c.ticket_id == ticket_id,
        attachments.c.id == attachment_id,
    ]
    if public_only:
        conditions.append(_visible_to_requester())
    query = select(*PUBLIC_COLUMNS, attachments.c.storage_key).where(*conditions)
    rows = rows_as_dicts(await session.execute(query))
    return rows[0] if rows else None


async def delete_attachment(session: AsyncSession, tenant_id: str, attachment_id: UUID) -> bool:
    query = delete(attachments).where(attachments.c.tenant_id == tenant_id, attachments.c.id == attachment_id)
    return (await session.execute(query)).rowcount == 1


async def existing_attachment_ids(session: AsyncSession, tenant_id: str, ids: list[UUID]) -> set[UUID]:
    """Which of these attachment ids have a row (the orphan sweep)."""
    result = await session.execute(
        select(attachments.c.id).where(attachments.c.tenant_id == tenant_id, attachments.c.id.in_(ids))
    )
    return set(result.scalars())
