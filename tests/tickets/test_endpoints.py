import asyncio
import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from libs.common.db import async_url
from tests.conftest import auth_headers, unique_tenant


async def test_create_then_read_ticket_in_korean(tickets, infra):
    tenant = unique_tenant()
    headers = auth_headers(infra, tenant, ["requester"], "req-1")
    body = {"subject": "3층 엘리베이터 고장", "description": "엘리베이터가 멈췄습니다", "priority": "urgent"}
    created = await tickets.post("/api/v1/tickets", json=body, headers=headers)
    assert created.status_code == 201, created.text
    ticket = created.json()
    assert ticket["number"] == 1
    assert ticket["subject"] == "3층 엘리베이터 고장"
    assert ticket["status"] == "open" and ticket["priority"] == "urgent"
    assert ticket["requester_id"] == "req-1"
    assert created.headers["location"] == f"/api/v1/tickets/{ticket['id']}"

    read = await tickets.get(f"/api/v1/tickets/{ticket['id']}", headers=headers)
    assert read.status_code == 200
    assert read.json() == ticket
    assert read.headers["etag"] == 'W/"1"'
    assert read.headers["x-request-id"]


async def test_ticket_numbers_are_per_tenant_and_sequential(tickets, infra):
    tenant_a, tenant_b = unique_tenant(), unique_tenant()
    for expected in (1, 2, 3):
        response = await tickets.post(
            "/api/v1/tickets",
            json={"subject": f"a{expected}"},
            headers=auth_headers(infra, tenant_a, ["agent"]),
        )
        assert response.json()["number"] == expected
    response = await tickets.post(
        "/api/v1/tickets", json={"subject": "b"}, headers=auth_headers(infra, tenant_b, ["agent"])
    )
    assert response.json()["number"] == 1


async def test_concurrent_creates_get_distinct_numbers(tickets, infra):
    tenant = unique_tenant()
    headers = auth_headers(infra, tenant, ["agent"])
    responses = await asyncio.gather(
        *[tickets.post("/api/v1/tickets", json={"subject": f"s{i}"}, headers=headers) for i in range(20)]
    )
    assert all(r.status_code == 201 for r in responses)
    assert sorted(r.json()["number"] for r in responses) == list(range(1, 21))


async def test_other_tenant_gets_404_for_a_ticket(tickets, infra):
    owner, other = unique_tenant(), unique_tenant()
    created = await tickets.post(
        "/api/v1/tickets", json={"subject": "leak?"}, headers=auth_headers(infra, owner, ["agent"])
    )
    response = await tickets.get(
        f"/api/v1/tickets/{created.json()['id']}", headers=auth_headers(infra, other, ["admin"])
    )
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    listing = await tickets.get("/api/v1/tickets", headers=auth_headers(infra, other, ["admin"]))
    assert listing.json() == {"items": [], "next_cursor": None}


async def test_requester_sees_only_own_tickets(tickets, infra):
    tenant = unique_tenant()
    mine = await tickets.post(
        "/api/v1/tickets",
        json={"subject": "mine"},
        headers=auth_headers(infra, tenant, ["requester"], "alice"),
    )
    theirs = await tickets.post(
        "/api/v1/tickets",
        json={"subject": "theirs"},
        headers=auth_headers(infra, tenant, ["requester"], "bob"),
    )
    alice = auth_headers(infra, tenant, ["requester"], "alice")
    listing = await tickets.get("/api/v1/tickets", headers=alice)
    assert [t["subject"] for t in listing.json()["items"]] == ["mine"]
    assert (await tickets.get(f"/api/v1/tickets/{theirs.json()['id']}", headers=alice)).status_code == 404
    assert (await tickets.get(f"/api/v1/tickets/{mine.json()['id']}", headers=alice)).status_code == 200
    agent = await tickets.get("/api/v1/tickets", headers=auth_headers(infra, tenant, ["agent"], "agent-1"))
    assert {t["subject"] for t in agent.json()["items"]} == {"mine", "theirs"}


