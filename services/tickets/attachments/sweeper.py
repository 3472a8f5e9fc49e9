"""The orphan-blob sweep: a background job of the tickets service, safe in every replica.

An upload stores its file first and commits the attachment row after; a process that dies in
between leaves a file no row points to. The sweep deletes stored files older than the grace
period whose attachment row does not exist, and what uploads killed mid-write left (a local
store's temporary files, an S3 bucket's incomplete multipart uploads). Only keys of our own shape
(`<tenant>/<ticket id>/<attachment id>`) are considered: anything else in the bucket is left
alone. One process sweeps at a time (a PostgreSQL advisory lock): every worker and replica runs
the job, but listing a large bucket once per pass is enough.
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from uuid import UUID

import structlog
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from libs.common.auth import TENANT_PATTERN
from libs.common.db import set_tenant
from services.tickets.attachments import repository
from services.tickets.attachments.blobstore import BlobStore, create_blob_store

log = structlog.get_logger()

BATCH = 500
SWEEP_LOCK_KEY = zlib.crc32(b"helpdesk-tickets:orphan-blob-sweep")


def attachment_of(key: str) -> tuple[str, UUID] | None:
    """(tenant, attachment id) of a key we create, None for any other key."""
    parts = key.split("/")
    if len(parts) != 3 or not TENANT_PATTERN.match(parts[0]):
        return None
    try:
        UUID(parts[1])
        return parts[0], UUID(parts[2])
    except ValueError:
        return None


def _is_attachment_key(key: str) -> bool:
    return attachment_of(key) is not None


async def sweep_orphans(
    factory: async_sessionmaker[AsyncSession], store: BlobStore, *, grace: timedelta, now: datetime
) -> list[str]:
    """Delete the orphaned blobs older than `grace`; returns their keys."""
    candidates: dict[str, dict[UUID, str]] = defaultdict(dict)
    async for key, modified in store.list_keys():
        owner = attachment_of(key)
        if owner is not None and modified < now - grace:
            candidates[owner[0]][owner[1]] = key
    deleted = []
    for tenant, keys in candidates.items():
        ids = list(keys)
        for start in range(0, len(ids), BATCH):
            batch = ids[start : start + BATCH]
            async with factory() as session, session.begin():
                await set_tenant(session, tenant)
                kept = await repository.existing_attachment_ids(session, tenant, batch)
            for attachment_id in batch:
                if attachment_id not in kept:
                    await store.delete(keys[attachment_id])
                    deleted.append(keys[attachment_id])
    removed = await store.remove_stale_partial_uploads(now - grace, is_ours=_is_attachment_key)
    if removed:
        log.warning("stale_partial_uploads_removed", count=removed)
    if deleted:
        log.warning("orphan_blobs_deleted", count=len(deleted), keys=deleted[:20])
    return deleted


async def sweep_if_first(
    engine: AsyncEngine,
    factory: async_sessionmaker[AsyncSession],
    store: BlobStore,
    *,
    grace: timedelta,
    now: datetime,
) -> list[str] | None:
    """Sweep unless another process is sweeping (None then): the pass holds an advisory lock."""
    async with engine.connect() as conn:
        if not await conn.scalar(select(func.pg_try_advisory_lock(SWEEP_LOCK_KEY))):
            return None
        try:
            return await sweep_orphans(factory, store, grace=grace, now=now)
        finally:
            # A session-level lock outlives the transaction; a broken connection is discarded
            # by the pool, and the server releases the lock with it.
            await conn.scalar(select(func.pg_advisory_unlock(SWEEP_LOCK_KEY)))


async def run_blob_sweeper(app: FastAPI, stop: asyncio.Event) -> None:
    """Sweep every `blob_sweep_interval_s` until `stop` is set; errors are logged, never fatal."""
    settings = app.state.settings
    store = create_blob_store(settings)  # its own: the request path's store may be closed first
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):  # not at start-up: a restart loop must not hammer
                await asyncio.wait_for(stop.wait(), timeout=settings.blob_sweep_interval_s)
            if stop.is_set():
                break
            try:
                grace = timedelta(seconds=settings.blob_orphan_grace_s)
                await sweep_if_first(
                    app.state.engine, app.state.session_factory, store, grace=grace, now=datetime.now(UTC)
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # store or database away: try again next interval
                log.error("blob_sweep_failed", error=repr(exc))
    finally:
        await store.close()
