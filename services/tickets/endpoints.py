"""Tickets HTTP API: parse, call the service, shape the response."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from fastapi import APIRouter, status
from fastapi.responses import JSONResponse

from libs.common.auth import IdentityDep
from libs.common.db import SessionDep
from libs.common.errors import ProblemError
from libs.common.idempotency import IdempotencyKeyHeader, claim_key, request_fingerprint, store_response
from libs.common.pagination import CursorQuery, LimitQuery, Page, decode_cursor, encode_cursor
from libs.common.responses import FastJSONResponse, jsonable
from services.tickets import service
from services.tickets.models import idempotency_keys
from services.tickets.schemas import TicketCreate, TicketRead

router = APIRouter(prefix="/api/v1/tickets", tags=["tickets"])


def etag(ticket: dict[str, Any]) -> str:
    return f'W/"{ticket["version"]}"'


@router.post("", status_code=status.HTTP_201_CREATED, response_model=TicketRead)
async def create_ticket(
    data: TicketCreate,
    session: SessionDep,
    identity: IdentityDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JSONResponse:
    """Create a ticket. With `Idempotency-Key`, a retry with the same body replays the first response."""
    if idempotency_key:
        fingerprint = request_fingerprint(
            "POST /api/v1/tickets", identity.user_id, data.model_dump(mode="json")
        )
        stored = await claim_key(session, idempotency_keys, identity.tenant, idempotency_key, fingerprint)
        if stored is not None:
            return JSONResponse(
                stored.body,
                status_code=stored.status_code,
                headers={"Idempotent-Replayed": "true", "Location": f"/api/v1/tickets/{stored.body['id']}"},
            )
    ticket = await service.create_ticket(session, identity, data)
    if idempotency_key:
        await store_response(
            session, idempotency_keys, identity.tenant, idempotency_key, 201, jsonable(ticket)
        )
    return FastJSONResponse(
        ticket, status_code=201, headers={"Location": f"/api/v1/tickets/{ticket['id']}", "ETag": etag(ticket)}
    )


@router.get("/{ticket_id}", response_model=TicketRead)
async def get_ticket(ticket_id: UUID, session: SessionDep, identity: IdentityDep) -> FastJSONResponse:
    """One ticket of the caller's tenant (requesters: only their own)."""
    ticket = await service.get_ticket(session, identity, ticket_id)
    return FastJSONResponse(ticket, headers={"ETag": etag(ticket)})


def _parse_cursor(cursor: str) -> tuple[datetime, UUID]:
    created_at, ticket_id = decode_cursor(cursor, 2)
    try:
        return datetime.fromisoformat(created_at), UUID(ticket_id)
    except (TypeError, ValueError):
        raise ProblemError(400, "Bad Request", "malformed cursor") from None


@router.get("", response_model=Page[TicketRead])
async def list_tickets(
    session: SessionDep,
    identity: IdentityDep,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
) -> FastJSONResponse:
    """Tickets of the caller's tenant, newest first, cursor-paginated."""
    after = _parse_cursor(cursor) if cursor else None
    rows = await service.list_tickets(session, identity, limit=limit, after=after)
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        next_cursor = encode_cursor([last["created_at"].isoformat(), str(last["id"])])
    return FastJSONResponse({"items": rows, "next_cursor": next_cursor})
