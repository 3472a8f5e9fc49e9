"""The SLA scheduler: a background job of the tickets service, safe in every replica.

Each pass first works through the SLA retargets waiting (open tickets moved to new targets after
a change too large for the admin's request), for a few seconds at most: one transaction per
batch, the retarget claimed with FOR UPDATE SKIP LOCKED, the batch's changes and how far it got
committed together; a failed batch is undone and its retarget tried again later. While
retargets are left, the next pass follows without waiting.

Then it asks which tenants have breaches due (one query over partial indexes, however many
tenants there are); per such tenant one transaction marks the breaching tickets (claimed with
FOR UPDATE SKIP LOCKED) and writes their `ticket.sla_breached` outbox rows, so a breach is
announced exactly once however many replicas scan at the same time.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import structlog
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from libs.common.db import set_tenant
from services.tickets import service as tickets_service
from services.tickets.sla import repository, service

log = structlog.get_logger()


async def scan_tenant(factory: async_sessionmaker[AsyncSession], tenant: str, batch_size: int) -> int:
    """Announce the tenant's breaches, batch by batch; returns how many."""
    total = 0
    while True:
        async with factory() as session, session.begin():
            await set_tenant(session, tenant)
            announced = await service.announce_breaches(session, tenant, datetime.now(UTC), batch_size)
        total += announced
        # A full batch of either kind may leave more; anything less means the tenant is done.
        if announced < batch_size:
            if total:
                log.info("sla_breaches_announced", tenant=tenant, breaches=total)
            return total


async def scan_once(
    factory: async_sessionmaker[AsyncSession], batch_size: int, stop: asyncio.Event | None = None
) -> int:
    """One pass over the tenants with breaches due; a failing tenant is logged and the pass goes on."""
    async with factory() as session, session.begin():
        tenants = await repository.tenants_with_due_breaches(session, datetime.now(UTC))
    total = 0
    for tenant in tenants:
        if stop is not None and stop.is_set():
            break
        try:
            total += await scan_tenant(factory, tenant, batch_size)
        except Exception as exc:
            log.error("sla_scan_tenant_failed", tenant=tenant, error=repr(exc))
    return total


# A pass spends at most this long on retargets before scanning for breaches, so moving a large
# tenant's queue (minutes) never holds back breach announcements; it goes on in the next pass,
# which then starts without waiting for the interval.
RETARGET_SLICE_S = 5.0


async def run_retargets(
    factory: async_sessionmaker[AsyncSession],
    batch_size: int,
    stop: asyncio.Event | None = None,
    *,
    time_budget_s: float | None = None,
) -> int:
    """Work through the retargets due, a batch per transaction, starting no new batch once
    `time_budget_s` is spent (so at least one is tried); returns the batches tried. A batch that
    fails is undone and its retarget put off (`continue_retarget`); any other error (the database
    away) is logged and the tenant left for the next pass, its progress so far kept."""
    deadline = None if time_budget_s is None else time.monotonic() + time_budget_s
    async with factory() as session, session.begin():
        tenants = await repository.tenants_with_retargets(session)
    batches = 0
    for tenant in tenants:
        while stop is None or not stop.is_set():
            try:
                async with factory() as session, session.begin():
                    await set_tenant(session, tenant)
                    if not await tickets_service.continue_retarget(session, tenant, batch_size):
                        break
            except Exception as exc:
                log.error("sla_retarget_pass_failed", tenant=tenant, error=repr(exc))
                break
            batches += 1
            if deadline is not None and time.monotonic() >= deadline:
                return batches
    return batches


async def _retargets_waiting(factory: async_sessionmaker[AsyncSession]) -> bool:
    async with factory() as session, session.begin():
        return bool(await repository.tenants_with_retargets(session))


def wake_scheduler(app: FastAPI) -> None:
    """Start this process's next pass now: a retarget was just queued (and committed) here, so it
    need not wait for the interval. Other replicas find it at their next pass."""
    wakeup: asyncio.Event | None = getattr(app.state, "sla_wakeup", None)
    if wakeup is not None:
        wakeup.set()


async def _pause(stop: asyncio.Event, wakeup: asyncio.Event, timeout: float) -> None:
    """Until `stop` or `wakeup` is set, or `timeout` seconds have passed."""
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wakeup.wait())]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def run_sla_scheduler(app: FastAPI, stop: asyncio.Event) -> None:
    """Scan every `sla_scan_interval_s` (or sooner, see `wake_scheduler`) until `stop` is set;
    errors are logged, never fatal."""
    settings = app.state.settings
    interval = settings.sla_scan_interval_s
    log.info("sla_scheduler_started", interval_s=interval)
    factory, batch_size = app.state.session_factory, settings.sla_scan_batch_size
    wakeup = app.state.sla_wakeup = asyncio.Event()
    while not stop.is_set():
        wakeup.clear()  # a wake-up during this pass starts the next one at once
        more_to_move = False
        try:
            batches = await run_retargets(factory, batch_size, stop, time_budget_s=RETARGET_SLICE_S)
            if batches:
                log.info("sla_retargets_progressed", batches=batches)
            announced = await scan_once(factory, batch_size, stop)
            if announced:
                log.info("sla_scan_announced", breaches=announced)
            # Progress made and more waiting: go on at once (none made: another replica holds
            # them, or they fail; the interval then paces the retries).
            more_to_move = batches > 0 and await _retargets_waiting(factory)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # database away: try again next interval
            log.error("sla_scan_failed", error=repr(exc))
        await _pause(stop, wakeup, timeout=0 if more_to_move else interval)
    log.info("sla_scheduler_stopped")
