"""Request and response models of the SLA API. Requests reject unknown fields."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from services.tickets.schemas import Priority
from services.tickets.sla.calendar import (
    CalendarError,
    format_business_hours,
    parse_business_hours,
    parse_time_zone,
)

# One year of round-the-clock minutes: the longest target a policy may set.
MAX_TARGET_MINUTES = 525_600
MAX_HOLIDAYS = 1000


class SlaPolicyWrite(BaseModel):
    """Targets for one priority. With `business_hours_only` the minutes count only inside the
    tenant's business hours (holidays skipped); with `pause_while_pending` the clock stops while
    the ticket's status is in the pending category."""

    model_config = ConfigDict(extra="forbid")

    first_response_minutes: int = Field(ge=1, le=MAX_TARGET_MINUTES)
    resolution_minutes: int = Field(ge=1, le=MAX_TARGET_MINUTES)
    business_hours_only: bool = False
    pause_while_pending: bool = False

    @model_validator(mode="after")
    def _resolution_after_first_response(self) -> SlaPolicyWrite:
        if self.resolution_minutes < self.first_response_minutes:
            raise ValueError("resolution_minutes must be at least first_response_minutes")
        return self


class SlaPolicyRead(BaseModel):
    priority: Priority
    first_response_minutes: int
    resolution_minutes: int
    business_hours_only: bool
    pause_while_pending: bool
    created_at: datetime


OPEN_TICKETS_UPDATED = (
    "How many open tickets got new deadlines in this request (with `apply_to_open_tickets=true`; "
    "0 when they are moved in the background, see `retarget`)."
)
RETARGET = (
    "With `apply_to_open_tickets=true` and more open tickets than the service moves in one "
    "request (`HELPDESK_SLA_RETARGET_MAX_TICKETS`): the background job moving them, else null."
)


class SlaRetarget(BaseModel):
    """Open tickets being moved to new SLA targets in the background, batch by batch.

    `status`: `queued`, `running`, `failing` (its last batch failed and was undone; it is tried
    again at `next_attempt_at`), `done`, or `cancelled` (by an admin; tickets moved until then
    keep their new deadlines)."""

    id: UUID
    status: Literal["queued", "running", "failing", "done", "cancelled"]
    priorities: list[Priority]
    open_tickets: int = Field(description="Open tickets concerned when the change was saved.")
    tickets_updated: int = Field(description="Tickets whose deadlines changed so far.")
    requested_by: str = Field(description="The admin who made the change (actor of each change).")
    created_at: datetime
    finished_at: datetime | None = Field(description="When it was done or cancelled.")
    failures: int = Field(description="Batches in a row that failed (0 after one succeeds).")
    next_attempt_at: datetime | None = Field(description="While failing: when its next batch may start.")
    cancelled_at: datetime | None
    cancelled_by: str | None = Field(description="The admin who cancelled it.")


class SlaPolicyPut(SlaPolicyRead):
    open_tickets_updated: int = Field(description=OPEN_TICKETS_UPDATED)
    retarget: SlaRetarget | None = Field(description=RETARGET)


class SlaPolicyList(BaseModel):
    items: list[SlaPolicyRead]


def _calendar_field(error: CalendarError) -> ValueError:
    return ValueError(error.message if error.field.split(".")[0] == error.field else str(error))


class CalendarWrite(BaseModel):
    """The tenant's business calendar, in its own time zone.

    `business_hours`: weekday (mon..sun) -> list of ["HH:MM", "HH:MM"] intervals (end may be
    "24:00"; a missing day is closed). Empty means round the clock. `holidays`: local dates."""

    model_config = ConfigDict(extra="forbid")

    time_zone: str = Field(default="UTC", examples=["Asia/Seoul"])
    business_hours: dict[str, Any] = Field(
        default_factory=dict,
        examples=[{"mon": [["09:00", "12:00"], ["13:00", "18:00"]], "tue": [["09:00", "18:00"]]}],
    )
    holidays: list[date] = Field(default_factory=list, max_length=MAX_HOLIDAYS)

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            parse_time_zone(value)
        except CalendarError as error:
            raise _calendar_field(error) from None
        return value

    @field_validator("business_hours")
    @classmethod
    def _valid_hours(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            return format_business_hours(parse_business_hours(value))
        except CalendarError as error:
            raise _calendar_field(error) from None

    @field_validator("holidays")
    @classmethod
    def _sorted_holidays(cls, value: list[date]) -> list[date]:
        return sorted(set(value))


class CalendarRead(BaseModel):
    time_zone: str
    business_hours: dict[str, list[list[str]]]
    holidays: list[date]


class CalendarPut(CalendarRead):
    open_tickets_updated: int = Field(description=OPEN_TICKETS_UPDATED)
    retarget: SlaRetarget | None = Field(description=RETARGET)
