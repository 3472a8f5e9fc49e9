"""Consumer runner against real NATS and PostgreSQL: exactly-once effects, dead letters."""

import asyncio
import json
import uuid

import nats
import pytest
from sqlalchemy import Column, Integer, Table, Text, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from libs.common.consumer import ConsumerRunner, Subscription, dead_letter_table, inbox_table
from libs.common.db import async_url, create_session_factory, make_metadata
from libs.common.events import CloudEvent, build_event, ensure_stream
from libs.common.settings import CommonSettings
from services.tickets.events import TicketCreated
from tests.conftest import settings_for, ticket_created_data, unique_tenant, wait_until

# The tests run their own consumers on their own tables, so the real services' inboxes never
# see (and swallow) these events.
metadata = make_metadata("consumer_tests")
inbox = inbox_table(metadata)
dead_letters = dead_letter_table(metadata)
effects = Table(
    "effects", metadata, Column("tenant_id", Text, primary_key=True), Column("count", Integer, nullable=False)
)


class Crash(BaseException):
    """Not an Exception: escapes the runner like a killed process would."""


@pytest.fixture(scope="module")
async def test_db(infra):
    engine = create_async_engine(async_url(infra.admin_url))
    async with engine.begin() as conn:
        await conn.exec_driver_sql("CREATE SCHEMA IF NOT EXISTS consumer_tests")
        await conn.run_sync(metadata.create_all)
    yield engine
    await engine.dispose()


async def count_effect(session: AsyncSession, event: CloudEvent) -> None:
    if event.data["subject"] == "poison":
        raise ValueError("this event can never be handled")
    statement = pg_insert(effects).values(tenant_id=event.tenant, count=1)
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=[effects.c.tenant_id], set_={"count": effects.c.count + 1}
        )
    )


def make_runner(infra, nc, engine, tenant: str, runner_class=ConsumerRunner, **overrides) -> ConsumerRunner:
    settings = settings_for(infra, CommonSettings, "tickets", consumer_max_deliver=3, **overrides)
    return runner_class(
        service=f"test-{tenant}",
        subscription=Subscription(stream="TICKETS", handlers={"ticket.created": count_effect}, tenant=tenant),
        nc=nc,
        session_factory=create_session_factory(engine),
        inbox=inbox,
        dead_letters=dead_letters,
        settings=settings,
    )


def ticket_created_event(tenant: str, subject_text: str = "s0") -> tuple[str, CloudEvent]:
    """(subject, event) of a ticket.created event of `tenant`."""
    payload = TicketCreated.model_validate(ticket_created_data(subject=subject_text))
    return build_event(
        service="tickets", tenant=tenant, aggregate="ticket", event="created", aggregate_id="t1", data=payload
    )


async def publish_ticket_created(nc, tenant: str, subject_text: str) -> CloudEvent:
    subject, event = ticket_created_event(tenant, subject_text)
    await nc.jetstream().publish(
        subject, event.model_dump_json().encode(), headers={"Nats-Msg-Id": str(event.id)}
    )
    return event


async def effect_count(engine, tenant: str) -> int:
    async with engine.connect() as conn:
        return await conn.scalar(select(effects.c.count).where(effects.c.tenant_id == tenant)) or 0


async def run_until(runner: ConsumerRunner, predicate, timeout: float = 20.0) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        await wait_until(predicate, timeout=timeout)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)


async def test_crash_after_commit_before_ack_is_redelivered_and_counted_once(infra, test_db):
    tenant = unique_tenant("redeliver")
    nc = await nats.connect(infra.nats_url)
    try:
        await ensure_stream(nc.jetstream(), "TICKETS", CommonSettings())

        class CrashBeforeAck(ConsumerRunner):
            async def ack(self, msg):
                raise Crash()

        crashing = make_runner(infra, nc, test_db, tenant, CrashBeforeAck, consumer_ack_wait_s=1.0)
        await publish_ticket_created(nc, tenant, "elevator")
        with pytest.raises(Crash):
            await crashing.run(asyncio.Event())
        assert await effect_count(test_db, tenant) == 1  # the effect committed, the ack never happened

        restarted = make_runner(infra, nc, test_db, tenant, consumer_ack_wait_s=1.0)

        async def redelivered_and_acked() -> bool:
            info = await nc.jetstream().consumer_info("TICKETS", restarted.durable)
            return info.num_ack_pending == 0 and info.num_pending == 0 and info.delivered.consumer_seq >= 2

        await run_until(restarted, redelivered_and_acked)
        assert await effect_count(test_db, tenant) == 1
    finally:
        await nc.close()


