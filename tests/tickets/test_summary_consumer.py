"""The tickets service keeps the newest AI summary on the ticket (real NATS and PostgreSQL)."""

from __future__ import annotations

import contextlib
import itertools
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import httpx
import nats
import pytest_asyncio
from nats.js import JetStreamContext
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from libs.common.db import async_url
from libs.common.events import CloudEvent, build_event, ensure_stream
from libs.common.ids import new_id
from services.summarization.events import SummaryCompleted
from services.tickets.app import create_app
from services.tickets.settings import Settings
from services.tickets.summaries import CompletedSummary
from tests.conftest import app_client, auth_headers, settings_for, unique_tenant, wait_until
from tests.tickets.helpers import admin_fetch, assert_problem, create_ticket, patch_ticket, updates_refused

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
_numbers = itertools.count(1000)


@dataclass
class Harness:
    js: JetStreamContext
    admin: AsyncEngine
    client: httpx.AsyncClient  # the tickets app, its consumers running

    async def create_ticket(self, tenant: str, number: int = 1) -> UUID:
        """A ticket row written directly (the tickets endpoints are being rewritten)."""
        ticket_id = new_id()
        async with self.admin.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO tickets.tickets"
                    " (id, tenant_id, number, subject, requester_id, created_at, updated_at)"
                    " VALUES (:id, :tenant, :number, '엘리베이터 3층 정지', 'r1', :updated_at, :updated_at)"
                ),
                {"id": ticket_id, "tenant": tenant, "number": number, "updated_at": T0},
            )
        return ticket_id

    async def ticket(self, ticket_id: UUID) -> dict[str, Any]:
        async with self.admin.connect() as conn:
            row = await conn.execute(
                text("SELECT summary, version, updated_at FROM tickets.tickets WHERE id = :id"),
                {"id": ticket_id},
            )
            return dict(row.mappings().one())

    async def summary_text(self, ticket_id: UUID) -> str | None:
        summary = (await self.ticket(ticket_id))["summary"]
        return summary["summary"] if summary else None

    async def publish(self, event: CloudEvent, subject: str, msg_id: str | None = None) -> Any:
        body = event.model_dump_json().encode()
        return await self.js.publish(subject, body, headers={"Nats-Msg-Id": msg_id or str(event.id)})

    async def publish_summary(
        self, tenant: str, ticket_id: UUID, summary: str, created_at: datetime, **fields: Any
    ) -> tuple[str, CloudEvent]:
        payload = SummaryCompleted(
            ticket_id=ticket_id,
            summary=summary,
            key_points=["elevator stuck", "floor 3"],
            suggested_category="elevator",
            suggested_priority="high",
            confidence=0.82,
            provider="extractive",
            model="textrank-ko-en",
            created_at=created_at,
            **fields,
        )
        subject, event = build_event(
            service="summarization",
            tenant=tenant,
            aggregate="summary",
            event="completed",
            aggregate_id=str(ticket_id),
            data=payload,
        )
        await self.publish(event, subject)
        return subject, event

    async def dead_letters(self, tenant: str) -> list[dict[str, Any]]:
        async with self.admin.connect() as conn:
            rows = await conn.execute(
                text("SELECT subject, error FROM tickets.dead_letters WHERE tenant_id = :tenant"),
                {"tenant": tenant},
            )
            return [dict(row) for row in rows.mappings()]

    async def settle(self, tenant: str) -> None:
        """Publish a marker summary and wait for it: everything published before is handled too.

        One durable consumer handles the stream in order, each batch committed before the next.
        """
        marker = await self.create_ticket(tenant, number=next(_numbers))
        await self.publish_summary(tenant, marker, "marker", T0)
        await wait_until(lambda: self.summary_text(marker))


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def harness(infra) -> AsyncIterator[Harness]:
    settings = settings_for(infra, Settings, "tickets", consumer_max_deliver=2)
    admin = create_async_engine(async_url(infra.admin_url))
    nc = await nats.connect(infra.nats_url)
    js = nc.jetstream()
    await ensure_stream(js, "SUMMARIZATION", settings)
    # Start from a fresh durable: earlier modules (the e2e stack, with production back-off and
    # ack wait) leave `tickets--SUMMARIZATION` behind with their settings and pending state.
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await js.delete_consumer("SUMMARIZATION", "tickets--SUMMARIZATION")
    try:
        async with app_client(create_app(settings)) as client:  # runs tickets--SUMMARIZATION
            yield Harness(js, admin, client)
    finally:
        await nc.drain()
        await admin.dispose()


