"""Outbox relay against real PostgreSQL and NATS: order, crash safety, broker outages."""

import asyncio
import time
from types import SimpleNamespace
from uuid import uuid4

import asyncpg
import nats
import pytest
from nats.js.errors import NoStreamResponseError, TooManyStalledMsgsError
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from libs.common import outbox as outbox_module
from libs.common.db import create_engine, plain_dsn
from libs.common.events import CloudEvent, build_event, ensure_stream
from libs.common.outbox import OutboxRelay, notify_channel, quiet_lock_key, record_event
from services.analytics.app import create_app as create_analytics
from services.analytics.settings import Settings as AnalyticsSettings
from services.tickets import models as ticket_models
from services.tickets.app import create_app as create_tickets
from services.tickets.events import TicketCreated
from services.tickets.settings import Settings as TicketSettings
from tests.conftest import (
    app_client,
    auth_headers,
    settings_for,
    ticket_created_data,
    unique_tenant,
    wait_until,
)


async def stream_count(infra, subject_filter: str) -> int:
    nc = await nats.connect(infra.nats_url)
    try:
        info = await nc.jetstream().stream_info("TICKETS", subjects_filter=subject_filter)
        return sum((info.state.subjects or {}).values())
    finally:
        await nc.close()


async def overview_count(client, infra, tenant: str) -> int:
    response = await client.get("/api/v1/analytics/overview", headers=auth_headers(infra, tenant, ["agent"]))
    return response.json()["tickets_created"]


async def test_creates_succeed_while_nats_is_down_and_are_counted_exactly_once_after(infra):
    tenant = unique_tenant("outage")
    tickets_app = create_tickets(settings_for(infra, TicketSettings, "tickets"))
    analytics_app = create_analytics(settings_for(infra, AnalyticsSettings, "analytics"))
    async with app_client(tickets_app) as tickets, app_client(analytics_app) as analytics:
        headers = auth_headers(infra, tenant, ["agent"])
        first = await tickets.post("/api/v1/tickets", json={"subject": "before outage"}, headers=headers)
        assert first.status_code == 201
        await wait_until(lambda: overview_count(analytics, infra, tenant))
        await asyncio.to_thread(infra.nats.stop)
        try:
            statuses = []
            for i in range(200):
                response = await tickets.post(
                    "/api/v1/tickets", json={"subject": f"during outage {i}"}, headers=headers
                )
                statuses.append(response.status_code)
            assert statuses == [201] * 200
            assert (await tickets.get("/readyz")).status_code == 503
        finally:
            await asyncio.to_thread(infra.nats.start)
        await wait_until(lambda: _equals(overview_count(analytics, infra, tenant), 201), timeout=60)
        await asyncio.sleep(2)  # any duplicate delivery would land by now
        assert await overview_count(analytics, infra, tenant) == 201
        assert await stream_count(infra, f"tickets.{tenant}.>") == 201
        await wait_until(lambda: _ready(tickets))


async def _equals(awaitable, expected) -> bool:
    return await awaitable == expected


async def _ready(client) -> bool:
    return (await client.get("/readyz")).status_code == 200


class CrashBeforeMark(OutboxRelay):
    """A relay that dies after JetStream acked the batch but before marking the rows sent."""

    async def mark_published(self, conn, ids):
        raise RuntimeError("simulated crash between ack and mark")


async def test_relay_crash_between_ack_and_mark_republishes_and_the_stream_deduplicates(infra):
    tenant = unique_tenant("crash")
    settings = settings_for(infra, TicketSettings, "tickets")
    engine = create_engine(settings)
    nc = await nats.connect(infra.nats_url)
    try:
        await ensure_stream(nc.jetstream(), "TICKETS", settings)
        async with AsyncSession(engine) as session, session.begin():
            for n in range(5):
                await record_event(session, ticket_models.outbox, *_ticket_created(tenant, n))

        crashing = CrashBeforeMark(
            service="tickets", engine=engine, outbox=ticket_models.outbox, nc=nc, settings=settings
        )
        with pytest.raises(RuntimeError, match="simulated crash"):
            await crashing.relay_pending_events()
        assert await stream_count(infra, f"tickets.{tenant}.>") == 5  # published once...
        assert await _pending(engine, tenant) == 5  # ...but still pending in the outbox

        healthy = OutboxRelay(
            service="tickets", engine=engine, outbox=ticket_models.outbox, nc=nc, settings=settings
        )
        while await _pending(engine, tenant):
            await healthy.relay_pending_events()
        assert await stream_count(infra, f"tickets.{tenant}.>") == 5  # re-published, de-duplicated
    finally:
        await nc.close()
        await engine.dispose()