async def test_poison_event_is_dead_lettered_and_later_events_still_flow(infra, test_db):
    tenant = unique_tenant("poison")
    nc = await nats.connect(infra.nats_url)
    try:
        await ensure_stream(nc.jetstream(), "TICKETS", CommonSettings())
        runner = make_runner(infra, nc, test_db, tenant)
        poison = await publish_ticket_created(nc, tenant, "poison")
        for n in range(5):
            await publish_ticket_created(nc, tenant, f"fine {n}")

        async def dead_lettered() -> bool:
            async with test_db.connect() as conn:
                return bool(
                    await conn.scalar(
                        select(func.count())
                        .select_from(dead_letters)
                        .where(dead_letters.c.tenant_id == tenant)
                    )
                )

        await run_until(runner, lambda: _all(effect_count(test_db, tenant), 5, dead_lettered()))
        async with test_db.connect() as conn:
            row = (await conn.execute(select(dead_letters).where(dead_letters.c.tenant_id == tenant))).one()
        assert row.event_id == poison.id
        assert row.deliveries == 3
        assert "can never be handled" in row.error
        assert row.consumer == f"test-{tenant}--TICKETS"
        assert row.payload["data"]["subject"] == "poison"
        assert await effect_count(test_db, tenant) == 5
    finally:
        await nc.close()


async def _all(count_awaitable, expected: int, flag_awaitable) -> bool:
    count, flag = await count_awaitable, await flag_awaitable
    return count == expected and flag


async def test_malformed_envelope_goes_straight_to_dead_letters(infra, test_db):
    tenant = unique_tenant("garbage")
    nc = await nats.connect(infra.nats_url)
    try:
        await ensure_stream(nc.jetstream(), "TICKETS", CommonSettings())
        runner = make_runner(infra, nc, test_db, tenant)
        await nc.jetstream().publish(f"tickets.{tenant}.ticket.created", b"{not json")
        await nc.jetstream().publish(f"tickets.{tenant}.ticket.created", json.dumps({"id": "x"}).encode())

        async def two_dead_letters() -> bool:
            async with test_db.connect() as conn:
                rows = await conn.scalar(
                    select(func.count())
                    .select_from(dead_letters)
                    .where(dead_letters.c.subject == f"tickets.{tenant}.ticket.created")
                )
                return rows == 2

        await run_until(runner, two_dead_letters)
        async with test_db.connect() as conn:
            raws = (
                await conn.execute(
                    select(dead_letters.c.raw, dead_letters.c.deliveries).where(
                        dead_letters.c.subject == f"tickets.{tenant}.ticket.created"
                    )
                )
            ).all()
        assert {r.raw for r in raws} == {"{not json", '{"id": "x"}'}
        assert {r.deliveries for r in raws} == {1}
        # Unreadable, yet the subject says whose it is: that tenant's admins see it.
        async with test_db.connect() as conn:
            tenants = await conn.scalars(
                select(dead_letters.c.tenant_id).where(
                    dead_letters.c.subject == f"tickets.{tenant}.ticket.created"
                )
            )
            assert list(tenants) == [tenant, tenant]
    finally:
        await nc.close()