async def test_completed_summary_is_shown_on_the_ticket_without_a_new_version(harness: Harness) -> None:
    tenant = unique_tenant("sum")
    ticket_id = await harness.create_ticket(tenant)
    await harness.publish_summary(tenant, ticket_id, "3층에서 엘리베이터가 멈췄습니다.", T0)

    await wait_until(lambda: harness.summary_text(ticket_id))
    row = await harness.ticket(ticket_id)
    assert row["summary"] == {
        "summary": "3층에서 엘리베이터가 멈췄습니다.",
        "key_points": ["elevator stuck", "floor 3"],
        "suggested_category": "elevator",
        "suggested_priority": "high",
        "confidence": 0.82,
        "provider": "extractive",
        "model": "textrank-ko-en",
        "created_at": "2026-11-22T10:00:00Z",
    }
    # An annotation, not an edit: ETag (version) and "recently updated" order stay.
    assert row["version"] == 1
    assert row["updated_at"] == T0


async def test_a_summary_renews_the_reads_etag_but_an_edit_with_the_old_one_still_saves(
    infra, harness: Harness
) -> None:
    tenant = unique_tenant("sum")
    headers = auth_headers(infra, tenant, ["agent"])
    ticket = await create_ticket(harness.client, headers, subject="Elevator stuck on floor 3")
    assert ticket["summary"] is None
    before = await harness.client.get(f"/api/v1/tickets/{ticket['id']}", headers=headers)

    await harness.publish_summary(tenant, UUID(ticket["id"]), "Elevator stuck on floor 3.", T0)
    await wait_until(lambda: harness.summary_text(UUID(ticket["id"])))

    after = await harness.client.get(f"/api/v1/tickets/{ticket['id']}", headers=headers)
    assert after.status_code == 200
    summary = after.json()["summary"]
    assert summary["summary"] == "Elevator stuck on floor 3."
    assert (summary["suggested_category"], summary["suggested_priority"]) == ("elevator", "high")
    assert summary["key_points"] == ["elevator stuck", "floor 3"]
    # The body changed, so must the ETag (a cached copy would keep no summary); same version.
    assert before.headers["etag"] == 'W/"1"'
    assert re.fullmatch(r'W/"1-[0-9a-f]{8}"', after.headers["etag"]), after.headers["etag"]
    url = f"/api/v1/tickets/{ticket['id']}"
    stale = await harness.client.get(url, headers=headers | {"If-None-Match": before.headers["etag"]})
    assert stale.status_code == 200 and stale.json()["summary"] is not None
    current = await harness.client.get(url, headers=headers | {"If-None-Match": after.headers["etag"]})
    assert current.status_code == 304 and current.content == b""
    assert current.headers["etag"] == after.headers["etag"]
    # An agent who read the ticket before the summary arrived can still save their edit.
    response = await patch_ticket(harness.client, headers, ticket, priority="urgent")
    assert response.status_code == 200, response.text
    assert response.json()["summary"]["summary"] == "Elevator stuck on floor 3."
    # And the ETag read with the summary is as good in If-Match.
    edit = headers | {"If-Match": response.headers["etag"]}
    again = await harness.client.patch(url, json={"priority": "low"}, headers=edit)
    assert again.status_code == 200, again.text
    assert again.headers["etag"].startswith('W/"3-')


