"""Entity and event ids: UUIDv7, time-ordered so b-tree inserts stay at the right edge."""

from __future__ import annotations

import uuid

import uuid6


def new_id() -> uuid.UUID:
    """A fresh UUIDv7 as a standard ``uuid.UUID``."""
    return uuid.UUID(int=uuid6.uuid7().int)
