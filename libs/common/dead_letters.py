"""A service's dead letters for the tenant's admins: list them, and replay one once its cause is
fixed (a bug deployed away, a missing row created)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

import structlog
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import Table, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from libs.common.auth import Identity, require_roles
from libs.common.consumer import Subscription, envelope_mismatch, handler_key, record_in_inbox, run_handlers
from libs.common.db import SessionDep
from libs.common.errors import ProblemError, problem_response
from libs.common.events import CloudEvent
from libs.common.metrics import DEAD_LETTERS_REPLAYED
from libs.common.pagination import (
    CursorQuery,
    LimitQuery,
    Page,
    decode_cursor,
    encode_cursor,
    malformed_cursor,
)

log = structlog.get_logger()


# Ids are positive bigints: anything else names no dead letter (and would fail in the driver).
DeadLetterId = Annotated[int, Path(ge=1, lt=2**63)]


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
    replayed_at: datetime | None
    replayed_by: str | None


def dead_letters_router(
    public_prefix: str, table: Table, *, inbox: Table, subscriptions: list[Subscription]
) -> APIRouter:
    """`GET <public_prefix>/dead-letters` and `POST <public_prefix>/dead-letters/{id}/replay`,
    e.g. /api/v1/summaries/dead-letters."""
    router = APIRouter(prefix=public_prefix, tags=["dead letters"])
    by_stream = {subscription.stream: subscription for subscription in subscriptions}

    @router.get("/dead-letters", response_model=Page[DeadLetterRead])
    async def list_dead_letters(
        session: SessionDep,
        identity: Identity = require_roles("admin"),
        limit: LimitQuery = 50,
        cursor: CursorQuery = None,
        replayed: Annotated[
            bool | None, Query(description="Only replayed (true) or waiting (false) ones")
        ] = None,
    ) -> dict[str, Any]:
        """Events this service gave up on after its maximum deliveries, newest first (admins)."""
        query = select(table).where(table.c.tenant_id == identity.tenant).order_by(table.c.id.desc())
        if replayed is not None:
            query = query.where(
                table.c.replayed_at.is_not(None) if replayed else table.c.replayed_at.is_(None)
            )
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

    @router.post(
        "/dead-letters/{dead_letter_id}/replay",
        response_model=DeadLetterRead,
        responses={409: {"description": "Already replayed, not replayable, or the handler failed again"}},
    )
    async def replay_dead_letter(
        request: Request,
        dead_letter_id: DeadLetterId,
        session: SessionDep,
        identity: Identity = require_roles("admin"),
    ) -> dict[str, Any] | JSONResponse:
        """Handle a dead-lettered event again, as its consumer would (admins): its effect and the
        mark of the replay commit together, and an event already handled is not applied twice.
        If the handler fails again, nothing of it is kept, the dead letter's `error` shows the new
        failure and the answer is a 409."""
        row = await _lock(session, table, identity.tenant, dead_letter_id)
        subscription = by_stream.get(row["stream"])
        key = handler_key(row["subject"])
        if subscription is None or not (key in subscription.handlers or key in subscription.batch_handlers):
            raise _not_replayable(dead_letter_id, f"this service no longer handles {key!r} events")
        if row["payload"] is None:  # its `raw` text shows what arrived
            raise _not_replayable(dead_letter_id, "its message is not a valid CloudEvent")
        event = CloudEvent.model_validate(row["payload"])
        if (mismatch := envelope_mismatch(row["subject"], event)) is not None:
            raise _not_replayable(dead_letter_id, f"its envelope does not match its subject: {mismatch}")
        try:
            async with session.begin_nested():
                if await record_in_inbox(inbox, session, [(row["subject"], event)]):
                    await run_handlers(subscription, session, [(row["subject"], event)])
                # else: handled since (re-published and consumed), so not applied twice
        except Exception as exc:
            error = repr(exc)
            await session.execute(
                update(table).where(table.c.id == dead_letter_id).values(error=error[:4000])
            )
            log.warning("dead_letter_replay_failed", dead_letter_id=dead_letter_id, error=error)
            # Returned, not raised: the request's transaction then keeps the new error.
            return problem_response(
                409,
                "Conflict",
                f"dead letter {dead_letter_id}: the handler failed again (see its error)",
                type_="https://helpdesk.dev/problems/replay-failed",
            )
        replayed = {"replayed_at": datetime.now(UTC), "replayed_by": identity.user_id}
        await session.execute(update(table).where(table.c.id == dead_letter_id).values(**replayed))
        DEAD_LETTERS_REPLAYED.labels(request.app.state.settings.service_name, row["stream"]).inc()
        log.info("dead_letter_replayed", dead_letter_id=dead_letter_id, event_id=str(event.id))
        return {**row, **replayed}

    return router


async def _lock(session: AsyncSession, table: Table, tenant: str, dead_letter_id: int) -> dict[str, Any]:
    """The tenant's dead letter, locked (a concurrent replay waits, then finds it replayed)."""
    row = (
        (
            await session.execute(
                select(table)
                .where(table.c.id == dead_letter_id, table.c.tenant_id == tenant)
                .with_for_update()
            )
        )
        .mappings()
        .first()
    )
    if row is None:
        raise ProblemError(404, "Not Found", f"dead letter {dead_letter_id} not found")
    if row["replayed_at"] is not None:
        detail = f"dead letter {dead_letter_id} was replayed at {row['replayed_at'].isoformat()}"
        raise ProblemError(409, "Conflict", detail)
    return dict(row)


def _not_replayable(dead_letter_id: int, reason: str) -> ProblemError:
    return ProblemError(409, "Conflict", f"dead letter {dead_letter_id} cannot be replayed: {reason}")
