"""Events the tickets service publishes (payloads of the CloudEvents `data` field)."""

from datetime import datetime
from uuid import UUID

from pydantic import BaseModel

SERVICE = "tickets"
STREAM = "TICKETS"


class TicketCreated(BaseModel):
    """`tickets.<tenant>.ticket.created`"""

    ticket_id: UUID
    number: int
    subject: str
    description: str
    status: str
    priority: str
    category: str | None
    requester_id: str
    assignee_id: str | None
    created_at: datetime
    updated_at: datetime
