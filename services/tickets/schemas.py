"""Request and response models of the tickets API."""

from datetime import datetime
from enum import StrEnum
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Priority(StrEnum):
    low = "low"
    medium = "medium"
    high = "high"
    urgent = "urgent"


class TicketCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    subject: str = Field(min_length=1, max_length=500)
    description: str = Field(default="", max_length=100_000)
    priority: Priority = Priority.medium
    category: str | None = Field(default=None, min_length=1, max_length=100)

    @field_validator("subject", "description", "category")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        # PostgreSQL text cannot hold NUL; reject it as bad input instead of failing on insert.
        if value is not None and "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value


class TicketRead(BaseModel):
    id: UUID
    number: int
    subject: str
    description: str
    status: str
    priority: Priority
    category: str | None
    requester_id: str
    assignee_id: str | None
    created_at: datetime
    updated_at: datetime
    version: int
