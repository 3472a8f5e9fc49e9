"""Attachments HTTP API: streamed multipart uploads and streamed downloads.

Include this router before the main tickets router: its paths sit under `/{ticket_id}`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated
from urllib.parse import quote
from uuid import UUID

from fastapi import APIRouter, Depends, FastAPI, Request, Response, status
from fastapi.responses import StreamingResponse
from starlette.requests import ClientDisconnect

from libs.common.auth import IdentityDep
from libs.common.db import TenantSessionDep, transaction
from libs.common.errors import ProblemError
from libs.common.idempotency import REPLAYED_HEADERS, IdempotencyKeyHeader
from libs.common.pagination import CursorQuery, LimitQuery, Page, decode_time_cursor, time_page
from libs.common.responses import FastJSONResponse
from services.tickets.attachments import service
from services.tickets.attachments.blobstore import BlobStore, create_blob_store
from services.tickets.attachments.multipart_stream import MultipartStream, multipart_boundary
from services.tickets.attachments.schemas import AttachmentRead
from services.tickets.settings import Settings

router = APIRouter(prefix="/api/v1/tickets", tags=["attachments"])

# Room for the multipart framing and small fields around the file itself.
MULTIPART_OVERHEAD_BYTES = 64 * 1024


async def get_blob_store(request: Request) -> BlobStore:
    """The app's blob store, made from the settings on first use (closed by `close_blob_store`).

    Async on purpose: FastAPI runs a plain `def` dependency in a worker thread (~0.2 ms a
    request, and two threads could each make a store)."""
    store = getattr(request.app.state, "blob_store", None)
    if store is None:  # no await between the check and the assignment: one store per app
        store = create_blob_store(request.app.state.settings)
        request.app.state.blob_store = store
    return store


async def close_blob_store(app: FastAPI, stop: asyncio.Event) -> None:
    """Background job of the service: at shutdown, close the store's connections if it was made."""
    await stop.wait()
    store = getattr(app.state, "blob_store", None)
    if store is not None:
        await store.close()
        app.state.blob_store = None


BlobStoreDep = Annotated[BlobStore, Depends(get_blob_store)]


def _limits(request: Request) -> service.AttachmentLimits:
    settings: Settings = request.app.state.settings
    return service.AttachmentLimits(
        max_bytes=settings.attachments_max_bytes, allowed_types=frozenset(settings.attachments_allowed_types)
    )


async def _request_body(request: Request) -> AsyncIterator[bytes]:
    try:
        async for chunk in request.stream():
            if chunk:
                yield chunk
    except ClientDisconnect:
        raise ProblemError(400, "Bad Request", "the client closed the connection during the upload") from None


def _location(ticket_id: UUID | str, attachment_id: UUID | str) -> str:
    return f"/api/v1/tickets/{ticket_id}/attachments/{attachment_id}"


_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "comment_id": {"type": "string", "format": "uuid"},
                    },
                }
            }
        },
    }
}


