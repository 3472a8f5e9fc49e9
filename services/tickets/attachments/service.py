"""Attachment rules: who may see and add files, limits, and keeping blobs and rows in step.

The blob is written first and the row last, in the caller's transaction; any failure in
between deletes the blob again, so a failed upload leaves neither a row nor bytes behind.
Never commits (the request dependency does).
"""

from __future__ import annotations

import asyncio
import mimetypes
import unicodedata
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from libs.common.auth import Identity
from libs.common.errors import ProblemError
from libs.common.idempotency import claim_key, request_fingerprint, store_response
from libs.common.ids import new_id
from libs.common.responses import jsonable
from services.tickets.attachments import repository
from services.tickets.attachments.blobstore import BlobNotFoundError, BlobStore, BlobStoreError
from services.tickets.models import idempotency_keys
from services.tickets.service import is_staff, own_requester_id

log = structlog.get_logger()

MAX_FILENAME_CHARS = 255
PROBLEMS = "https://helpdesk.dev/problems/"


@dataclass(frozen=True)
class AttachmentLimits:
    max_bytes: int
    allowed_types: frozenset[str]


class Upload(Protocol):
    """A file arriving as a stream (the HTTP layer's multipart part)."""

    filename: str
    content_type: str | None

    def chunks(self) -> AsyncIterator[bytes]: ...

    async def rest_of_form(self) -> dict[str, str]: ...


def sanitize_filename(raw: str) -> str:
    """A display name safe for headers and file systems: no directories, no control characters.

    Unicode stays (Korean names are the norm), normalised to NFC: macOS sends Hangul decomposed.
    """
    name = unicodedata.normalize("NFC", raw or "")
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    # Cc: control characters (CR/LF would split headers); Cf: format characters such as the
    # right-to-left override that disguises "txt.exe" as "exe.txt"; Cs: lone surrogates.
    name = "".join(ch for ch in name if unicodedata.category(ch) not in ("Cc", "Cf", "Cs"))
    name = name.strip().strip(".").strip()
    if not name:
        return "attachment"
    if len(name) > MAX_FILENAME_CHARS:
        stem, dot, extension = name.rpartition(".")
        if dot and 0 < len(extension) <= 16:
            name = stem[: MAX_FILENAME_CHARS - len(extension) - 1] + "." + extension
        else:
            name = name[:MAX_FILENAME_CHARS]
    return name


def normalize_content_type(declared: str | None, filename: str) -> tuple[str, str]:
    """(media type to store and serve, its essence to check against the allow-list).

    Browsers and curl label unknown files application/octet-stream; then the extension decides.
    Only a charset parameter is kept (it matters for Korean text files).
    """
    essence, _, parameters = (declared or "").partition(";")
    essence = essence.strip().lower()
    if essence in ("", "application/octet-stream"):
        guessed, _ = mimetypes.guess_type(filename, strict=False)
        return (guessed or "application/octet-stream"), (guessed or "application/octet-stream")
    charset = None
    for parameter in parameters.split(";"):
        key, _, value = parameter.partition("=")
        if key.strip().lower() == "charset" and value.strip():
            charset = value.strip().strip('"').lower()
    if charset and charset.replace("-", "").replace("_", "").isalnum():
        return f"{essence}; charset={charset}", essence
    return essence, essence


def _too_large(limit: int) -> ProblemError:
    return ProblemError(
        413,
        "Content Too Large",
        f"the attachment exceeds the limit of {limit} bytes",
        type_=PROBLEMS + "attachment-too-large",
        max_bytes=limit,
    )