async def test_list_pages_through_every_ticket_once_newest_first(tickets, infra):
    tenant = unique_tenant()
    headers = auth_headers(infra, tenant, ["agent"])
    for i in range(7):
        await tickets.post("/api/v1/tickets", json={"subject": f"ticket {i}"}, headers=headers)
    seen, cursor = [], None
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = (await tickets.get("/api/v1/tickets", params=params, headers=headers)).json()
        seen += [t["number"] for t in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [7, 6, 5, 4, 3, 2, 1]


async def test_idempotency_key_replays_the_first_response(tickets, infra):
    tenant = unique_tenant()
    headers = auth_headers(infra, tenant, ["agent"]) | {"Idempotency-Key": "create-42"}
    first = await tickets.post("/api/v1/tickets", json={"subject": "once"}, headers=headers)
    again = await tickets.post("/api/v1/tickets", json={"subject": "once"}, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    # The replay is the first response, headers too: a client can PATCH with its ETag.
    assert again.headers["etag"] == first.headers["etag"] == 'W/"1"'
    assert again.headers["location"] == first.headers["location"]
    listing = await tickets.get("/api/v1/tickets", headers=auth_headers(infra, tenant, ["agent"]))
    assert len(listing.json()["items"]) == 1
    reused = await tickets.post("/api/v1/tickets", json={"subject": "different"}, headers=headers)
    assert reused.status_code == 422
    assert reused.json()["type"].endswith("idempotency-key-reused")


async def test_idempotency_key_replays_a_comment_instead_of_adding_it_twice(tickets, infra):
    tenant = unique_tenant()
    agent = auth_headers(infra, tenant, ["agent"])
    ticket = (await tickets.post("/api/v1/tickets", json={"subject": "누수"}, headers=agent)).json()
    comments = f"/api/v1/tickets/{ticket['id']}/comments"
    retry = agent | {"Idempotency-Key": "reply-1"}
    first = await tickets.post(comments, json={"body": "plumber at 3pm"}, headers=retry)
    again = await tickets.post(comments, json={"body": "plumber at 3pm"}, headers=retry)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    assert len((await tickets.get(comments, headers=agent)).json()["items"]) == 1
    # The key names one request: another body, another ticket or a create is refused.
    other = (await tickets.post("/api/v1/tickets", json={"subject": "x"}, headers=agent)).json()
    for path, body in [
        (comments, {"body": "plumber at 4pm"}),
        (f"/api/v1/tickets/{other['id']}/comments", {"body": "plumber at 3pm"}),
        ("/api/v1/tickets", {"subject": "plumber at 3pm"}),
    ]:
        reused = await tickets.post(path, json=body, headers=retry)
        assert reused.status_code == 422 and reused.json()["type"].endswith("idempotency-key-reused")


async def test_concurrent_requests_with_one_idempotency_key_create_one_ticket(tickets, infra):
    tenant = unique_tenant()
    headers = auth_headers(infra, tenant, ["agent"]) | {"Idempotency-Key": "race"}
    responses = await asyncio.gather(
        *[tickets.post("/api/v1/tickets", json={"subject": "race"}, headers=headers) for _ in range(5)]
    )
    assert {r.status_code for r in responses} == {201}
    assert len({r.json()["id"] for r in responses}) == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"subject": "x", "tenant_id": "evil"}, "tenant_id"),
        ({"subject": "x", "id": str(uuid.uuid4())}, "id"),
        ({"subject": "x", "created_at": "2020-01-01T00:00:00Z"}, "created_at"),
        ({"subject": ""}, "subject"),
        ({"subject": "x" * 100_000}, "subject"),
        ({"subject": "x", "priority": "whenever"}, "priority"),
        ({"subject": 42}, "subject"),
        ({"subject": "nul\x00byte"}, "subject"),
        ({}, "subject"),
    ],
)
async def test_bad_ticket_input_is_a_422_problem_naming_the_field(tickets, infra, body, field):
    tenant = unique_tenant()
    response = await tickets.post(
        "/api/v1/tickets", json=body, headers=auth_headers(infra, tenant, ["agent"])
    )
    assert response.status_code == 422
    problem = response.json()
    assert response.headers["content-type"] == "application/problem+json"
    assert problem["status"] == 422
    assert field in [e["field"] for e in problem["errors"]]
    listing = await tickets.get("/api/v1/tickets", headers=auth_headers(infra, tenant, ["agent"]))
    assert listing.json()["items"] == []


