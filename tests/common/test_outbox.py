"""Outbox relay against real PostgreSQL and NATS: order, crash safety, broker outages."""

import asyncio
from types import SimpleNamespace
from uuid import uuid4

import nats
import pytest
from nats.js.errors import NoStreamResponseError
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from libs.common import outbox as outbox_module
from libs.common.db import create_engine
from libs.common.events import ensure_stream
from libs.common.outbox import OutboxRelay
from services.analytics.app import create_app as create_analytics
from services.analytics.settings import Settings as AnalyticsSettings
from services.tickets import models as ticket_models
from services.tickets.app import create_app as create_tickets
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
        from libs.common.events import build_event
        from libs.common.outbox import record_event
        from services.tickets.events import TicketCreated

        async with AsyncSession(engine) as session, session.begin():
            for n in range(5):
                subject, event = build_event(
                    service="tickets",
                    tenant=tenant,
                    aggregate="ticket",
                    event="created",
                    aggregate_id=f"agg-{n}",
                    data=TicketCreated.model_validate(ticket_created_data(n)),
                )
                await record_event(session, ticket_models.outbox, subject, event)

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
        from libs.common.events import build_event
        from libs.common.outbox import record_event
        from services.tickets.events import TicketCreated

        ids = []
        async with AsyncSession(engine) as session, session.begin():
            for n in range(30):
                subject, event = build_event(
                    service="tickets",
                    tenant=tenant,
                    aggregate="ticket",
                    event="created",
                    aggregate_id="same",
                    data=TicketCreated.model_validate(ticket_created_data(n)),
                )
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


async def test_acks_that_never_come_time_out_and_are_released(infra, monkeypatch):
    monkeypatch.setattr(outbox_module, "PUBLISH_ACK_TIMEOUT_S", 0.5)
    tenant = unique_tenant("stall")
    settings = settings_for(infra, TicketSettings, "tickets")
    nc = await nats.connect(infra.nats_url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    try:
        relay = OutboxRelay(
            service="tickets", engine=None, outbox=ticket_models.outbox, nc=nc, settings=settings
        )
        rows = [
            SimpleNamespace(id=n, subject=f"tickets.{tenant}.ticket.created", event_id=uuid4(), payload="{}")
            for n in range(3)
        ]
        await asyncio.to_thread(infra.nats.stop)
        try:
            published, failure = await relay.publish_batch(rows)  # the client buffers; no ack comes
        finally:
            await asyncio.to_thread(infra.nats.start)
        assert published == []
        assert isinstance(failure, TimeoutError)
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
