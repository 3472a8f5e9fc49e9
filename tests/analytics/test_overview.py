"""Analytics overview: counts from real ticket events, ranges, permissions, bad input."""

import json
from datetime import UTC, date, datetime, timedelta
from uuid import UUID

import pytest

from libs.common.ids import new_id
from services.analytics.app import create_app as create_analytics
from services.analytics.settings import Settings as AnalyticsSettings
from services.tickets.app import create_app as create_tickets
from services.tickets.settings import Settings as TicketSettings
from tests.conftest import app_client, auth_headers, settings_for, unique_tenant, wait_until
from tests.tickets.helpers import admin_fetch


@pytest.fixture(scope="module")
async def clients(infra):
    async with (
        app_client(create_tickets(settings_for(infra, TicketSettings, "tickets"))) as tickets,
        app_client(create_analytics(settings_for(infra, AnalyticsSettings, "analytics"))) as analytics,
    ):
        yield tickets, analytics


async def test_overview_counts_created_tickets_per_tenant_and_day(clients, infra):
    tickets, analytics = clients
    tenant, other = unique_tenant(), unique_tenant()
    for _ in range(3):
        await tickets.post(
            "/api/v1/tickets", json={"subject": "누수"}, headers=auth_headers(infra, tenant, ["agent"])
        )
    await tickets.post(
        "/api/v1/tickets", json={"subject": "other"}, headers=auth_headers(infra, other, ["agent"])
    )
    headers = auth_headers(infra, tenant, ["admin"])

    async def three_counted():
        body = (await analytics.get("/api/v1/analytics/overview", headers=headers)).json()
        return body if body["tickets_created"] == 3 else None

    body = await wait_until(three_counted)
    today = datetime.now(UTC).date()
    assert len(body["by_day"]) == 30
    assert body["by_day"][-1] == {"date": today.isoformat(), "count": 3}
    assert body["by_day"][0]["date"] == (today - timedelta(days=29)).isoformat()
    assert sum(day["count"] for day in body["by_day"]) == 3


async def test_overview_range_is_inclusive_and_filled_with_zero_days(clients, infra):
    _, analytics = clients
    headers = auth_headers(infra, unique_tenant(), ["agent"])
    response = await analytics.get(
        "/api/v1/analytics/overview", params={"from": "2026-01-30", "to": "2026-02-02"}, headers=headers
    )
    assert response.status_code == 200
    assert response.json() == {
        "tickets_created": 0,
        "by_day": [{"date": str(date(2026, 1, 30) + timedelta(days=n)), "count": 0} for n in range(4)],
    }


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"from": "2026-02-02", "to": "2026-01-01"}, 400),
        ({"from": "2000-01-01", "to": "2026-01-01"}, 400),
        ({"from": "yesterday"}, 422),
        ({"to": "2026-13-01"}, 422),
    ],
)
async def test_bad_ranges_are_problems(clients, infra, params, status):
    _, analytics = clients
    response = await analytics.get(
        "/api/v1/analytics/overview", params=params, headers=auth_headers(infra, unique_tenant(), ["agent"])
    )
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"


async def test_the_default_range_starts_no_earlier_than_the_calendar(clients, infra):
    _, analytics = clients
    headers = auth_headers(infra, unique_tenant(), ["agent"])
    response = await analytics.get("/api/v1/analytics/overview", params={"to": "0001-01-15"}, headers=headers)
    assert response.status_code == 200, response.text
    days = response.json()["by_day"]
    assert (days[0]["date"], days[-1]["date"], len(days)) == ("0001-01-01", "0001-01-15", 15)


async def test_requesters_cannot_see_dashboards(clients, infra):
    _, analytics = clients
    response = await analytics.get(
        "/api/v1/analytics/overview", headers=auth_headers(infra, unique_tenant(), ["requester"])
    )
    assert response.status_code == 403


async def test_a_dead_lettered_ticket_event_is_counted_once_when_an_admin_replays_it(clients, infra):
    tickets, analytics = clients
    tenant = unique_tenant()
    admin = auth_headers(infra, tenant, ["admin"])
    created = await tickets.post("/api/v1/tickets", json={"subject": "누수"}, headers=admin)

    async def counted(expected: int):
        body = (await analytics.get("/api/v1/analytics/overview", headers=admin)).json()
        return body if body["tickets_created"] == expected else None

    await wait_until(lambda: counted(1))
    # A second ticket's event that analytics gave up on (its handler failed until a fix).
    [row] = await admin_fetch(
        infra, "SELECT subject, payload FROM tickets.outbox WHERE aggregate_id = $1", created.json()["id"]
    )
    lost = {**json.loads(row["payload"]), "id": str(new_id())}
    [letter] = await admin_fetch(
        infra,
        "INSERT INTO analytics.dead_letters (event_id, tenant_id, stream, consumer, subject, payload,"
        " error, deliveries) VALUES ($1, $2, 'TICKETS', 'analytics--TICKETS', $3, $4, 'boom', 5)"
        " RETURNING id",
        UUID(lost["id"]),
        tenant,
        row["subject"],
        json.dumps(lost),
    )
    replay = f"/api/v1/analytics/dead-letters/{letter['id']}/replay"
    replayed = await analytics.post(replay, headers=admin)
    assert replayed.status_code == 200, replayed.text
    assert await counted(2)
    assert (await analytics.post(replay, headers=admin)).status_code == 409
    assert await counted(2)


async def test_dead_letters_that_cannot_be_replayed_are_a_409_naming_why(clients, infra):
    _, analytics = clients
    tenant = unique_tenant()
    admin = auth_headers(infra, tenant, ["admin"])
    subject = f"tickets.{tenant}.ticket.created"
    forged = {
        "id": str(new_id()),
        "source": "x",
        "type": "helpdesk.tickets.ticket.exploded.v9",
        "subject": "t",
        "time": "2026-11-22T10:00:00Z",
        "tenant": tenant,
        "data": {},
    }
    letters = await admin_fetch(
        infra,
        "INSERT INTO analytics.dead_letters (event_id, tenant_id, stream, consumer, subject, payload, raw,"
        " error, deliveries) VALUES (NULL, $1, 'TICKETS', 'analytics--TICKETS', $2, NULL, '{not json',"
        " 'invalid CloudEvent envelope', 1), ($3, $1, 'TICKETS', 'analytics--TICKETS', $2, $4, NULL,"
        " 'envelope does not match its subject', 1) RETURNING id",
        tenant,
        subject,
        UUID(forged["id"]),
        json.dumps(forged),
    )
    listed = await analytics.get("/api/v1/analytics/dead-letters", headers=admin)
    assert {item["id"] for item in listed.json()["items"]} == {letter["id"] for letter in letters}
    reasons = []
    for letter in letters:
        response = await analytics.post(
            f"/api/v1/analytics/dead-letters/{letter['id']}/replay", headers=admin
        )
        assert response.status_code == 409, response.text
        reasons.append(response.json()["detail"])
    assert "not a valid CloudEvent" in reasons[0]
    assert "does not match its subject" in reasons[1]
