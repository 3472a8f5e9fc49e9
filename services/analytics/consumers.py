"""Handlers for the events analytics consumes."""

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from libs.common.consumer import Subscription
from libs.common.events import CloudEvent
from services.analytics import service


async def on_ticket_created(session: AsyncSession, event: CloudEvent) -> None:
    await service.count_created_ticket(
        session, event.tenant, datetime.fromisoformat(event.data["created_at"])
    )


subscriptions = [Subscription(stream="TICKETS", handlers={"ticket.created": on_ticket_created})]
