"""Response models of the attachments API."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from pydantic import BaseModel


class AttachmentRead(BaseModel):
    id: UUID
    ticket_id: UUID
    comment_id: UUID | None
    filename: str
    content_type: str
    size_bytes: int
    sha256: str
    uploaded_by: str
    created_at: datetime
