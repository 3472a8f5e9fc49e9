"""Plain helpers for ticket API tests (factories and readers)."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx

from libs.common.db import plain_dsn


async def create_ticket(
    client: httpx.AsyncClient, headers: dict[str, str], **overrides: Any
) -> dict[str, Any]:
    body = {"subject": "Printer on floor 2 is jammed", **overrides}
    response = await client.post("/api/v1/tickets", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


async def patch_ticket(
    client: httpx.AsyncClient, headers: dict[str, str], ticket: dict[str, Any], **changes: Any
) -> httpx.Response:
    """PATCH with the ticket's current version as If-Match."""
    return await client.patch(
        f"/api/v1/tickets/{ticket['id']}",
        json=changes,
        headers={**headers, "If-Match": f'W/"{ticket["version"]}"'},
    )


async def admin_fetch(infra, sql: str, *args: Any) -> list[asyncpg.Record]:
    """Read as the database owner (bypasses row-level security): for assertions only."""
    conn = await asyncpg.connect(plain_dsn(infra.admin_url))
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def outbox_types(infra, aggregate_id: str) -> list[str]:
    rows = await admin_fetch(
        infra,
        "SELECT payload->>'type' AS type FROM tickets.outbox WHERE aggregate_id = $1 ORDER BY id",
        aggregate_id,
    )
    return [row["type"] for row in rows]
