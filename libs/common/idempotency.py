"""`Idempotency-Key` for creates: the same key and body replays the first response.

The key row is inserted first in the request's transaction, so a concurrent duplicate waits on
the primary key until the first commits, then replays its stored response.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Header
from sqlalchemy import Column, DateTime, Integer, MetaData, Table, Text, func, select, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from libs.common.errors import ProblemError

# On a response replayed for a repeated key (the Stripe convention).
REPLAYED_HEADERS = {"Idempotent-Replayed": "true"}

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=r"^[\x21-\x7e]+$",
        description="Retry-safe create: the same key and body return the first response",
    ),
]


def idempotency_table(metadata: MetaData) -> Table:
    return Table(
        "idempotency_keys",
        metadata,
        Column("tenant_id", Text, primary_key=True),
        Column("key", Text, primary_key=True),
        Column("request_hash", Text, nullable=False),
        Column("status_code", Integer),
        Column("response", JSONB),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    )


@dataclass
class StoredResponse:
    status_code: int
    body: dict[str, Any]


def request_fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


async def claim_key(
    session: AsyncSession, table: Table, tenant_id: str, key: str, fingerprint: str
) -> StoredResponse | None:
    """Claim `key` for this request, or return the response stored by an earlier one."""
    claimed = await session.scalar(
        pg_insert(table)
        .values(tenant_id=tenant_id, key=key, request_hash=fingerprint)
        .on_conflict_do_nothing()
        .returning(table.c.key)
    )
    if claimed is not None:
        return None
    row = (
        await session.execute(
            select(table.c.request_hash, table.c.status_code, table.c.response).where(
                table.c.tenant_id == tenant_id, table.c.key == key
            )
        )
    ).one()
    if row.request_hash != fingerprint:
        raise ProblemError(
            422,
            "Idempotency Key Reused",
            "this Idempotency-Key was already used with a different request",
            type_="https://helpdesk.dev/problems/idempotency-key-reused",
        )
    if row.status_code is None:  # the first request failed and rolled back its claim
        raise ProblemError(409, "Conflict", "a request with this Idempotency-Key is still in progress")
    return StoredResponse(row.status_code, row.response)


async def store_response(
    session: AsyncSession, table: Table, tenant_id: str, key: str, status_code: int, body: dict[str, Any]
) -> None:
    await session.execute(
        update(table)
        .where(table.c.tenant_id == tenant_id, table.c.key == key)
        .values(status_code=status_code, response=body)
    )
