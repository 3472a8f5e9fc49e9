"""Where attachment bytes live: a local directory or an S3-compatible bucket.

Both stores take the bytes as an async stream and never hold a whole file in memory; a `put`
that fails or is cancelled leaves nothing behind under the key.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import re
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol
from urllib.parse import quote, urlsplit
from xml.etree import ElementTree

import httpx
import structlog

from services.tickets.settings import Settings

log = structlog.get_logger()

READ_CHUNK_BYTES = 64 * 1024
# A local upload's file until it is complete (then renamed to its key).
TEMPORARY_PREFIX, TEMPORARY_SUFFIX = ".upload-", ".part"
# Local writes are batched so a 25 MiB file costs a few dozen thread hops, not hundreds.
WRITE_BATCH_BYTES = 1024 * 1024
# Keys we create: "<tenant>/<ticket id>/<attachment id>"; every segment starts with a letter or digit,
# so "..", absolute paths and hidden files cannot be expressed.
_KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}(/[A-Za-z0-9][A-Za-z0-9._-]{0,127}){0,7}$")


KeyFilter = Callable[[str], bool]


class BlobStoreError(Exception):
    """The store failed (unreachable, refused, answered nonsense)."""


class BlobNotFoundError(BlobStoreError):
    pass


@dataclass(frozen=True)
class StoredBlob:
    size: int
    sha256: str


class BlobStore(Protocol):
    async def put(self, key: str, chunks: AsyncIterator[bytes]) -> StoredBlob:
        """Store the stream under `key` (all or nothing) and return its size and SHA-256."""
        ...

    def open(self, key: str) -> AsyncIterator[bytes]:
        """The bytes under `key`; raises BlobNotFoundError before the first chunk if absent."""
        ...

    async def delete(self, key: str) -> None:
        """Remove `key`; a key that does not exist is not an error."""
        ...

    def list_keys(self) -> AsyncIterator[tuple[str, datetime]]:
        """Every stored key with its last-modified time (for the orphan sweep)."""
        ...

    async def remove_stale_partial_uploads(self, started_before: datetime, is_ours: KeyFilter) -> int:
        """Discard what uploads killed mid-way (kill -9, a lost machine) left behind, if they
        started before `started_before` and were for a key `is_ours` accepts; returns how many.
        A `put` that fails or is cancelled cleans up after itself; this is for the ones that
        could not."""
        ...

    async def close(self) -> None: ...


def check_key(key: str) -> str:
    if not _KEY_PATTERN.match(key):
        raise ValueError(f"invalid blob key: {key!r}")
    return key


# -- local directory ----------------------------------------------------------------------------


class LocalBlobStore:
    """Files under one directory; written to a temporary file, fsynced, then renamed into place."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()

    def path_for(self, key: str) -> Path:
        path = (self.root / check_key(key)).resolve()
        if not path.is_relative_to(self.root):  # defence in depth: symlinks inside the root
            raise ValueError(f"invalid blob key: {key!r}")
        return path

    async def put(self, key: str, chunks: AsyncIterator[bytes]) -> StoredBlob:
        target = self.path_for(key)
        await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
        fd, temp_name = await asyncio.to_thread(
            tempfile.mkstemp, dir=target.parent, prefix=TEMPORARY_PREFIX, suffix=TEMPORARY_SUFFIX
        )
        hasher, size, pending = hashlib.sha256(), 0, bytearray()
        try:
            with os.fdopen(fd, "wb") as file:
                async for chunk in chunks:
                    hasher.update(chunk)
                    size += len(chunk)
                    pending += chunk
                    if len(pending) >= WRITE_BATCH_BYTES:
                        await asyncio.to_thread(file.write, bytes(pending))
                        pending.clear()
                if pending:
                    await asyncio.to_thread(file.write, bytes(pending))
                await asyncio.to_thread(_flush_and_sync, file)
            await asyncio.to_thread(os.replace, temp_name, target)
        except BaseException:
            # Synchronous on purpose: this also runs on cancellation, where an await could be cut short.
            with contextlib.suppress(OSError):
                os.unlink(temp_name)
            raise
        return StoredBlob(size=size, sha256=hasher.hexdigest())

    async def open(self, key: str) -> AsyncIterator[bytes]:
        path = self.path_for(key)
        try:
            file = await asyncio.to_thread(path.open, "rb")
        except FileNotFoundError:
            raise BlobNotFoundError(key) from None
        try:
            while chunk := await asyncio.to_thread(file.read, READ_CHUNK_BYTES):
                yield chunk
        finally:
            file.close()

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self.path_for(key).unlink, missing_ok=True)

    async def list_keys(self) -> AsyncIterator[tuple[str, datetime]]:
        # Files that are no valid key (an upload's temporary file, anything foreign) are skipped.
        found = await asyncio.to_thread(self._walk)
        for key, modified in found:
            yield key, modified

    async def remove_stale_partial_uploads(self, started_before: datetime, is_ours: KeyFilter) -> int:
        """Delete the temporary files of uploads killed mid-write, last written before
        `started_before`; returns how many. (Their names are never keys, and always ours.)"""
        return await asyncio.to_thread(self._remove_stale_temporary_files, started_before.timestamp())

    def _remove_stale_temporary_files(self, cutoff: float) -> int:
        removed = 0
        for directory, _subdirectories, files in os.walk(self.root):
            for name in files:
                if name.startswith(TEMPORARY_PREFIX) and name.endswith(TEMPORARY_SUFFIX):
                    path = Path(directory) / name
                    with contextlib.suppress(FileNotFoundError):
                        if path.stat().st_mtime < cutoff:
                            path.unlink()
                            removed += 1
        return removed

    def _walk(self) -> list[tuple[str, datetime]]:
        found = []
        for directory, _subdirectories, files in os.walk(self.root):
            for name in files:
                path = Path(directory) / name
                key = path.relative_to(self.root).as_posix()
                if _KEY_PATTERN.match(key):
                    with contextlib.suppress(FileNotFoundError):  # deleted meanwhile
                        found.append((key, datetime.fromtimestamp(path.stat().st_mtime, UTC)))
        return found

    async def close(self) -> None:
        return None


