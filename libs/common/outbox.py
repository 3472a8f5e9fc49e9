"""Transactional outbox: events are rows written in the caller's transaction, then relayed to JetStream.

The relay claims pending rows in id order, publishes them with `Nats-Msg-Id` = event id, waits
for the JetStream acks, and only then marks the rows sent. A crash anywhere re-publishes, and the
stream's duplicate window drops the copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import structlog
from nats.aio.client import Client as NATS
from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    DateTime,
    Index,
    MetaData,
    Table,
    Text,
    bindparam,
    cast,
    delete,
    func,
    insert,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.sql.selectable import CTE

from libs.common.db import plain_dsn
from libs.common.events import CloudEvent
from libs.common.metrics import EVENTS_PUBLISHED, OUTBOX_BACKLOG
from libs.common.settings import CommonSettings

log = structlog.get_logger()

# Published rows are kept this long for inspection, then deleted by the relay.
PUBLISHED_RETENTION = timedelta(days=3)
PUBLISH_ACK_TIMEOUT_S = 5.0  # for one batch: its publishes (a full client buffer) and all acks
QUIET_LOCK_WAIT_MS = 100  # see OutboxRelay._set_quiet


def outbox_table(metadata: MetaData) -> Table:
    """The `<schema>.outbox` table; call once from the service's models module."""
    return Table(
        "outbox",
        metadata,
        Column("id", BigInteger, primary_key=True, autoincrement=True),
        Column("event_id", UUID(as_uuid=True), nullable=False, unique=True),
        Column("subject", Text, nullable=False),
        Column("aggregate_id", Text, nullable=False),
        Column("payload", JSONB, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("published_at", DateTime(timezone=True)),
        Index("ix_outbox_pending", "id", postgresql_where=text("published_at IS NULL")),
    )


def notify_channel(schema: str) -> str:
    return f"{schema}_outbox"


def quiet_lock_key(schema: str) -> int:
    """The advisory lock a busy relay of `schema` holds (on its LISTEN connection) while it polls
    on its own. The outbox trigger NOTIFYs only if it can take this lock shared, so under load
    commits skip the NOTIFY: PostgreSQL serialises the commits of notifying transactions (a
    database-wide lock from pre-commit to the end of the transaction) and wakes every listener,
    which cost ~7 % of a ticket create (bench/README.md). The trigger holds the number as
    written by its migration (`notify_only_idle_relays`): never change how it is made."""
    return zlib.crc32(f"helpdesk-outbox-quiet:{schema}".encode())


async def record_event(session: AsyncSession, outbox: Table, subject: str, event: CloudEvent) -> None:
    """Add an event to the outbox in the caller's transaction (never publishes directly)."""
    await record_events(session, outbox, [(subject, event)])


async def record_events(
    session: AsyncSession, outbox: Table, events: Sequence[tuple[str, CloudEvent]]
) -> None:
    """Add (subject, event) pairs to the outbox in the caller's transaction, in this order, in
    one statement however many there are (an executemany, which asyncpg sends in one round trip)."""
    if not events:
        return
    conn = await session.connection()
    await conn.execute(
        insert(outbox),
        [
            {
                "event_id": event.id,
                "subject": subject,
                "aggregate_id": event.subject,
                "payload": event.model_dump(mode="json"),
            }
            for subject, event in events
        ],
    )


def outbox_row_cte(outbox: Table, source: CTE, data_from_source: Sequence[str] = ()) -> CTE:
    """An outbox INSERT as a CTE, to attach (`.add_cte()`) to a statement that selects from
    `source`, the state change's own CTE (an INSERT or UPDATE ... RETURNING).

    The change and its event row then travel in one statement: one round trip fewer on hot
    write paths, same transaction. The event row is written only if the change wrote a row, and
    the fields of the event's `data` named in `data_from_source` are taken from that row: values
    the database makes (a number from a sequence). Run the statement with `db.fetch_all` and fill
    the CTE's parameters with `outbox_row_params()`.
    """
    payload: ColumnElement[Any] = cast(bindparam("outbox_payload"), JSONB)
    for field in data_from_source:
        path = literal(["data", field], ARRAY(Text))
        payload = func.jsonb_set(payload, path, func.to_jsonb(source.c[field]), type_=JSONB)
    row = select(
        cast(bindparam("outbox_event_id"), outbox.c.event_id.type),
        cast(bindparam("outbox_subject"), Text),
        cast(bindparam("outbox_aggregate_id"), Text),
        payload,
    ).select_from(source)
    return (
        insert(outbox)
        .from_select(["event_id", "subject", "aggregate_id", "payload"], row)
        .cte("recorded_event")
    )


def outbox_row_params(subject: str, event: CloudEvent) -> dict[str, Any]:
    """Driver-level parameters of `outbox_row_cte` (the payload as JSON text)."""
    return {
        "outbox_event_id": event.id,
        "outbox_subject": subject,
        "outbox_aggregate_id": event.subject,
        "outbox_payload": event.model_dump_json(),
    }


class OutboxRelay:
    """Publishes pending outbox rows of one schema; safe to run in every replica."""

    def __init__(
        self, *, service: str, engine: AsyncEngine, outbox: Table, nc: NATS, settings: CommonSettings
    ) -> None:
        self.service = service
        self.engine = engine
        self.outbox = outbox
        self.nc = nc
        self.js = nc.jetstream()  # one context: it holds the replies of pipelined publishes
        self.settings = settings
        self.schema = outbox.schema or "public"
        # One active relay per schema keeps per-aggregate order across replicas; the others
        # wait on the advisory lock and take over the moment it is released.
        self.lock_key = zlib.crc32(f"helpdesk-outbox:{self.schema}".encode())
        self.wakeup = asyncio.Event()
        self.standby = False  # another replica's relay holds the lock
        self._listen_conn: asyncpg.Connection | None = None
        self._quiet = False  # this relay holds the quiet lock: commits do not NOTIFY
        self._last_cleanup = datetime.min.replace(tzinfo=UTC)
        self._last_housekeeping = datetime.min.replace(tzinfo=UTC)
        # The payload as the JSON text PostgreSQL stores (not decoded and encoded again).
        self._claim_pending = (
            select(
                outbox.c.id,
                outbox.c.subject,
                outbox.c.event_id,
                cast(outbox.c.payload, Text).label("payload"),
            )
            .where(outbox.c.published_at.is_(None))
            .order_by(outbox.c.id)
            .limit(settings.outbox_batch_size)
            .with_for_update(skip_locked=True)
        )
        # `= ANY(array)`: one cached statement for every batch size (an IN list compiles per size).
        self._mark_published = (
            update(outbox)
            .where(outbox.c.id == func.any(bindparam("ids", type_=ARRAY(BigInteger))))
            .values(published_at=func.now())
        )

    async def publish_batch(self, rows: list[Row]) -> tuple[list[int], Exception | None]:
        """Publish rows in order, pipelined: all are sent, then the acks awaited (one flush and one
        wake-up per batch instead of a round trip per row). Returns the ids of the leading rows
        JetStream acked and the error that stopped the rest (None when all went).

        The connection delivers the messages in order, so the stream stores them in outbox order.
        Only if one message fails while a later one is stored (an error for that one message)
        is the failed one stored after it on retry; the later one's re-publication is dropped as
        a duplicate.
        """
        acks: list[asyncio.Future] = []
        published: list[int] = []
        try:
            # One deadline for the batch, not nats-py's `wait_stall` per message: that one runs
            # each publish under asyncio.wait_for, which tripled the relay's CPU per event.
            async with asyncio.timeout(PUBLISH_ACK_TIMEOUT_S):
                for row in rows:
                    headers = {"Nats-Msg-Id": str(row.event_id)}
                    acks.append(
                        await self.js.publish_async(row.subject, row.payload.encode(), headers=headers)
                    )
                for row, ack in zip(rows, acks, strict=True):
                    if (await ack).duplicate:
                        log.info("outbox_duplicate_suppressed", event_id=str(row.event_id))
                    published.append(row.id)
        except Exception as exc:  # NATS down or slow: keep what was acked, retry the rest
            return published, exc
        finally:
            for ack in acks:
                ack.cancel()  # frees the client's slot of an ack that will not be awaited
        return published, None

    async def mark_published(self, conn, ids: list[int]) -> None:
        await conn.execute(self._mark_published, {"ids": ids})

    async def relay_pending_events(self) -> int:
        """Relay one batch; returns how many rows were published. Raises if publishing failed."""
        async with self.engine.connect() as conn, conn.begin():
            self.standby = not await conn.scalar(select(func.pg_try_advisory_xact_lock(self.lock_key)))
            if self.standby:
                return 0
            rows = (await conn.execute(self._claim_pending)).all()
            published, failure = await self.publish_batch(rows)
            if published:
                await self.mark_published(conn, published)
        if published:
            EVENTS_PUBLISHED.labels(self.service).inc(len(published))
        if failure is not None:
            raise failure
        return len(published)

    async def _update_backlog_and_cleanup(self) -> None:
        """Every few seconds: the backlog gauge, and deleting long-published rows."""
        now = datetime.now(UTC)
        if now - self._last_housekeeping < timedelta(seconds=5):
            return
        self._last_housekeeping = now
        async with self.engine.connect() as conn, conn.begin():
            backlog = await conn.scalar(
                select(func.count()).select_from(self.outbox).where(self.outbox.c.published_at.is_(None))
            )
            OUTBOX_BACKLOG.labels(self.service).set(backlog or 0)
            if now - self._last_cleanup > timedelta(minutes=10):
                self._last_cleanup = now
                await conn.execute(
                    delete(self.outbox).where(self.outbox.c.published_at < now - PUBLISHED_RETENTION)
                )

    async def _listen(self, stop: asyncio.Event) -> None:
        """LISTEN for commits that added outbox rows; reconnects, and polling covers any gap."""
        channel = notify_channel(self.schema)
        while not stop.is_set():
            conn = None
            try:
                conn = await asyncpg.connect(
                    plain_dsn(self.settings.database_url),
                    # Taking the quiet lock waits this long at most for commits notifying now.
                    server_settings={"lock_timeout": f"{QUIET_LOCK_WAIT_MS}ms"},
                )
                await conn.add_listener(channel, lambda *_: self.wakeup.set())
                self._listen_conn = conn
                self.wakeup.set()  # catch anything committed while we were not listening
                while not conn.is_closed():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=1.0)
                    if stop.is_set():
                        return
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("outbox_listen_failed", error=str(exc))
                await asyncio.sleep(2.0)
            finally:
                self._listen_conn = None
                self._quiet = False  # a closed connection holds no lock
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()

    async def _set_quiet(self, quiet: bool) -> bool:
        """Take (or give back) the quiet lock; returns whether this relay was quiet before.

        Best effort: without the LISTEN connection, or while notifying commits hold the lock
        longer than `QUIET_LOCK_WAIT_MS`, commits simply keep notifying.
        """
        was_quiet, conn = self._quiet, self._listen_conn
        if quiet == was_quiet or conn is None:
            return was_quiet
        key = quiet_lock_key(self.schema)
        try:
            if quiet:
                await conn.execute("SELECT pg_advisory_lock($1)", key)
            else:
                await conn.execute("SELECT pg_advisory_unlock($1)", key)
            self._quiet = quiet
        except asyncpg.LockNotAvailableError:
            pass
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("outbox_quiet_lock_failed", error=repr(exc))
            self._quiet = False  # the connection is in doubt: let commits notify
            with contextlib.suppress(Exception):
                await conn.close()  # the listener reconnects
        return was_quiet

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until `stop` is set: straight on while a batch is full, every linger while events
        keep coming (quiet: commits do not NOTIFY meanwhile), and when idle on NOTIFY or every
        poll interval."""
        listener = asyncio.create_task(self._listen(stop))
        failures = 0
        linger = self.settings.outbox_linger_s
        try:
            while not stop.is_set():
                try:
                    self.wakeup.clear()  # before the batch, so a commit during it wakes us again
                    count = await self.relay_pending_events()
                    failures = 0
                    await self._update_backlog_and_cleanup()
                    if count >= self.settings.outbox_batch_size:
                        continue  # more waiting: no sleep
                    if count and not self.standby:  # busy: poll again after gathering a batch
                        await asyncio.gather(self._set_quiet(True), asyncio.sleep(linger))
                        continue
                    if await self._set_quiet(False):
                        # Commits of the last moments may have skipped their NOTIFY: look once
                        # more. One that commits later still is found by the next poll.
                        continue
                    # A standby relay only polls (the active one answers the NOTIFYs), so it takes
                    # over within one poll interval if the active one goes away.
                    wait_for = stop.wait() if self.standby else self._wait_for_wakeup(stop)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wait_for, timeout=self.settings.outbox_poll_interval_s)
                    if linger and not stop.is_set():
                        await asyncio.sleep(linger)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    # Back off without listening: a burst of NOTIFYs must not hammer a dead broker.
                    failures += 1
                    delay = min(0.2 * 2**failures, 5.0)
                    log.warning("outbox_relay_failed", error=repr(exc), retry_in_s=delay)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=delay)
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await listener

    async def _wait_for_wakeup(self, stop: asyncio.Event) -> None:
        stop_wait = asyncio.create_task(stop.wait())
        wake_wait = asyncio.create_task(self.wakeup.wait())
        try:
            await asyncio.wait({stop_wait, wake_wait}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop_wait.cancel()
            wake_wait.cancel()