async def _within_limit(chunks: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    """Pass the stream on, stopping it the moment it exceeds `limit` (whatever Content-Length said)."""
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        yield chunk
    if size == 0:
        raise ProblemError(422, "Validation Error", "the file is empty", type_=PROBLEMS + "empty-attachment")


async def _delete_quietly(store: BlobStore, key: str) -> None:
    # Shielded: this runs while a failed or cancelled upload unwinds.
    try:
        await asyncio.shield(store.delete(key))
    except (BlobStoreError, OSError, asyncio.CancelledError) as exc:
        log.error("attachment_blob_cleanup_failed", storage_key=key, error=repr(exc))


def _store_unavailable(exc: BlobStoreError) -> ProblemError:
    log.error("blob_store_failed", error=str(exc))
    return ProblemError(
        503,
        "Service Unavailable",
        "attachment storage is unavailable, try again later",
        headers={"Retry-After": "5"},
    )


async def require_visible_ticket(
    session: AsyncSession, identity: Identity, ticket_id: UUID, *, reading: bool = False
) -> None:
    """A 404 problem unless the caller may see the ticket; admins read (never change) the
    attachments of a deleted ticket, as they read the ticket itself."""
    include_deleted = reading and identity.has_any("admin")
    if not await repository.ticket_is_visible(
        session, identity.tenant, ticket_id, own_requester_id(identity), include_deleted=include_deleted
    ):
        raise ProblemError(404, "Not Found", f"ticket {ticket_id} not found")


def _parse_comment_id(value: str | None) -> UUID | None:
    if value is None or not value.strip():
        return None
    try:
        return UUID(value.strip())
    except ValueError:
        raise ProblemError(
            422,
            "Validation Error",
            "comment_id must be a UUID",
            type_=PROBLEMS + "validation",
            errors=[{"field": "comment_id", "message": "must be a UUID", "type": "uuid_parsing"}],
        ) from None


async def _check_comment(
    session: AsyncSession, identity: Identity, ticket_id: UUID, comment_id: UUID
) -> None:
    visibility = await repository.comment_visibility(session, identity.tenant, ticket_id, comment_id)
    if visibility is None or (visibility == "internal" and not is_staff(identity)):
        raise ProblemError(
            422,
            "Validation Error",
            f"comment {comment_id} is not a comment of this ticket",
            type_=PROBLEMS + "validation",
            errors=[
                {"field": "comment_id", "message": "no such comment on this ticket", "type": "not_found"}
            ],
        )


async def add_attachment(
    transaction: Callable[[], AbstractAsyncContextManager[AsyncSession]],
    identity: Identity,
    store: BlobStore,
    limits: AttachmentLimits,
    ticket_id: UUID,
    upload: Upload,
    idempotency_key: str | None = None,
) -> tuple[dict[str, Any], bool]:
    """Store the file, then its metadata row; on any failure neither stays. Returns the row and
    whether it is the replay of an earlier upload with the same `idempotency_key`.

    No database connection is held while the file streams (a slow client would otherwise pin
    one for minutes): `transaction()` opens a short tenant transaction for the row at the end.
    The key is claimed there too, with the file's SHA-256 in the request's fingerprint (only
    known once the bytes arrived): a retry's copy of the file is then removed again.
    """
    filename = sanitize_filename(upload.filename)
    content_type, essence = normalize_content_type(upload.content_type, filename)
    if essence not in limits.allowed_types:
        allowed = ", ".join(sorted(limits.allowed_types))
        raise ProblemError(
            415,
            "Unsupported Media Type",
            f"attachments of type {essence} are not allowed; allowed: {allowed}",
            type_=PROBLEMS + "attachment-type",
            content_type=essence,
            allowed_types=sorted(limits.allowed_types),
        )
    attachment_id = new_id()
    storage_key = f"{identity.tenant}/{ticket_id}/{attachment_id}"
    try:
        stored = await store.put(storage_key, _within_limit(upload.chunks(), limits.max_bytes))
    except BlobStoreError as exc:
        raise _store_unavailable(exc) from exc
    replayed: dict[str, Any] | None = None
    try:
        fields = await upload.rest_of_form()
        comment_id = _parse_comment_id(fields.get("comment_id"))
        async with transaction() as session:  # committed before the blob counts as kept
            # Again: the ticket may have been deleted while the file streamed.
            await require_visible_ticket(session, identity, ticket_id)
            if comment_id is not None:
                await _check_comment(session, identity, ticket_id, comment_id)
            if idempotency_key:
                request = {
                    "file": [filename, content_type, stored.size, stored.sha256],
                    "comment_id": comment_id,
                }
                fingerprint = request_fingerprint(f"POST attachment {ticket_id}", identity.user_id, request)
                earlier = await claim_key(
                    session, idempotency_keys, identity.tenant, idempotency_key, fingerprint
                )
                if earlier is not None:
                    replayed = earlier.body
            if replayed is None:
                attachment = await repository.insert_attachment(
                    session,
                    {
                        "id": attachment_id,
                        "tenant_id": identity.tenant,
                        "ticket_id": ticket_id,
                        "comment_id": comment_id,
                        "filename": filename,
                        "content_type": content_type,
                        "size_bytes": stored.size,
                        "sha256": stored.sha256,
                        "storage_key": storage_key,
                        "uploaded_by": identity.user_id,
                    },
                )
                if idempotency_key:
                    await store_response(
                        session, idempotency_keys, identity.tenant, idempotency_key, 201, jsonable(attachment)
                    )
                return attachment, False
    except BaseException:
        await _delete_quietly(store, storage_key)
        raise
    await _delete_quietly(store, storage_key)  # the earlier upload's copy is the one kept
    return replayed, True


async def list_attachments(
    session: AsyncSession,
    identity: Identity,
    ticket_id: UUID,
    *,
    limit: int,
    after: tuple[datetime, UUID] | None,
) -> list[dict[str, Any]]:
    await require_visible_ticket(session, identity, ticket_id, reading=True)
    return await repository.list_attachments(
        session,
        identity.tenant,
        ticket_id,
        public_only=not is_staff(identity),
        limit=limit,
        after=after,
    )


async def get_attachment(
    session: AsyncSession, identity: Identity, ticket_id: UUID, attachment_id: UUID, *, reading: bool = True
) -> dict[str, Any]:
    """The attachment's row (with its storage key) if the caller may see it, else a 404 problem."""
    await require_visible_ticket(session, identity, ticket_id, reading=reading)
    row = await repository.get_attachment(
        session, identity.tenant, ticket_id, attachment_id, public_only=not is_staff(identity)
    )
    if row is None:
        raise ProblemError(404, "Not Found", f"attachment {attachment_id} not found")
    return row


async def open_content(
    session: AsyncSession, identity: Identity, store: BlobStore, ticket_id: UUID, attachment_id: UUID
) -> tuple[dict[str, Any], AsyncIterator[bytes]]:
    """The row and its bytes. The first chunk is read here: a missing blob is a problem, not a cut stream."""
    row = await get_attachment(session, identity, ticket_id, attachment_id)
    chunks = store.open(row["storage_key"])
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        first = b""
    except BlobNotFoundError:
        log.error("attachment_blob_missing", attachment_id=str(attachment_id), storage_key=row["storage_key"])
        raise ProblemError(
            404, "Not Found", f"the content of attachment {attachment_id} is missing"
        ) from None
    except BlobStoreError as exc:
        raise _store_unavailable(exc) from exc

    async def content() -> AsyncIterator[bytes]:
        try:
            if first:
                yield first
            async for chunk in chunks:
                yield chunk
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]

    return row, content()


async def delete_attachment(
    session: AsyncSession, identity: Identity, store: BlobStore, ticket_id: UUID, attachment_id: UUID
) -> None:
    """Uploader, agents and admins may delete. The row goes first; if the blob cannot be removed
    the transaction rolls back and the client may retry (deleting a blob twice is harmless)."""
    row = await get_attachment(session, identity, ticket_id, attachment_id, reading=False)
    if row["uploaded_by"] != identity.user_id and not identity.has_any("agent", "admin"):
        raise ProblemError(
            403, "Forbidden", "only the uploader, an agent or an admin may delete an attachment"
        )
    await repository.delete_attachment(session, identity.tenant, attachment_id)
    try:
        await store.delete(row["storage_key"])
    except BlobStoreError as exc:
        raise _store_unavailable(exc) from exc
