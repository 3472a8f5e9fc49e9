"""Durable JetStream consumers with an inbox: each event's effect commits exactly once.

Per message: the handler's effect and the event id (inbox primary key) commit in one
transaction, then the message is acked. A redelivery finds the id in the inbox and is only
acked. Failures are nak'ed with backoff; after `consumer_max_deliver` attempts the message is
stored in the dead-letter table and terminated, so it is never silently dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pydantic import ValidationError
from sqlalchemy import BigInteger, Column, DateTime, Index, Integer, MetaData, Table, Text, func, insert
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from libs.common.auth import TENANT_PATTERN
from libs.common.events import STREAMS, CloudEvent
from libs.common.metrics import CONSUMER_LAG, DEAD_LETTERS, EVENTS_CONSUMED, EVENTS_DUPLICATE, EVENTS_FAILED
from libs.common.settings import CommonSettings

log = structlog.get_logger()

Handler = Callable[[AsyncSession, CloudEvent], Awaitable[None]]
BatchHandler = Callable[[AsyncSession, list[CloudEvent]], Awaitable[None]]


def inbox_table(metadata: MetaData) -> Table:
    return Table(
        "inbox",
        metadata,
        Column("event_id", UUID(as_uuid=True), primary_key=True),
        Column("subject", Text, nullable=False),
        Column("received_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    )


def dead_letter_table(metadata: MetaData, *, as_first_created: bool = False) -> Table:
    """The dead-letter table; `as_first_created` without the columns later migrations added
    (for the initial migrations, which must create what they always created)."""
    replay_columns = [
        # Set when a tenant admin replayed the event successfully (libs/common/dead_letters.py).
        Column("replayed_at", DateTime(timezone=True)),
        Column("replayed_by", Text),
    ]
    return Table(
        "dead_letters",
        metadata,
        Column("id", BigInteger, primary_key=True, autoincrement=True),
        Column("event_id", UUID(as_uuid=True)),
        Column("tenant_id", Text),
        Column("stream", Text, nullable=False),
        Column("consumer", Text, nullable=False),
        Column("subject", Text, nullable=False),
        Column("payload", JSONB),
        Column("raw", Text),
        Column("error", Text, nullable=False),
        Column("deliveries", Integer, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        *([] if as_first_created else replay_columns),
        Index("ix_dead_letters_tenant_id_id", "tenant_id", "id"),
    )


@dataclass
class Subscription:
    """What one service consumes from one stream: handlers keyed by "<aggregate>.<event>"."""

    stream: str
    handlers: dict[str, Handler] = field(default_factory=dict)
    # For high-volume events whose effect aggregates well: one call per fetched batch.
    batch_handlers: dict[str, BatchHandler] = field(default_factory=dict)
    tenant: str = "*"  # one tenant's events only, or every tenant's

    @property
    def filter_subjects(self) -> list[str]:
        prefix = STREAMS[self.stream]
        return [f"{prefix}.{self.tenant}.{key}" for key in sorted({*self.handlers, *self.batch_handlers})]


def durable_name(service: str, stream: str) -> str:
    return f"{service}--{stream}"


def handler_key(subject: str) -> str:
    """The handlers' key of a subject: `<aggregate>.<event>` of `<service>.<tenant>.<aggregate>.<event>`."""
    return ".".join(subject.split(".")[2:])


def subject_tenant(subject: str) -> str | None:
    """The tenant a subject names (`<service>.<tenant>.<aggregate>.<event>`), if it names one."""
    tokens = subject.split(".")
    return tokens[1] if len(tokens) == 4 and TENANT_PATTERN.match(tokens[1]) else None


def envelope_mismatch(subject: str, event: CloudEvent) -> str | None:
    """Why an event does not belong on its subject, or None. Handlers are chosen by the subject
    and trust the envelope's tenant: an event whose type or tenant says otherwise is refused,
    not counted as something it is not (or for another tenant)."""
    service, tenant, aggregate, name = [*subject.split("."), "", "", "", ""][:4]
    if event.tenant != tenant:
        return f"event of tenant {event.tenant!r} on a subject of tenant {tenant!r}"
    expected = f"helpdesk.{service}.{aggregate}.{name}.v"
    if not (event.type.startswith(expected) and event.type[len(expected) :].isdigit()):
        return f"event type {event.type!r} on subject {subject!r} (expected {expected}<n>)"
    return None


async def record_in_inbox(inbox: Table, session: AsyncSession, events: list[tuple[str, CloudEvent]]) -> set:
    """Insert the (subject, event) ids into the inbox in the caller's transaction; returns those
    not seen before (the others are redeliveries, already handled)."""
    inserted = await session.scalars(
        pg_insert(inbox)
        .values([{"event_id": event.id, "subject": subject} for subject, event in events])
        .on_conflict_do_nothing()
        .returning(inbox.c.event_id)
    )
    return set(inserted)