async def test_newer_summary_replaces_and_older_one_is_ignored(harness: Harness) -> None:
    tenant = unique_tenant("sum")
    ticket_id = await harness.create_ticket(tenant)
    await harness.publish_summary(tenant, ticket_id, "first", T0)
    await wait_until(lambda: _equals(harness.summary_text(ticket_id), "first"))

    await harness.publish_summary(tenant, ticket_id, "second", T0 + timedelta(minutes=5))
    await wait_until(lambda: _equals(harness.summary_text(ticket_id), "second"))

    # Out of order: a summary made before "second" arrives after it.
    await harness.publish_summary(tenant, ticket_id, "stale", T0 + timedelta(minutes=1))
    await harness.publish_summary(tenant, ticket_id, "same time", T0 + timedelta(minutes=5))
    await harness.settle(tenant)
    summary = (await harness.ticket(ticket_id))["summary"]
    assert summary["summary"] == "second"
    assert summary["created_at"] == "2026-11-22T10:05:00Z"
    assert await harness.dead_letters(tenant) == []


async def test_redelivered_event_has_one_effect(harness: Harness) -> None:
    tenant = unique_tenant("sum")
    ticket_id = await harness.create_ticket(tenant)
    subject, event = await harness.publish_summary(tenant, ticket_id, "once", T0)
    await wait_until(lambda: harness.summary_text(ticket_id))
    # Clear the effect, so a second application of the same event would be visible.
    async with harness.admin.begin() as conn:
        clear = text("UPDATE tickets.tickets SET summary = NULL WHERE id = :id")
        await conn.execute(clear, {"id": ticket_id})

    # JetStream drops a re-publish within its duplicate window ...
    assert (await harness.publish(event, subject)).duplicate is True
    # ... and the inbox drops the same event arriving again under another message id.
    assert not (await harness.publish(event, subject, msg_id=str(new_id()))).duplicate
    await harness.settle(tenant)
    assert (await harness.ticket(ticket_id))["summary"] is None


async def test_event_of_another_tenant_cannot_touch_this_tenants_ticket(harness: Harness) -> None:
    victim_tenant, other_tenant = unique_tenant("sum"), unique_tenant("sum")
    victim_ticket = await harness.create_ticket(victim_tenant)
    # The other tenant's summary names the victim's ticket id; to that tenant it is unknown.
    await harness.publish_summary(other_tenant, victim_ticket, "injected", T0 + timedelta(days=1))
    await harness.publish_summary(other_tenant, new_id(), "no such ticket", T0)
    await harness.settle(other_tenant)
    assert (await harness.ticket(victim_ticket))["summary"] is None
    # Unknown tickets are ignored, not dead-lettered.
    assert await harness.dead_letters(other_tenant) == []


async def test_malformed_summary_is_dead_lettered(harness: Harness) -> None:
    tenant = unique_tenant("sum")
    ticket_id = await harness.create_ticket(tenant)
    subject, event = await harness.publish_summary(tenant, ticket_id, "ok", T0)
    await wait_until(lambda: harness.summary_text(ticket_id))
    broken = event.model_copy(update={"id": new_id(), "data": {"summary": "no ticket id"}})
    await harness.publish(broken, subject)

    # Generous: max deliveries with back-off, on a machine busy with the rest of the suite.
    letters = await wait_until(lambda: harness.dead_letters(tenant), timeout=60)
    assert letters[0]["subject"] == subject
    assert "ticket_id" in letters[0]["error"]
    assert await harness.summary_text(ticket_id) == "ok"


DEAD_LETTERS = "/api/v1/tickets/dead-letters"


