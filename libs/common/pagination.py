"""Keyset (cursor) pagination shared by every list endpoint."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar
from uuid import UUID

from fastapi import Query
from pydantic import BaseModel

from libs.common.errors import ProblemError

T = TypeVar("T")

LimitQuery = Annotated[int, Query(ge=1, le=200, description="Page size (1..200)")]
CursorQuery = Annotated[
    str | None, Query(max_length=512, description="Opaque cursor from the previous page's next_cursor")
]


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = None


def encode_cursor(values: list[Any]) -> str:
    raw = json.dumps(values, separators=(",", ":"), default=str).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, arity: int) -> list[Any]:
    """Decode a cursor made by `encode_cursor`; anything else is a 400 problem."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        values = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, UnicodeDecodeError):
        values = None
    if not isinstance(values, list) or len(values) != arity:
        raise ProblemError(
            400, "Bad Request", "malformed cursor", type_="https://helpdesk.dev/problems/cursor"
        )
    return values


# What a cursor's values may raise when a client made them up.
CURSOR_ERRORS = (TypeError, ValueError, OverflowError)


def malformed_cursor() -> ProblemError:
    return ProblemError(400, "Bad Request", "malformed cursor", type_="https://helpdesk.dev/problems/cursor")


def cursor_time(raw: Any) -> datetime:
    """A timestamp from a cursor, in UTC: a far-off offset (9999-12-31T23:59-14:00) fails here,
    not in the database driver."""
    value = datetime.fromisoformat(raw)
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)


def cursor_id(raw: Any) -> UUID:
    if not isinstance(raw, str):
        raise TypeError("cursor id is not a string")
    return UUID(raw)


def decode_time_cursor(cursor: str) -> tuple[datetime, UUID]:
    """The (created_at, id) position of a cursor made by `time_page`."""
    created_at, item_id = decode_cursor(cursor, 2)
    try:
        return cursor_time(created_at), cursor_id(item_id)
    except CURSOR_ERRORS:
        raise malformed_cursor() from None


def time_page(rows: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    """A page of rows fetched as limit + 1 in (created_at, id) order, with the next cursor."""
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_cursor([rows[-1]["created_at"].isoformat(), str(rows[-1]["id"])])
    return {"items": rows, "next_cursor": next_cursor}
