"""Comments: public replies and internal notes, first response, HTML input."""

import json

import pytest

from tests.conftest import auth_headers, unique_tenant
from tests.tickets.helpers import admin_fetch, create_ticket, outbox_types, patch_ticket


@pytest.fixture
def people(infra):
    tenant = unique_tenant()
    return {
        "agent": auth_headers(infra, tenant, ["agent"], "agent-1"),
        "requester": auth_headers(infra, tenant, ["requester"], "req-1"),
        "stranger": auth_headers(infra, tenant, ["requester"], "req-2"),
        "other_tenant": auth_headers(infra, unique_tenant(), ["agent"], "agent-1"),
    }


async def comment(tickets, headers, ticket, body, **extra):
    return await tickets.post(
        f"/api/v1/tickets/{ticket['id']}/comments", json={"body": body, **extra}, headers=headers
    )


async def test_first_public_reply_by_staff_is_the_first_response(tickets, people):
    ticket = await create_ticket(tickets, people["requester"], subject="에어컨이 작동하지 않아요")
    await comment(tickets, people["requester"], ticket, "아직도 안 됩니다")
    await comment(tickets, people["agent"], ticket, "checking the breaker", visibility="internal")
    unchanged = (await tickets.get(f"/api/v1/tickets/{ticket['id']}", headers=people["agent"])).json()
    assert unchanged["first_responded_at"] is None

    reply = await comment(tickets, people["agent"], ticket, "기사님이 오후 3시에 방문합니다")
    assert reply.status_code == 201, reply.text
    answered = (await tickets.get(f"/api/v1/tickets/{ticket['id']}", headers=people["agent"])).json()
    assert answered["first_responded_at"] == reply.json()["created_at"]

    await comment(tickets, people["agent"], ticket, "second reply")
    later = (await tickets.get(f"/api/v1/tickets/{ticket['id']}", headers=people["agent"])).json()
    assert later["first_responded_at"] == answered["first_responded_at"]


async def test_requesters_never_see_internal_notes(tickets, people):
    ticket = await create_ticket(tickets, people["requester"])
    await comment(tickets, people["agent"], ticket, "public answer")
    await comment(tickets, people["agent"], ticket, "tenant is difficult", visibility="internal")
    url = f"/api/v1/tickets/{ticket['id']}/comments"

    as_agent = (await tickets.get(url, headers=people["agent"])).json()["items"]
    assert [c["visibility"] for c in as_agent] == ["public", "internal"]
    as_requester = (await tickets.get(url, headers=people["requester"])).json()["items"]
    assert [c["body"] for c in as_requester] == ["public answer"]

    refused = await comment(tickets, people["requester"], ticket, "sneaky", visibility="internal")
    assert refused.status_code == 403
    assert (await tickets.get(url, headers=people["stranger"])).status_code == 404
    assert (await tickets.get(url, headers=people["other_tenant"])).status_code == 404
    assert (await comment(tickets, people["stranger"], ticket, "hi")).status_code == 404


async def test_html_comments_are_reduced_to_plain_text(tickets, people):
    ticket = await create_ticket(tickets, people["agent"])
    markup = (
        '<p>Hello <b>there</b>&nbsp;&amp; welcome</p><script>alert("x")</script>'
        '<ul><li>one</li><li>two</li></ul><img src=x onerror="steal()"><style>p{}</style>'
    )
    created = await comment(tickets, people["agent"], ticket, markup, content_type="text/html")
    assert created.status_code == 201, created.text
    body = created.json()["body"]
    assert "<" not in body and "alert" not in body and "steal" not in body
    assert body == "Hello there & welcome\n\n- one\n- two"

    empty = await comment(
        tickets, people["agent"], ticket, "<script>only()</script>", content_type="text/html"
    )
    assert empty.status_code == 422


async def test_comment_added_event_carries_body_and_visibility(tickets, infra, people):
    ticket = await create_ticket(tickets, people["agent"])
    created = (await comment(tickets, people["agent"], ticket, "note", visibility="internal")).json()
    assert "helpdesk.tickets.comment.added.v1" in await outbox_types(infra, created["id"])
    rows = await admin_fetch(
        infra, "SELECT payload->'data' AS data FROM tickets.outbox WHERE aggregate_id = $1", created["id"]
    )
    data = json.loads(rows[0]["data"])
    assert data["body"] == "note" and data["visibility"] == "internal"
    assert data["ticket_id"] == ticket["id"] and data["ticket"]["subject"] == ticket["subject"]


async def test_comments_page_oldest_first(tickets, people):
    ticket = await create_ticket(tickets, people["agent"])
    for n in range(5):
        await comment(tickets, people["agent"], ticket, f"c{n}")
    url = f"/api/v1/tickets/{ticket['id']}/comments"
    bodies, cursor = [], None
    while True:
        page = (
            await tickets.get(
                url, params={"limit": 2, **({"cursor": cursor} if cursor else {})}, headers=people["agent"]
            )
        ).json()
        bodies += [c["body"] for c in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert bodies == ["c0", "c1", "c2", "c3", "c4"]


@pytest.mark.parametrize("waiting_status", ["pending", "resolved"])
async def test_a_requester_reply_puts_a_waiting_ticket_back_in_the_queue(tickets, people, waiting_status):
    ticket = await create_ticket(tickets, people["requester"])
    moved = await patch_ticket(tickets, people["agent"], ticket, status=waiting_status)
    assert moved.status_code == 200
    await comment(tickets, people["requester"], ticket, "사진 첨부합니다 / here is the photo")
    current = (await tickets.get(f"/api/v1/tickets/{ticket['id']}", headers=people["agent"])).json()
    assert current["status"] == "open" and current["resolved_at"] is None
    history = (await tickets.get(f"/api/v1/tickets/{ticket['id']}/history", headers=people["agent"])).json()
    reopen = [e for e in history["items"] if e["field"] == "status"][-1]
    assert (reopen["old_value"], reopen["new_value"], reopen["actor_id"]) == (waiting_status, "open", "req-1")


async def test_an_agent_note_does_not_reopen_and_a_closed_ticket_stays_closed(tickets, people):
    ticket = await create_ticket(tickets, people["requester"])
    pending = (await patch_ticket(tickets, people["agent"], ticket, status="pending")).json()
    await comment(tickets, people["agent"], pending, "still waiting for the photo")
    assert (await tickets.get(f"/api/v1/tickets/{ticket['id']}", headers=people["agent"])).json()[
        "status"
    ] == "pending"
    closed = (await tickets.get(f"/api/v1/tickets/{ticket['id']}", headers=people["agent"])).json()
    closed = (await patch_ticket(tickets, people["agent"], closed, status="closed")).json()
    await comment(tickets, people["requester"], closed, "thanks!")
    assert (await tickets.get(f"/api/v1/tickets/{ticket['id']}", headers=people["agent"])).json()[
        "status"
    ] == "closed"