async def test_an_admin_replays_a_dead_lettered_summary_once_its_cause_is_gone(
    harness: Harness, infra
) -> None:
    tenant = unique_tenant("sum")
    admin = auth_headers(infra, tenant, ["admin"], "admin-1")
    ticket_id = await harness.create_ticket(tenant)
    async with updates_refused(infra, str(ticket_id)):  # the database refuses, as a bug would
        await harness.publish_summary(tenant, ticket_id, "replayed summary", T0)
        await wait_until(lambda: harness.dead_letters(tenant), timeout=60)
        [letter] = (await harness.client.get(DEAD_LETTERS, headers=admin)).json()["items"]
        assert letter["replayed_at"] is None and "refused by the test" in letter["error"]
        replay = f"{DEAD_LETTERS}/{letter['id']}/replay"

        # Still failing: a 409, nothing kept (not even the inbox mark), the new error shown.
        await admin_fetch(infra, "UPDATE tickets.dead_letters SET error = 'old' WHERE id = $1", letter["id"])
        assert_problem(await harness.client.post(replay, headers=admin), 409, detail="failed again")
        [again] = (await harness.client.get(DEAD_LETTERS, headers=admin)).json()["items"]
        assert again["replayed_at"] is None and "refused by the test" in again["error"]
        assert await harness.summary_text(ticket_id) is None

    assert_problem(
        await harness.client.post(replay, headers=auth_headers(infra, tenant, ["agent"], "a")), 403
    )
    stranger = auth_headers(infra, unique_tenant("sum"), ["admin"], "admin-1")
    assert_problem(await harness.client.post(replay, headers=stranger), 404)
    assert_problem(await harness.client.post(f"{DEAD_LETTERS}/x/replay", headers=admin), 422)
    replayed = await harness.client.post(replay, headers=admin)
    assert replayed.status_code == 200, replayed.text
    assert replayed.json()["replayed_by"] == "admin-1" and replayed.json()["replayed_at"] is not None
    assert await harness.summary_text(ticket_id) == "replayed summary"
    # Once only; listed as replayed.
    assert_problem(await harness.client.post(replay, headers=admin), 409, detail="was replayed")
    waiting = await harness.client.get(DEAD_LETTERS, params={"replayed": "false"}, headers=admin)
    assert waiting.json()["items"] == []
    done = await harness.client.get(DEAD_LETTERS, params={"replayed": "true"}, headers=admin)
    assert [item["id"] for item in done.json()["items"]] == [letter["id"]]


async def test_a_replay_never_applies_an_event_twice_nor_one_no_longer_handled(
    harness: Harness, infra
) -> None:
    tenant = unique_tenant("sum")
    admin = auth_headers(infra, tenant, ["admin"], "admin-1")
    ticket_id = await harness.create_ticket(tenant)
    async with updates_refused(infra, str(ticket_id)):
        _, event = await harness.publish_summary(tenant, ticket_id, "handled elsewhere", T0)
        await wait_until(lambda: harness.dead_letters(tenant), timeout=60)
    [letter] = (await harness.client.get(DEAD_LETTERS, headers=admin)).json()["items"]
    # The event was handled since (say, re-published and consumed): the replay only marks it.
    await admin_fetch(infra, "INSERT INTO tickets.inbox (event_id, subject) VALUES ($1, 'x')", event.id)
    replayed = await harness.client.post(f"{DEAD_LETTERS}/{letter['id']}/replay", headers=admin)
    assert replayed.status_code == 200, replayed.text
    assert await harness.summary_text(ticket_id) is None

    # A kind of event this service does not handle (any more) is not replayed.
    [row] = await admin_fetch(
        infra,
        "INSERT INTO tickets.dead_letters (event_id, tenant_id, stream, consumer, subject, payload,"
        " error, deliveries) SELECT event_id, tenant_id, stream, consumer,"
        " replace(subject, 'summary.completed', 'summary.retracted'), payload, error, deliveries"
        " FROM tickets.dead_letters WHERE id = $1 RETURNING id",
        letter["id"],
    )
    refused = await harness.client.post(f"{DEAD_LETTERS}/{row['id']}/replay", headers=admin)
    assert_problem(refused, 409, detail="no longer handles 'summary.retracted'")


def test_tickets_reads_what_summarization_publishes() -> None:
    """The consumer's model accepts the producer's payload (the two services share no code)."""
    published = SummaryCompleted(
        ticket_id=new_id(),
        summary="s",
        key_points=["a"],
        suggested_priority="urgent",
        confidence=1,
        provider="openai",
        model="gpt",
        created_at=T0,
    )
    read = CompletedSummary.model_validate(json.loads(published.model_dump_json()))
    assert read.model_dump() == published.model_dump()


async def _equals(value_coroutine, expected: str) -> bool:
    return await value_coroutine == expected
