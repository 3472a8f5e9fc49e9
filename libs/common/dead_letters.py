"""Read API for a service's dead-letter table (admins of the tenant only)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from fastapi import APIRouter
from pydantic import BaseModel
from sqlalchemy import Table, select

from libs.common.auth import Identity, require_roles
from libs.common.db import SessionDep
from libs.common.pagination import (
    CursorQuery,
    LimitQuery,
    Page,
    decode_cursor,
    encode_cursor,
    malformed_cursor,
)


class DeadLetterRead(BaseModel):
    id: int
    event_id: UUID | None
    stream: str
    consumer: str
    subject: str
    payload: dict[str, Any] | None
    error: str
    deliveries: int
    created_at: datetime


def dead_letters_router(public_prefix: str, table: Table) -> APIRouter:
    """`GET <public_prefix>/dead-letters`, e.g. /api/v1/summaries/dead-letters."""
    router = APIRouter(prefix=public_prefix, tags=["dead letters"])

    @router.get("/dead-letters", response_model=Page[DeadLetterRead])
    async def list_dead_letters(
        session: SessionDep,
        identity: Identity = require_roles("admin"),
        limit: LimitQuery = 50,
        cursor: CursorQuery = None,
    ) -> dict[str, Any]:
        """Events this service gave up on after its maximum deliveries, newest first."""
        query = select(table).where(table.c.tenant_id == identity.tenant).order_by(table.c.id.desc())
        if cursor:
            (last_id,) = decode_cursor(cursor, 1)
            # bool is an int to Python; ids are positive bigints, anything else fails in the driver.
            if not isinstance(last_id, int) or isinstance(last_id, bool) or not 0 < last_id < 2**63:
                raise malformed_cursor()
            query = query.where(table.c.id < last_id)
        rows = (await session.execute(query.limit(limit + 1))).mappings().all()
        items = [dict(r) for r in rows[:limit]]
        next_cursor = encode_cursor([items[-1]["id"]]) if len(rows) > limit else None
        return {"items": items, "next_cursor": next_cursor}

    return router