async def test_relay_publishes_in_outbox_order(infra):
    tenant = unique_tenant("order")
    settings = settings_for(infra, TicketSettings, "tickets")
    engine = create_engine(settings)
    nc = await nats.connect(infra.nats_url)
    try:
        ids = []
        async with AsyncSession(engine) as session, session.begin():
            for n in range(30):
                subject, event = _ticket_created(tenant, n, aggregate_id="same")
                ids.append(str(event.id))
                await record_event(session, ticket_models.outbox, subject, event)
        relay = OutboxRelay(
            service="tickets", engine=engine, outbox=ticket_models.outbox, nc=nc, settings=settings
        )
        while await _pending(engine, tenant):
            await relay.relay_pending_events()
        subscription = await nc.jetstream().subscribe(f"tickets.{tenant}.>", ordered_consumer=True)
        received = []
        for _ in ids:
            msg = await subscription.next_msg(timeout=5)
            received.append(msg.headers["Nats-Msg-Id"])
        assert received == ids
    finally:
        await nc.close()
        await engine.dispose()


async def test_a_batch_stops_at_the_first_unacked_message_and_frees_the_rest(infra):
    """Publishes are pipelined; only the acked leading rows count as published."""
    tenant = unique_tenant("batch")
    settings = settings_for(infra, TicketSettings, "tickets")
    nc = await nats.connect(infra.nats_url)
    try:
        await ensure_stream(nc.jetstream(), "TICKETS", settings)
        relay = OutboxRelay(
            service="tickets", engine=None, outbox=ticket_models.outbox, nc=nc, settings=settings
        )
        rows = [
            SimpleNamespace(id=1, subject=f"tickets.{tenant}.ticket.created", event_id=uuid4(), payload="{}"),
            SimpleNamespace(
                id=2, subject=f"nostream.{tenant}.x", event_id=uuid4(), payload="{}"
            ),  # no stream
            SimpleNamespace(id=3, subject=f"tickets.{tenant}.ticket.created", event_id=uuid4(), payload="{}"),
        ]
        published, failure = await relay.publish_batch(rows)
        assert published == [1]
        assert isinstance(failure, NoStreamResponseError)
        await asyncio.sleep(0)  # done-callbacks of the cancelled acks run on the next pass of the loop
        assert relay.js.publish_async_pending() == 0  # nothing left waiting in the client
        assert await relay.publish_batch(rows[:1]) == ([1], None)  # a re-publish is acked (as duplicate)
        assert await stream_count(infra, f"tickets.{tenant}.>") == 2
    finally:
        await nc.close()


