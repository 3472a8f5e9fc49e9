"""Events the summarization service publishes (payloads of the CloudEvents `data` field)."""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, Field

SERVICE = "summarization"
STREAM = "SUMMARIZATION"


class SummaryCompleted(BaseModel):
    """`summarization.<tenant>.summary.completed`: a ticket's AI summary is ready.

    Consumers keep the one with the newest `created_at` per ticket: events may arrive out of order.
    """

    ticket_id: UUID
    summary: str
    key_points: list[str] = Field(default_factory=list)
    suggested_category: str | None = None
    suggested_priority: Literal["low", "medium", "high", "urgent"] | None = None
    confidence: float = Field(ge=0, le=1)
    provider: str = Field(description="e.g. `extractive` or `openai`")
    model: str
    created_at: AwareDatetime


# (aggregate, event) -> payload model: the published contract (JSON Schemas, AsyncAPI).
EVENTS = {
    ("summary", "completed"): SummaryCompleted,
}
