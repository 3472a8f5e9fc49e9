"""Request and response models of the tickets API. Requests reject unknown fields."""

from __future__ import annotations

import json
import unicodedata
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from services.tickets.workflow import StatusCategory

MAX_TAGS = 50
MAX_WATCHERS = 100
MAX_CUSTOM_FIELDS = 50
MAX_CUSTOM_FIELDS_DEPTH = 5
MAX_CUSTOM_FIELDS_BYTES = 16_384
BULK_MAX_IDS = 500


class Priority(StrEnum):
    low = "low"
    medium = "medium"
    high = "high"
    urgent = "urgent"


# Known channels; other lowercase codes are kept as given (imports bring their own, e.g. "freshdesk-7").
KNOWN_SOURCES = ("email", "portal", "phone", "chat", "api", "import")


def _no_nul(value: str) -> str:
    # PostgreSQL text cannot hold NUL; reject it as bad input instead of failing on insert.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def composed(value: str) -> str:
    """Text people write, as stored and as searched: in Unicode's composed form (NFC). macOS and
    some Korean input methods send Hangul decomposed; stored as sent, 세면대 typed on another
    machine would never find it, in search or in a filter. (Ids are kept as they are.)"""
    return unicodedata.normalize("NFC", value)


def _no_control_characters(value: str) -> str:
    if any(unicodedata.category(char) == "Cc" for char in value):
        raise ValueError("must not contain control characters (tabs, line breaks)")
    return value


def _visible(value: str) -> str:
    # Stripping leaves format characters (zero-width space, BOM): text of only those is empty too.
    if all(char.isspace() or unicodedata.category(char) == "Cf" for char in value):
        raise ValueError("must contain visible text")
    return value


def _text(max_length: int, min_length: int = 1) -> Any:
    checks = [AfterValidator(_no_nul), AfterValidator(composed)]
    if min_length > 0:
        checks.append(AfterValidator(_visible))
    return Annotated[
        str,
        StringConstraints(strip_whitespace=True, min_length=min_length, max_length=max_length),
        *checks,
    ]


Subject = _text(500)
Description = _text(100_000, min_length=0)
ShortText = _text(200)
Key = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,39}$")]


def tag_key(tag: str) -> str:
    """Tags are case-insensitive and kept in lowercase (as Zendesk does): `VIP` and `vip` are one
    tag, and a filter finds it however it is typed."""
    return composed(tag).lower()


Tag = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=50),
    AfterValidator(_no_nul),
    AfterValidator(_no_control_characters),
    AfterValidator(tag_key),
    AfterValidator(_visible),
]
UserId = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), AfterValidator(_no_nul)
]
Source = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9:_-]{0,39}$")]
Email = Annotated[
    str, StringConstraints(max_length=320, pattern=r"^[^@\s]+@[^@\s]+$"), AfterValidator(_no_nul)
]


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(item) for item in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(item) for item in value), default=0)
    return 0


def _check_custom_fields(value: dict[str, Any]) -> dict[str, Any]:
    if len(value) > MAX_CUSTOM_FIELDS:
        raise ValueError(f"at most {MAX_CUSTOM_FIELDS} custom fields")
    for key in value:
        if not (1 <= len(key) <= 64) or "\x00" in key:
            raise ValueError("custom field names are 1..64 characters")
    if _depth(value) > MAX_CUSTOM_FIELDS_DEPTH:
        raise ValueError(f"custom fields may nest at most {MAX_CUSTOM_FIELDS_DEPTH} levels")
    try:
        # JSONB has no NaN or Infinity (Python's json module accepts and writes them).
        encoded = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise ValueError("custom field numbers must be finite") from None
    if len(encoded.encode()) > MAX_CUSTOM_FIELDS_BYTES:
        raise ValueError(f"custom fields are at most {MAX_CUSTOM_FIELDS_BYTES} bytes of JSON")
    if "\\u0000" in encoded:
        raise ValueError("must not contain NUL characters")
    return _composed(value)


def _composed(value: Any) -> Any:
    """Every text in a JSON value (names included) in NFC, like other text (see `composed`)."""
    if isinstance(value, str):
        return composed(value)
    if isinstance(value, dict):
        return {_composed(key): _composed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_composed(item) for item in value]
    return value


CustomFields = Annotated[dict[str, Any], AfterValidator(_check_custom_fields)]


