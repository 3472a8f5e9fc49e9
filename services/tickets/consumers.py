"""Handlers for the events the tickets service consumes."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from libs.common.consumer import Subscription
from libs.common.db import set_tenant
from libs.common.events import CloudEvent
from services.tickets import summaries


async def on_summary_completed(session: AsyncSession, event: CloudEvent) -> None:
    """`summarization.<tenant>.summary.completed`: show the newest summary on the ticket."""
    # A payload that does not validate raises: retried, then dead-lettered (visible), never lost.
    completed = summaries.CompletedSummary.model_validate(event.data)
    await set_tenant(session, event.tenant)
    await summaries.record_summary(session, event.tenant, completed)


# Durable `tickets--SUMMARIZATION`, filter `summarization.*.summary.completed`.
subscriptions = [Subscription(stream="SUMMARIZATION", handlers={"summary.completed": on_summary_completed})]
