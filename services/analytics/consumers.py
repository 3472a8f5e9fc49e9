"""Handlers for the events analytics consumes."""

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from libs.common.consumer import Subscription
from libs.common.events import CloudEvent
from services.analytics import service


async def on_tickets_created(session: AsyncSession, events: list[CloudEvent]) -> None:
    created = [(event.tenant, datetime.fromisoformat(event.data["created_at"])) for event in events]
    await service.count_created_tickets(session, created)


subscriptions = [Subscription(stream="TICKETS", batch_handlers={"ticket.created": on_tickets_created})]