async def test_an_envelope_contradicting_its_subject_is_dead_lettered_not_applied(infra, test_db):
    """Handlers are chosen by the subject and count for the envelope's tenant: an event claiming
    another type or another tenant than its subject must not be counted as what it is not."""
    tenant, other = unique_tenant("liar"), unique_tenant("victim")
    nc = await nats.connect(infra.nats_url)
    try:
        await ensure_stream(nc.jetstream(), "TICKETS", CommonSettings())
        runner = make_runner(infra, nc, test_db, tenant)
        subject, event = ticket_created_event(tenant)
        for lie in ({"type": "helpdesk.tickets.ticket.exploded.v9"}, {"tenant": other}):
            forged = event.model_copy(update={"id": uuid.uuid4(), **lie})
            await nc.jetstream().publish(subject, forged.model_dump_json().encode())
        await publish_ticket_created(nc, tenant, "a real one")

        async def settled() -> bool:
            async with test_db.connect() as conn:
                letters = await conn.scalar(
                    select(func.count()).select_from(dead_letters).where(dead_letters.c.subject == subject)
                )
            return letters == 2 and await effect_count(test_db, tenant) == 1

        await run_until(runner, settled)
        assert await effect_count(test_db, other) == 0
        async with test_db.connect() as conn:
            rows = (
                await conn.execute(
                    select(dead_letters.c.tenant_id, dead_letters.c.error).where(
                        dead_letters.c.subject == subject
                    )
                )
            ).all()
        assert {row.tenant_id for row in rows} == {tenant}
        assert all(row.error.startswith("envelope does not match its subject") for row in rows)
    finally:
        await nc.close()


async def test_consumer_config_is_updated_in_place(infra):
    nc = await nats.connect(infra.nats_url)
    try:
        tenant = unique_tenant("cfg")
        await ensure_stream(nc.jetstream(), "TICKETS", CommonSettings())
        engine = create_async_engine(async_url(infra.admin_url))
        first = make_runner(infra, nc, engine, tenant, consumer_ack_wait_s=5.0)
        await first.ensure_consumer()
        second = make_runner(infra, nc, engine, tenant, consumer_ack_wait_s=7.0)
        await second.ensure_consumer()
        info = await nc.jetstream().consumer_info("TICKETS", second.durable)
        assert info.config.ack_wait == 7.0
        assert getattr(info.config.ack_policy, "value", info.config.ack_policy) == "explicit"
        assert info.config.filter_subjects == [f"tickets.{tenant}.ticket.created"]
        await engine.dispose()
    finally:
        await nc.close()


async def test_batch_handler_gets_whole_fetches_and_never_a_redelivered_event(infra, test_db):
    tenant = unique_tenant("batch")
    nc = await nats.connect(infra.nats_url)
    calls: list[int] = []

    async def count_batch(session: AsyncSession, events: list[CloudEvent]) -> None:
        calls.append(len(events))
        statement = pg_insert(effects).values(tenant_id=tenant, count=len(events))
        await session.execute(
            statement.on_conflict_do_update(
                index_elements=[effects.c.tenant_id], set_={"count": effects.c.count + len(events)}
            )
        )

    try:
        await ensure_stream(nc.jetstream(), "TICKETS", CommonSettings())
        runner = ConsumerRunner(
            service=f"test-{tenant}",
            subscription=Subscription(
                stream="TICKETS", batch_handlers={"ticket.created": count_batch}, tenant=tenant
            ),
            nc=nc,
            session_factory=create_session_factory(test_db),
            inbox=inbox,
            dead_letters=dead_letters,
            settings=settings_for(infra, CommonSettings, "tickets"),
        )
        await runner.ensure_consumer()
        events = [await publish_ticket_created(nc, tenant, f"s{n}") for n in range(10)]
        # The same event again under another message id: JetStream keeps it, the inbox must not.
        again = events[3]
        await nc.jetstream().publish(
            f"tickets.{tenant}.ticket.created",
            again.model_dump_json().encode(),
            headers={"Nats-Msg-Id": "other-id"},
        )

        async def all_acked() -> bool:
            info = await nc.jetstream().consumer_info("TICKETS", runner.durable)
            return info.num_pending == 0 and info.num_ack_pending == 0 and info.delivered.consumer_seq == 11

        await run_until(runner, all_acked)
        assert await effect_count(test_db, tenant) == 10
        assert sum(calls) == 10
        assert len(calls) < 10  # batched, not one call per event
    finally:
        await nc.close()
