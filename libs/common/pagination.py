"""Keyset (cursor) pagination shared by every list endpoint."""

from __future__ import annotations

import base64
import json
from typing import Annotated, Any, Generic, TypeVar

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