async def run_handlers(
    subscription: Subscription, session: AsyncSession, events: list[tuple[str, CloudEvent]]
) -> None:
    """Apply (subject, event) pairs in the caller's transaction: each event's handler, or one
    call of a batch handler per kind. Kinds the subscription does not handle are skipped."""
    batches: dict[str, list[CloudEvent]] = {}
    for subject, event in events:
        key = handler_key(subject)
        if key in subscription.batch_handlers:
            batches.setdefault(key, []).append(event)
            continue
        handler = subscription.handlers.get(key)
        if handler is None:
            continue
        structlog.contextvars.bind_contextvars(
            event_id=str(event.id), correlation_id=event.correlationid, tenant=event.tenant
        )
        try:
            await handler(session, event)
        finally:
            structlog.contextvars.unbind_contextvars("event_id", "correlation_id", "tenant")
    for key, batch in batches.items():
        await subscription.batch_handlers[key](session, batch)


class ConsumerRunner:
    """Runs one durable pull consumer for a service; all replicas share it."""

    def __init__(
        self,
        *,
        service: str,
        subscription: Subscription,
        nc: NATS,
        session_factory: async_sessionmaker[AsyncSession],
        inbox: Table,
        dead_letters: Table,
        settings: CommonSettings,
    ) -> None:
        self.service = service
        self.subscription = subscription
        self.stream = subscription.stream
        self.durable = durable_name(service, subscription.stream)
        self.nc = nc
        self.session_factory = session_factory
        self.inbox = inbox
        self.dead_letters = dead_letters
        self.settings = settings

    def consumer_config(self) -> ConsumerConfig:
        return ConsumerConfig(
            name=self.durable,
            durable_name=self.durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self.settings.consumer_ack_wait_s,
            # The runner counts deliveries itself and dead-letters at consumer_max_deliver; the
            # server never gives up on its own, so a message is kept even if the dead-letter
            # write fails.
            max_deliver=-1,
            max_ack_pending=1000,
            filter_subjects=self.subscription.filter_subjects,
        )

    async def ensure_consumer(self) -> None:
        """Create the durable consumer or update it to the wanted config (idempotent)."""
        await self.nc.jetstream().add_consumer(self.stream, self.consumer_config())

    async def ack(self, msg: Msg) -> None:
        await msg.ack()

    async def handle_batch(self, messages: list[Msg]) -> None:
        """Handle one fetch: all events in one transaction, then ack them all.

        One commit per batch instead of per event keeps consumers cheap under load. If any
        handler fails, the transaction rolls back and the batch is handled again one event at
        a time, so only the failing event is retried or dead-lettered.
        """
        events = [(msg, event) for msg in messages if (event := await self._parse(msg)) is not None]
        if len(events) > 1:
            heartbeat = asyncio.create_task(self._keep_in_progress(*[msg for msg, _ in events]))  # noqa: RUF006
            try:
                async with self.session_factory() as session, session.begin():
                    fresh = await self._record_in_inbox(session, events)
                    # Fresh ids, each once: one fetch may hold the same event twice.
                    firsts = {pair[1].id: pair for pair in reversed(events) if pair[1].id in fresh}
                    await self._run_handlers(
                        session, [pair for pair in events if firsts.get(pair[1].id) is pair]
                    )
            except Exception as exc:
                log.info("event_batch_failed_handling_one_by_one", error=repr(exc), size=len(events))
            else:
                for pair in events:
                    await self._acknowledge(pair[0], duplicate=firsts.get(pair[1].id) is not pair)
                return
            finally:
                heartbeat.cancel()
        for msg, event in events:
            await self.handle_event(msg, event)

    async def handle_event(self, msg: Msg, event: CloudEvent) -> None:
        """One event in its own transaction; on failure nak with backoff or dead-letter."""
        deliveries = msg.metadata.num_delivered
        heartbeat = asyncio.create_task(self._keep_in_progress(msg))
        try:
            async with self.session_factory() as session, session.begin():
                fresh = await self._record_in_inbox(session, [(msg, event)])
                if fresh:
                    await self._run_handlers(session, [(msg, event)])
            heartbeat.cancel()
            await self._acknowledge(msg, duplicate=not fresh)
        except Exception as exc:
            heartbeat.cancel()
            EVENTS_FAILED.labels(self.service, self.stream).inc()
            if deliveries >= self.settings.consumer_max_deliver:
                await self._dead_letter_and_term(msg, event, repr(exc), deliveries)
            else:
                backoff = self.settings.consumer_backoff_s
                delay = backoff[min(deliveries - 1, len(backoff) - 1)]
                log.warning(
                    "event_handler_failed",
                    error=repr(exc),
                    event_id=str(event.id),
                    deliveries=deliveries,
                    retry_in_s=delay,
                )
                await msg.nak(delay=delay)

    async def _parse(self, msg: Msg) -> CloudEvent | None:
        """The message's event; None when it was dead-lettered instead (no retry can fix it)."""
        deliveries = msg.metadata.num_delivered
        try:
            event = CloudEvent.model_validate_json(msg.data)
        except ValidationError as exc:
            await self._dead_letter_and_term(msg, None, f"invalid CloudEvent envelope: {exc}", deliveries)
            return None
        mismatch = envelope_mismatch(msg.subject, event)
        if mismatch is not None:
            error = f"envelope does not match its subject: {mismatch}"
            await self._dead_letter_and_term(msg, event, error, deliveries)
            return None
        return event

    async def _record_in_inbox(self, session: AsyncSession, events: list[tuple[Msg, CloudEvent]]) -> set:
        return await record_in_inbox(self.inbox, session, [(msg.subject, event) for msg, event in events])

    async def _run_handlers(self, session: AsyncSession, events: list[tuple[Msg, CloudEvent]]) -> None:
        await run_handlers(self.subscription, session, [(msg.subject, event) for msg, event in events])

    async def _acknowledge(self, msg: Msg, *, duplicate: bool) -> None:
        if duplicate:
            EVENTS_DUPLICATE.labels(self.service, self.stream).inc()
            log.info("event_duplicate_skipped", subject=msg.subject)
        await self.ack(msg)
        EVENTS_CONSUMED.labels(self.service, self.stream).inc()

    async def _keep_in_progress(self, *messages: Msg) -> None:
        """Long handlers tell the server they are alive so it does not redeliver meanwhile."""
        interval = max(self.settings.consumer_ack_wait_s / 3, 0.5)
        while True:
            await asyncio.sleep(interval)
            for msg in messages:
                await msg.in_progress()

    async def _dead_letter_and_term(
        self, msg: Msg, event: CloudEvent | None, error: str, deliveries: int
    ) -> None:
        try:
            async with self.session_factory() as session, session.begin():
                await session.execute(
                    insert(self.dead_letters).values(
                        event_id=event.id if event else None,
                        # The subject's tenant: an admin of that tenant sees what failed there,
                        # even when the envelope is unreadable or claims another tenant.
                        tenant_id=subject_tenant(msg.subject),
                        stream=self.stream,
                        consumer=self.durable,
                        subject=msg.subject,
                        payload=event.model_dump(mode="json") if event else None,
                        raw=None if event else msg.data.decode("utf-8", "replace")[:65536],
                        error=error[:4000],
                        deliveries=deliveries,
                    )
                )
        except Exception as exc:
            # Keep the message in the stream and try again later rather than lose it.
            log.error("dead_letter_write_failed", error=repr(exc))
            await msg.nak(delay=self.settings.consumer_backoff_s[-1])
            return
        DEAD_LETTERS.labels(self.service, self.stream).inc()
        log.error("event_dead_lettered", subject=msg.subject, error=error, deliveries=deliveries)
        await msg.term()

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch and handle batches until `stop` is set; the batch in hand is always finished."""
        subscription = None
        lag_reporter: asyncio.Task | None = None
        while not stop.is_set():
            try:
                if subscription is None:
                    await self.ensure_consumer()
                    subscription = await self.nc.jetstream().pull_subscribe_bind(
                        durable=self.durable, stream=self.stream
                    )
                    lag_reporter = asyncio.create_task(self._report_lag(subscription, stop))
                try:
                    messages = await subscription.fetch(
                        self.settings.consumer_batch_size, timeout=self.settings.consumer_fetch_timeout_s
                    )
                except (TimeoutError, NatsTimeoutError):
                    continue
                await self.handle_batch(messages)
                if len(messages) < self.settings.consumer_batch_size and self.settings.consumer_linger_s:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=self.settings.consumer_linger_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("consumer_fetch_failed", consumer=self.durable, error=repr(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=1.0)
        if lag_reporter is not None:
            lag_reporter.cancel()
        if subscription is not None:
            # The batch in hand is done and acked; leaving now makes the connection's drain quick.
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

    async def _report_lag(self, subscription, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(Exception):
                info = await subscription.consumer_info()
                CONSUMER_LAG.labels(self.service, self.stream).set(info.num_pending + info.num_ack_pending)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=15.0)


def received_events_table(metadata: MetaData) -> Table:
    """A journal of consumed events, for services that so far only record what they receive."""
    return Table(
        "received_events",
        metadata,
        Column("event_id", UUID(as_uuid=True), primary_key=True),
        Column("tenant_id", Text, nullable=False),
        Column("type", Text, nullable=False),
        Column("aggregate_id", Text, nullable=False),
        Column("data", JSONB, nullable=False),
        Column("received_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Index("ix_received_events_tenant_id_received_at", "tenant_id", "received_at"),
    )


def journal_handler(table: Table) -> BatchHandler:
    """A batch handler that stores events in a `received_events_table`, one INSERT per batch."""
    statement = insert(table)

    async def record_received_events(session: AsyncSession, events: list[CloudEvent]) -> None:
        conn = await session.connection()
        await conn.execute(
            statement,
            [
                {
                    "event_id": event.id,
                    "tenant_id": event.tenant,
                    "type": event.type,
                    "aggregate_id": event.subject,
                    "data": event.data,
                }
                for event in events
            ],
        )

    return record_received_events