@pytest.mark.parametrize("max_pending_acks", [None, 2])
async def test_acks_that_never_come_time_out_and_are_released(infra, monkeypatch, max_pending_acks):
    """With a small client limit of acks in flight, the third publish stalls: the batch's one
    deadline ends that wait too."""
    monkeypatch.setattr(outbox_module, "PUBLISH_ACK_TIMEOUT_S", 0.5)
    tenant = unique_tenant("stall")
    settings = settings_for(infra, TicketSettings, "tickets")
    nc = await nats.connect(infra.nats_url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    try:
        relay = OutboxRelay(
            service="tickets", engine=None, outbox=ticket_models.outbox, nc=nc, settings=settings
        )
        if max_pending_acks:
            relay.js = nc.jetstream(publish_async_max_pending=max_pending_acks)
        rows = [
            SimpleNamespace(id=n, subject=f"tickets.{tenant}.ticket.created", event_id=uuid4(), payload="{}")
            for n in range(3)
        ]
        await asyncio.to_thread(infra.nats.stop)
        try:
            started = time.monotonic()
            # The client buffers; no ack comes. (Cut at 10 s, a hang would still end the test.)
            published, failure = await asyncio.wait_for(relay.publish_batch(rows), timeout=10)
            assert time.monotonic() - started < 5  # the 0.5 s deadline, with room for a slow machine
        finally:
            await asyncio.to_thread(infra.nats.start)
        assert published == []
        assert isinstance(failure, TooManyStalledMsgsError if max_pending_acks else TimeoutError)
        await asyncio.sleep(0)
        assert relay.js.publish_async_pending() == 0  # the client's slots for those acks are freed
    finally:
        # Closed only once reconnected: closing mid-reconnect can fail on the dead transport.
        await wait_until(_connected(nc), timeout=30)
        await nc.close()


async def _pending(engine, tenant: str) -> int:
    outbox = ticket_models.outbox
    async with engine.connect() as conn:
        return await conn.scalar(
            select(func.count())
            .select_from(outbox)
            .where(outbox.c.published_at.is_(None), outbox.c.subject.like(f"tickets.{tenant}.%"))
        )


def _connected(nc):
    async def connected() -> bool:
        return nc.is_connected

    return connected


def _ticket_created(tenant: str, n: int, aggregate_id: str | None = None) -> tuple[str, CloudEvent]:
    return build_event(
        service="tickets",
        tenant=tenant,
        aggregate="ticket",
        event="created",
        aggregate_id=aggregate_id or f"agg-{n}",
        data=TicketCreated.model_validate(ticket_created_data(n)),
    )


async def _record_one(engine, tenant: str, n: int) -> None:
    """One event in a transaction of its own."""
    async with AsyncSession(engine) as session, session.begin():
        await record_event(session, ticket_models.outbox, *_ticket_created(tenant, n))


async def _listening(infra, notifications: list) -> asyncpg.Connection:
    conn = await asyncpg.connect(plain_dsn(infra.admin_url))
    await conn.add_listener(notify_channel("tickets"), lambda *args: notifications.append(args))
    return conn


async def _quiet_lock_held(infra) -> bool:
    conn = await asyncpg.connect(plain_dsn(infra.admin_url))
    try:
        return await conn.fetchval(
            "SELECT count(*) > 0 FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND mode = 'ExclusiveLock' AND classid = 0 AND objid = $1::bigint::oid AND objsubid = 1",
            quiet_lock_key("tickets"),
        )
    finally:
        await conn.close()


async def test_commits_notify_only_while_no_relay_holds_the_quiet_lock(infra):
    tenant = unique_tenant("quiet")
    engine = create_engine(settings_for(infra, TicketSettings, "tickets"))
    notifications: list = []
    listener = await _listening(infra, notifications)
    holder = await asyncpg.connect(plain_dsn(infra.admin_url))
    try:
        await _record_one(engine, tenant, 1)
        await wait_until(lambda: _truthy(len(notifications) == 1), timeout=5)

        await holder.execute("SELECT pg_advisory_lock($1)", quiet_lock_key("tickets"))
        for n in range(2, 5):
            await _record_one(engine, tenant, n)
        await asyncio.sleep(0.5)  # a NOTIFY arrives within milliseconds
        assert len(notifications) == 1

        await holder.execute("SELECT pg_advisory_unlock($1)", quiet_lock_key("tickets"))
        await _record_one(engine, tenant, 5)
        await wait_until(lambda: _truthy(len(notifications) == 2), timeout=5)
    finally:
        await holder.close()
        await listener.close()
        await engine.dispose()


async def test_a_busy_relay_silences_notifies_and_is_woken_by_one_again_once_idle(infra):
    """Under a stream of commits the relay polls every linger holding the quiet lock (commits
    skip their NOTIFY), publishes everything, and gives the lock back when idle, so that a
    later commit wakes it at once. Polling alone would take 30 s here."""
    tenant = unique_tenant("busy")
    settings = settings_for(
        infra, TicketSettings, "tickets", outbox_poll_interval_s=30.0, outbox_linger_s=0.05
    )
    engine = create_engine(settings)
    nc = await nats.connect(infra.nats_url)
    notifications: list = []
    listener = await _listening(infra, notifications)
    stop = asyncio.Event()
    relay = OutboxRelay(
        service="tickets", engine=engine, outbox=ticket_models.outbox, nc=nc, settings=settings
    )
    running = asyncio.create_task(relay.run(stop))
    try:
        await ensure_stream(nc.jetstream(), "TICKETS", settings)
        committed = 0

        async def commit_until_quiet() -> bool:
            nonlocal committed
            committed += 1
            await _record_one(engine, tenant, committed)
            return await _quiet_lock_held(infra)

        await wait_until(commit_until_quiet, timeout=20, interval=0.005)
        notifications.clear()
        for _ in range(100):  # back to back: the relay finds events at every poll
            committed += 1
            await _record_one(engine, tenant, committed)
        assert len(notifications) <= 10, len(notifications)  # the old trigger: one per commit

        await wait_until(lambda: _equals(stream_count(infra, f"tickets.{tenant}.>"), committed), timeout=20)
        await wait_until(lambda: _not(_quiet_lock_held(infra)), timeout=10)
        await _record_one(engine, tenant, committed + 1)
        await wait_until(
            lambda: _equals(stream_count(infra, f"tickets.{tenant}.>"), committed + 1), timeout=3
        )
    finally:
        stop.set()
        await running
        await listener.close()
        await nc.close()
        await engine.dispose()


async def _truthy(value) -> bool:
    return bool(value)


async def _not(awaitable) -> bool:
    return not await awaitable