@router.post(
    "/{ticket_id}/attachments",
    status_code=status.HTTP_201_CREATED,
    response_model=AttachmentRead,
    openapi_extra=_UPLOAD_BODY,
    responses={413: {"description": "File larger than the limit"}, 415: {"description": "Type not allowed"}},
)
async def upload_attachment(
    ticket_id: UUID,
    request: Request,
    identity: IdentityDep,
    store: BlobStoreDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> FastJSONResponse:
    """Attach a file to a ticket: multipart/form-data with a `file` part and an optional `comment_id`.

    The file streams to storage while its size and SHA-256 are counted. Larger than the limit is a
    413 problem, a type not on the allow-list a 415 problem, an empty file a 422; a failed upload
    leaves nothing stored. With `Idempotency-Key`, a retry of the same file replays the first
    response (and keeps one copy).
    """
    limits = _limits(request)
    boundary = multipart_boundary(request.headers.get("content-type"))
    max_body_bytes = limits.max_bytes + MULTIPART_OVERHEAD_BYTES
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
        raise ProblemError(
            413,
            "Content Too Large",
            f"the attachment exceeds the limit of {limits.max_bytes} bytes",
            type_="https://helpdesk.dev/problems/attachment-too-large",
            max_bytes=limits.max_bytes,
        )
    # Short transactions before and after the body, none while it streams.
    async with transaction(request.app, identity.tenant) as session:
        await service.require_visible_ticket(session, identity, ticket_id)
    form = MultipartStream(_request_body(request), boundary, max_body_bytes=max_body_bytes)
    upload = await form.next_file()
    if upload is None or upload.field_name != "file":
        raise ProblemError(
            422,
            "Validation Error",
            "the form needs a file in the `file` field",
            type_="https://helpdesk.dev/problems/validation",
            errors=[{"field": "file", "message": "a file is required", "type": "missing"}],
        )
    attachment, replayed = await service.add_attachment(
        lambda: transaction(request.app, identity.tenant),
        identity,
        store,
        limits,
        ticket_id,
        upload,
        idempotency_key,
    )
    headers = {"Location": _location(ticket_id, attachment["id"])}
    return FastJSONResponse(
        attachment, status_code=201, headers=(headers | REPLAYED_HEADERS) if replayed else headers
    )


@router.get("/{ticket_id}/attachments", response_model=Page[AttachmentRead])
async def list_attachments(
    ticket_id: UUID,
    session: TenantSessionDep,
    identity: IdentityDep,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
) -> FastJSONResponse:
    """The ticket's attachments in upload order, cursor-paginated."""
    after = decode_time_cursor(cursor) if cursor else None
    rows = await service.list_attachments(session, identity, ticket_id, limit=limit, after=after)
    return FastJSONResponse(time_page(rows, limit))


@router.get("/{ticket_id}/attachments/{attachment_id}", response_model=AttachmentRead)
async def get_attachment(
    ticket_id: UUID, attachment_id: UUID, session: TenantSessionDep, identity: IdentityDep
) -> FastJSONResponse:
    """One attachment's metadata."""
    row = await service.get_attachment(session, identity, ticket_id, attachment_id)
    row.pop("storage_key")
    return FastJSONResponse(row)


def content_disposition(filename: str) -> str:
    """`attachment` with an ASCII fallback name and the exact UTF-8 name as RFC 5987 filename*."""
    fallback = "".join(ch if 32 <= ord(ch) < 127 and ch not in '"\\%' else "_" for ch in filename)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


@router.get(
    "/{ticket_id}/attachments/{attachment_id}/content",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "The file's bytes"}},
)
async def download_attachment(
    ticket_id: UUID,
    attachment_id: UUID,
    session: TenantSessionDep,
    identity: IdentityDep,
    store: BlobStoreDep,
) -> StreamingResponse:
    """The file's bytes, streamed, as a download (never rendered inline)."""
    row, content = await service.open_content(session, identity, store, ticket_id, attachment_id)
    return StreamingResponse(
        content,
        media_type=row["content_type"],
        headers={
            "Content-Length": str(row["size_bytes"]),
            "Content-Disposition": content_disposition(row["filename"]),
            "X-Content-Type-Options": "nosniff",
            # Opened directly in a browser tab, it still cannot run anything on our origin.
            "Content-Security-Policy": "default-src 'none'; sandbox",
            "Cache-Control": "private, no-store",
            "ETag": f'"{row["sha256"]}"',
        },
    )


@router.delete(
    "/{ticket_id}/attachments/{attachment_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
)
async def delete_attachment(
    ticket_id: UUID,
    attachment_id: UUID,
    session: TenantSessionDep,
    identity: IdentityDep,
    store: BlobStoreDep,
) -> Response:
    """Delete an attachment and its bytes (the uploader, an agent or an admin)."""
    await service.delete_attachment(session, identity, store, ticket_id, attachment_id)
    return Response(status_code=204)