def _flush_and_sync(file) -> None:
    file.flush()
    os.fsync(file.fileno())


# -- S3-compatible ------------------------------------------------------------------------------

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


def _canonical_query(query: str) -> str:
    # The query is already percent-encoded the way AWS wants (we build it); only sort it.
    pairs = []
    for item in query.split("&") if query else []:
        name, _, value = item.partition("=")
        pairs.append((name, value))
    return "&".join(f"{name}={value}" for name, value in sorted(pairs))


def sign_request_v4(
    request: httpx.Request,
    *,
    access_key_id: str,
    secret_access_key: str,
    region: str,
    payload_sha256: str,
    session_token: str | None = None,
    service: str = "s3",
    now: datetime | None = None,
) -> None:
    """Add AWS Signature Version 4 headers to `request` (header-based auth, signed payload hash).

    Signs exactly what httpx will send: the encoded path and query of `request.url` and the
    Host header, plus every x-amz-* header and Content-Type/Content-MD5 when present.
    """
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    amz_date = moment.strftime("%Y%m%dT%H%M%SZ")
    date = amz_date[:8]
    request.headers["x-amz-date"] = amz_date
    request.headers["x-amz-content-sha256"] = payload_sha256
    if session_token:
        request.headers["x-amz-security-token"] = session_token
    path, _, query = request.url.raw_path.decode("ascii").partition("?")
    headers = {
        name.lower(): " ".join(value.strip().split())
        for name, value in request.headers.items()
        if name.lower() in ("host", "content-type", "content-md5", "range")
        or name.lower().startswith("x-amz-")
    }
    signed_headers = ";".join(sorted(headers))
    canonical_request = "\n".join(
        [
            request.method,
            path or "/",
            _canonical_query(query),
            "".join(f"{name}:{headers[name]}\n" for name in sorted(headers)),
            signed_headers,
            payload_sha256,
        ]
    )
    scope = f"{date}/{region}/{service}/aws4_request"
    string_to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical_request.encode()).hexdigest()]
    )
    key = _hmac(("AWS4" + secret_access_key).encode(), date)
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    request.headers["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={access_key_id}/{scope}, "
        f"SignedHeaders={signed_headers}, Signature={signature}"
    )