@pytest.mark.parametrize(
    ("path", "params", "status"),
    [
        ("/api/v1/tickets/not-a-uuid", {}, 422),
        ("/api/v1/tickets", {"limit": 1_000_000}, 422),
        ("/api/v1/tickets", {"limit": 0}, 422),
        ("/api/v1/tickets", {"cursor": "!!!garbage"}, 400),
        ("/api/v1/tickets", {"cursor": "WzFd"}, 400),
        ("/api/v1/tickets", {"cursor": "WyJub3QtYS1kYXRlIiwgIngiXQ"}, 400),
    ],
)
async def test_bad_query_input_is_a_4xx_problem(tickets, infra, path, params, status):
    response = await tickets.get(path, params=params, headers=auth_headers(infra, unique_tenant(), ["agent"]))
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"


async def test_wrong_content_type_and_malformed_json_are_4xx(tickets, infra):
    headers = auth_headers(infra, unique_tenant(), ["agent"])
    form = await tickets.post(
        "/api/v1/tickets", content=b"subject=x", headers=headers | {"Content-Type": "text/plain"}
    )
    assert form.status_code == 422
    broken = await tickets.post(
        "/api/v1/tickets", content=b"{not json", headers=headers | {"Content-Type": "application/json"}
    )
    assert broken.status_code == 422


async def test_missing_or_bad_token_is_401(tickets):
    assert (await tickets.get("/api/v1/tickets")).status_code == 401
    response = await tickets.get("/api/v1/tickets", headers={"Authorization": "Bearer nonsense"})
    assert response.status_code == 401
    assert response.json()["title"] == "Unauthorized"


async def test_created_ticket_and_its_event_commit_together(tickets, infra):
    tenant = unique_tenant()
    created = await tickets.post(
        "/api/v1/tickets", json={"subject": "evt"}, headers=auth_headers(infra, tenant, ["agent"])
    )
    engine = create_async_engine(async_url(infra.admin_url))
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT subject, payload FROM tickets.outbox WHERE aggregate_id = :id"),
                {"id": created.json()["id"]},
            )
        ).one()
    await engine.dispose()
    assert row.subject == f"tickets.{tenant}.ticket.created"
    assert row.payload["type"] == "helpdesk.tickets.ticket.created.v1"
    assert row.payload["data"]["subject"] == "evt"
    assert row.payload["tenant"] == tenant


async def test_a_read_revalidated_with_its_current_etag_is_a_304_without_a_body(tickets, infra):
    tenant = unique_tenant()
    agent = auth_headers(infra, tenant, ["agent"])
    created = await tickets.post("/api/v1/tickets", json={"subject": "조명 고장"}, headers=agent)
    url = f"/api/v1/tickets/{created.json()['id']}"
    read = await tickets.get(url, headers=agent)
    assert read.headers["etag"] == 'W/"1"'
    # Compared weakly (RFC 9110): the strong form, a list and * name it too.
    for tags in ('W/"1"', '"1"', 'W/"0", W/"1"', "*"):
        response = await tickets.get(url, headers=agent | {"If-None-Match": tags})
        assert (response.status_code, response.content) == (304, b""), tags
        assert response.headers["etag"] == 'W/"1"'
    changed = await tickets.patch(url, json={"priority": "high"}, headers=agent | {"If-Match": 'W/"1"'})
    assert changed.status_code == 200, changed.text
    stale = await tickets.get(url, headers=agent | {"If-None-Match": 'W/"1"'})
    assert stale.status_code == 200 and stale.json()["priority"] == "high"
    assert stale.headers["etag"] == 'W/"2"'
    # Revalidation tells nothing to whoever may not read the ticket.
    other = auth_headers(infra, unique_tenant(), ["agent"])
    assert (await tickets.get(url, headers=other | {"If-None-Match": "*"})).status_code == 404