def _unique(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


Tags = Annotated[
    list[Tag],
    Field(max_length=MAX_TAGS, description="Case-insensitive: stored in lowercase, each once"),
    AfterValidator(_unique),
]
Watchers = Annotated[list[UserId], Field(max_length=MAX_WATCHERS), AfterValidator(_unique)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _reject_null(value: Any) -> Any:
    """For optional fields where leaving out means "unchanged" and null would mean nothing."""
    if value is None:
        raise ValueError("cannot be null")
    return value


class TicketCreate(_Request):
    subject: Subject
    description: Description = ""
    priority: Priority = Priority.medium
    category: Key | None = None
    type: Key | None = None
    source: Source = Field(
        default="portal",
        description=f"One of {', '.join(KNOWN_SOURCES)}, or another lowercase code (kept as given)",
    )
    location: ShortText | None = Field(
        default=None, description="Free-text location, e.g. 'lobby by the east door'"
    )
    building: ShortText | None = None
    floor: ShortText | None = None
    room: ShortText | None = None
    # Staff only: create on someone's behalf (phone, walk-in); requesters are always themselves.
    requester_id: UserId | None = None
    requester_name: ShortText | None = None
    requester_email: Email | None = None
    assignee_id: UserId | None = None
    group_id: Key | None = None
    tags: Tags = []
    custom_fields: CustomFields = {}
    watchers: Watchers = []
    parent_id: UUID | None = None


# Fields only agents, admins and services may set.
STAFF_ONLY_CREATE_FIELDS = frozenset({"requester_id", "assignee_id", "group_id", "watchers", "parent_id"})


class TicketUpdate(_Request):
    """Changes to a ticket; fields left out stay as they are, `null` clears a field."""

    subject: Subject | None = None
    description: Description | None = None
    status: Key | None = None
    priority: Priority | None = None
    category: Key | None = None
    type: Key | None = None
    location: ShortText | None = None
    building: ShortText | None = None
    floor: ShortText | None = None
    room: ShortText | None = None
    requester_name: ShortText | None = None
    requester_email: Email | None = None
    assignee_id: UserId | None = None
    group_id: Key | None = None
    tags: Tags | None = None
    custom_fields: CustomFields | None = None
    watchers: Watchers | None = None
    parent_id: UUID | None = None

    _not_null = field_validator(
        "subject", "status", "priority", "tags", "custom_fields", "watchers", "description"
    )(_reject_null)


# What a requester may change on their own ticket.
REQUESTER_UPDATE_FIELDS = frozenset({"subject", "description", "location", "building", "floor", "room"})


class BulkUpdate(_Request):
    ids: Annotated[list[UUID], Field(min_length=1, max_length=BULK_MAX_IDS)]
    status: Key | None = None
    priority: Priority | None = None
    assignee_id: UserId | None = None  # null unassigns
    tags: Tags | None = None
    add_tags: Tags | None = None
    remove_tags: Tags | None = None

    _not_null = field_validator("status", "priority", "tags", "add_tags", "remove_tags")(_reject_null)


class CommentCreate(_Request):
    body: _text(50_000)
    visibility: Literal["public", "internal"] = "public"
    content_type: Literal["text/plain", "text/html"] = Field(
        default="text/plain", description="HTML is reduced to plain text"
    )


class CommentRead(BaseModel):
    id: UUID
    ticket_id: UUID
    author_id: str
    visibility: Literal["public", "internal"]
    body: str
    created_at: datetime


class HistoryEntry(BaseModel):
    id: UUID
    ticket_id: UUID
    actor_id: str
    field: str
    old_value: Any
    new_value: Any
    created_at: datetime


class MergeRequest(_Request):
    into_ticket_id: UUID
    keep_public_comments: bool = Field(
        default=False,
        description="When the two tickets have different requesters, the moved public replies become "
        "internal notes (and attachments not on a comment stay on this ticket), so that one "
        "requester never sees another's conversation; true keeps them visible to the target's requester",
    )


class StatusCreate(_Request):
    key: Key
    name: ShortText
    category: StatusCategory
    position: int = Field(default=0, ge=0, le=10_000)


class StatusUpdate(_Request):
    """A status's new name and/or place; its key and category stay. Built-in statuses take a
    name only (they come first in their category)."""

    name: ShortText | None = None
    position: int | None = Field(default=None, ge=0, le=10_000)

    @model_validator(mode="after")
    def _something_to_change(self) -> StatusUpdate:
        if not self.model_fields_set:
            raise ValueError("nothing to change: send name and/or position")
        if any(getattr(self, field) is None for field in self.model_fields_set):
            raise ValueError("name and position cannot be null")
        return self


class StatusRead(BaseModel):
    key: str
    name: str
    category: StatusCategory
    builtin: bool
    position: int


class CategoryCreate(_Request):
    key: Key
    name: ShortText


class CategoryUpdate(_Request):
    name: ShortText


class CategoryRead(BaseModel):
    key: str
    name: str


class Summary(BaseModel):
    summary: str
    key_points: list[str] = []
    suggested_category: str | None = None
    suggested_priority: str | None = None
    confidence: float | None = None
    provider: str | None = None
    model: str | None = None
    created_at: datetime | None = None


class TicketRead(BaseModel):
    id: UUID
    number: int
    subject: str
    description: str
    status: str
    status_category: StatusCategory
    priority: Priority
    category: str | None
    type: str | None
    source: str
    location: str | None
    building: str | None
    floor: str | None
    room: str | None
    requester_id: str
    requester_name: str | None
    requester_email: str | None
    assignee_id: str | None
    group_id: str | None
    tags: list[str]
    custom_fields: dict[str, Any]
    watchers: list[str]
    due_at: datetime | None
    first_response_due_at: datetime | None
    first_responded_at: datetime | None
    resolved_at: datetime | None
    closed_at: datetime | None
    sla_paused_at: datetime | None
    parent_id: UUID | None
    merged_into_id: UUID | None
    deleted_at: datetime | None
    summary: Summary | None
    created_at: datetime
    updated_at: datetime
    version: int


class SearchHit(TicketRead):
    rank: float | None = None
    highlight: str | None = Field(default=None, description="Snippet with matches wrapped in <mark>")


class SimilarTicket(BaseModel):
    id: UUID
    number: int
    subject: str
    status: str
    status_category: StatusCategory
    priority: Priority
    category: str | None
    location: str | None
    building: str | None
    floor: str | None
    room: str | None
    requester_id: str
    assignee_id: str | None
    created_at: datetime
    score: float = Field(description="Similarity, higher is closer")