def _s3_error(response: httpx.Response, action: str) -> BlobStoreError:
    code = ""
    with contextlib.suppress(ElementTree.ParseError):
        root = ElementTree.fromstring(response.content or b"<x/>")
        code = next((el.text or "" for el in root.iter() if el.tag.endswith("Code")), "")
    return BlobStoreError(f"S3 {action} failed: HTTP {response.status_code} {code}".strip())


def _xml_text(content: bytes, tag: str) -> str | None:
    root = ElementTree.fromstring(content)
    for element in root.iter():
        if element.tag == tag or element.tag.endswith("}" + tag):
            return element.text
    return None


class S3BlobStore:
    """Objects in one bucket of an S3-compatible server (AWS S3, MinIO, Ceph RGW, ...).

    Uploads stream through a bounded buffer: a file smaller than one part is a single PUT with
    its exact length; a larger one becomes a multipart upload of `part_size` parts, aborted on
    any failure, so no object appears unless the whole file arrived. Memory per upload is one
    part. Downloads stream the GET response.
    """

    def __init__(
        self,
        *,
        bucket: str,
        access_key_id: str,
        secret_access_key: str,
        region: str = "us-east-1",
        endpoint_url: str | None = None,
        prefix: str = "",
        path_style: bool = True,
        part_size: int = 8 * 1024 * 1024,
        session_token: str | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        endpoint = (endpoint_url or f"https://s3.{region}.amazonaws.com").rstrip("/")
        if path_style:
            self.base_url = f"{endpoint}/{quote(bucket, safe='')}"
        else:
            parts = urlsplit(endpoint)
            self.base_url = f"{parts.scheme}://{bucket}.{parts.netloc}"
        self.prefix = prefix
        self.region = region
        self.part_size = part_size
        self._credentials = (access_key_id, secret_access_key, session_token)
        self._timeout = httpx.Timeout(timeout_s, connect=10.0)
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        # Made on first use, inside the running event loop.
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout)
        return self._client

    def url_for(self, key: str, query: str = "") -> str:
        path = quote(self.prefix + check_key(key), safe="/-_.~")
        return f"{self.base_url}/{path}" + (f"?{query}" if query else "")

    def _request(
        self, method: str, url: str, *, content: bytes | None = None, headers: dict[str, str] | None = None
    ) -> httpx.Request:
        request = self.client.build_request(method, url, content=content, headers=headers)
        access_key_id, secret_access_key, session_token = self._credentials
        sign_request_v4(
            request,
            access_key_id=access_key_id,
            secret_access_key=secret_access_key,
            session_token=session_token,
            region=self.region,
            payload_sha256=hashlib.sha256(content).hexdigest() if content else EMPTY_SHA256,
        )
        return request

    async def _send(
        self,
        method: str,
        url: str,
        action: str,
        *,
        content: bytes | None = None,
        ok: tuple[int, ...] = (200,),
    ) -> httpx.Response:
        try:
            response = await self.client.send(self._request(method, url, content=content))
        except httpx.HTTPError as exc:
            raise BlobStoreError(f"S3 {action} failed: {exc!r}") from exc
        if response.status_code not in ok:
            raise _s3_error(response, action)
        return response

    async def put(self, key: str, chunks: AsyncIterator[bytes]) -> StoredBlob:
        url = self.url_for(key)
        hasher, size, buffer = hashlib.sha256(), 0, bytearray()
        upload_id: str | None = None
        parts: list[tuple[int, str]] = []
        try:
            async for chunk in chunks:
                hasher.update(chunk)
                size += len(chunk)
                buffer += chunk
                while len(buffer) >= self.part_size:
                    if upload_id is None:
                        upload_id = await self._create_multipart_upload(url)
                    part = bytes(buffer[: self.part_size])
                    del buffer[: self.part_size]
                    parts.append(await self._upload_part(url, upload_id, len(parts) + 1, part))
            if upload_id is None:
                await self._send("PUT", url, "PutObject", content=bytes(buffer))
            else:
                if buffer:
                    parts.append(await self._upload_part(url, upload_id, len(parts) + 1, bytes(buffer)))
                await self._complete_multipart_upload(url, upload_id, parts)
        except BaseException:
            if upload_id is not None:
                await self._abort_quietly(url, upload_id)
            raise
        return StoredBlob(size=size, sha256=hasher.hexdigest())

    async def _create_multipart_upload(self, url: str) -> str:
        response = await self._send("POST", f"{url}?uploads", "CreateMultipartUpload")
        try:
            upload_id = _xml_text(response.content, "UploadId")
        except ElementTree.ParseError:
            upload_id = None
        if not upload_id:
            raise BlobStoreError("S3 CreateMultipartUpload returned no UploadId")
        return upload_id

    async def _upload_part(self, url: str, upload_id: str, number: int, data: bytes) -> tuple[int, str]:
        query = f"partNumber={number}&uploadId={quote(upload_id, safe='')}"
        response = await self._send("PUT", f"{url}?{query}", "UploadPart", content=data)
        return number, response.headers.get("etag", "")

    async def _complete_multipart_upload(
        self, url: str, upload_id: str, parts: list[tuple[int, str]]
    ) -> None:
        body = "".join(
            f"<Part><PartNumber>{number}</PartNumber><ETag>{_escape_xml(etag)}</ETag></Part>"
            for number, etag in parts
        )
        xml = f"<CompleteMultipartUpload>{body}</CompleteMultipartUpload>".encode()
        response = await self._send(
            "POST", f"{url}?uploadId={quote(upload_id, safe='')}", "CompleteMultipartUpload", content=xml
        )
        # S3 may answer 200 and still report an error in the body.
        if b"<Error>" in response.content:
            raise _s3_error(response, "CompleteMultipartUpload")

    async def _abort_quietly(self, url: str, upload_id: str) -> None:
        # Shielded: this also runs when the upload was cancelled (client went away).
        abort = self._send(
            "DELETE",
            f"{url}?uploadId={quote(upload_id, safe='')}",
            "AbortMultipartUpload",
            ok=(200, 204, 404),
        )
        try:
            await asyncio.shield(abort)
        except (BlobStoreError, asyncio.CancelledError) as exc:
            log.warning("s3_abort_failed", upload_id=upload_id, error=repr(exc))

    async def open(self, key: str) -> AsyncIterator[bytes]:
        request = self._request("GET", self.url_for(key))
        try:
            response = await self.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise BlobStoreError(f"S3 GetObject failed: {exc!r}") from exc
        try:
            if response.status_code == 404:
                raise BlobNotFoundError(key)
            if response.status_code != 200:
                await response.aread()
                raise _s3_error(response, "GetObject")
            try:
                async for chunk in response.aiter_bytes(READ_CHUNK_BYTES):
                    yield chunk
            except httpx.HTTPError as exc:
                raise BlobStoreError(f"S3 GetObject failed while reading: {exc!r}") from exc
        finally:
            await response.aclose()

    async def delete(self, key: str) -> None:
        await self._send("DELETE", self.url_for(key), "DeleteObject", ok=(200, 204, 404))

    async def list_keys(self, page_size: int = 1000) -> AsyncIterator[tuple[str, datetime]]:
        """ListObjectsV2 under the prefix, page by page."""
        token: str | None = None
        while True:
            query = f"list-type=2&max-keys={page_size}&prefix=" + quote(self.prefix, safe="")
            if token:
                query += "&continuation-token=" + quote(token, safe="")
            response = await self._send("GET", f"{self.base_url}?{query}", "ListObjectsV2")
            root = ElementTree.fromstring(response.content)
            for contents in _children(root, "Contents"):
                key = (_child_text(contents, "Key") or "")[len(self.prefix) :]
                modified = _child_text(contents, "LastModified")
                if _KEY_PATTERN.match(key) and modified:
                    yield key, datetime.fromisoformat(modified.replace("Z", "+00:00"))
            token = _child_text(root, "NextContinuationToken")
            if _child_text(root, "IsTruncated") != "true" or not token:
                return

    async def remove_stale_partial_uploads(
        self, started_before: datetime, is_ours: KeyFilter, page_size: int = 1000
    ) -> int:
        """Abort the multipart uploads under the prefix started before `started_before`: the parts
        of one whose process died stay stored (and billed) until it is aborted. Returns how many.
        (A bucket lifecycle rule aborting incomplete uploads does the same on the server's side.)"""
        stale: list[tuple[str, str]] = []
        markers = ""
        while True:
            query = f"uploads&max-uploads={page_size}&prefix=" + quote(self.prefix, safe="") + markers
            response = await self._send("GET", f"{self.base_url}?{query}", "ListMultipartUploads")
            root = ElementTree.fromstring(response.content)
            for upload in _children(root, "Upload"):
                key = (_child_text(upload, "Key") or "")[len(self.prefix) :]
                upload_id, initiated = _child_text(upload, "UploadId"), _child_text(upload, "Initiated")
                if not (_KEY_PATTERN.match(key) and is_ours(key) and upload_id and initiated):
                    continue
                if datetime.fromisoformat(initiated.replace("Z", "+00:00")) < started_before:
                    stale.append((key, upload_id))
            if _child_text(root, "IsTruncated") != "true":
                break
            next_key = _child_text(root, "NextKeyMarker") or ""
            next_upload = _child_text(root, "NextUploadIdMarker") or ""
            markers = f"&key-marker={quote(next_key, safe='')}&upload-id-marker={quote(next_upload, safe='')}"
        for key, upload_id in stale:
            await self._send(
                "DELETE",
                self.url_for(key, "uploadId=" + quote(upload_id, safe="")),
                "AbortMultipartUpload",
                ok=(200, 204, 404),
            )
        return len(stale)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _children(element: ElementTree.Element, tag: str) -> list[ElementTree.Element]:
    return [child for child in element if child.tag == tag or child.tag.endswith("}" + tag)]


def _child_text(element: ElementTree.Element, tag: str) -> str | None:
    children = _children(element, tag)
    return children[0].text if children else None


def _escape_xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def create_blob_store(settings: Settings) -> BlobStore:
    """The store the settings name (`HELPDESK_BLOB_STORE`)."""
    if settings.blob_store == "s3":
        assert settings.s3_bucket and settings.s3_access_key_id and settings.s3_secret_access_key
        return S3BlobStore(
            bucket=settings.s3_bucket,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=settings.s3_secret_access_key.get_secret_value(),
            session_token=settings.s3_session_token.get_secret_value() if settings.s3_session_token else None,
            region=settings.s3_region,
            endpoint_url=settings.s3_endpoint_url,
            prefix=settings.s3_prefix,
            path_style=settings.s3_path_style,
            part_size=settings.s3_part_size_bytes,
            timeout_s=settings.s3_timeout_s,
        )
    return LocalBlobStore(settings.blob_local_dir)
