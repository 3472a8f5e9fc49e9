"""PATCH: optimistic concurrency, the workflow, history and events."""

import asyncio

import pytest

from services.tickets.app import create_app
from services.tickets.settings import Settings
from services.tickets.workflow import CATEGORY_TRANSITIONS, StatusCategory
from tests.conftest import app_client, auth_headers, settings_for, unique_tenant
from tests.tickets.helpers import (
    TICKETS,
    admin_fetch,
    assert_problem,
    count_statements,
    create_ticket,
    outbox_types,
    patch_ticket,
    statements_run,
)

BUILTIN = [category.value for category in StatusCategory]


@pytest.fixture
def tenant():
    return unique_tenant()


@pytest.fixture
def agent(infra, tenant):
    return auth_headers(infra, tenant, ["agent"], "agent-1")


async def test_patch_needs_if_match_and_refuses_a_stale_version(tickets, agent):
    ticket = await create_ticket(tickets, agent)
    url = f"/api/v1/tickets/{ticket['id']}"

    missing = await tickets.patch(url, json={"priority": "high"}, headers=agent)
    assert missing.status_code == 428
    assert missing.headers["content-type"] == "application/problem+json"

    changed = await patch_ticket(tickets, agent, ticket, priority="high")
    assert changed.status_code == 200, changed.text
    assert changed.json()["version"] == 2 and changed.headers["etag"] == 'W/"2"'

    stale = await patch_ticket(tickets, agent, ticket, priority="low")  # still version 1
    assert stale.status_code == 412
    assert stale.headers["etag"] == 'W/"2"'
    assert (await tickets.get(url, headers=agent)).json()["priority"] == "high"


async def test_concurrent_patches_one_wins_one_gets_412(tickets, agent):
    ticket = await create_ticket(tickets, agent)
    first, second = await asyncio.gather(
        patch_ticket(tickets, agent, ticket, subject="first writer"),
        patch_ticket(tickets, agent, ticket, subject="second writer"),
    )
    assert sorted([first.status_code, second.status_code]) == [200, 412]
    winner = first if first.status_code == 200 else second
    current = (await tickets.get(f"/api/v1/tickets/{ticket['id']}", headers=agent)).json()
    assert current["subject"] == winner.json()["subject"] and current["version"] == 2


@pytest.mark.parametrize("current", BUILTIN)
@pytest.mark.parametrize("new", BUILTIN)
async def test_every_builtin_transition(tickets, agent, current, new):
    ticket = await create_ticket(tickets, agent)
    if current != "open":
        moved = await patch_ticket(tickets, agent, ticket, status=current)
        assert moved.status_code == 200, moved.text
        ticket = moved.json()
    response = await patch_ticket(tickets, agent, ticket, status=new)
    if current == new:
        assert response.status_code == 200 and response.json()["version"] == ticket["version"]  # no change
    elif StatusCategory(new) in CATEGORY_TRANSITIONS[StatusCategory(current)]:
        assert response.status_code == 200, response.text
        assert response.json()["status"] == new and response.json()["status_category"] == new
    else:
        assert response.status_code == 409, response.text
        problem = response.json()
        assert problem["allowed_next_statuses"] == [
            s for s in BUILTIN if StatusCategory(s) in CATEGORY_TRANSITIONS[StatusCategory(current)]
        ]
        assert new in problem["detail"]


async def test_workflow_sets_resolved_and_closed_times_and_reopening_clears_them(tickets, agent):
    ticket = await create_ticket(tickets, agent)
    assert ticket["resolved_at"] is None and ticket["closed_at"] is None

    resolved = (await patch_ticket(tickets, agent, ticket, status="resolved")).json()
    assert resolved["resolved_at"] is not None and resolved["closed_at"] is None

    closed = (await patch_ticket(tickets, agent, resolved, status="closed")).json()
    assert closed["closed_at"] is not None
    assert closed["resolved_at"] == resolved["resolved_at"]  # resolution time is kept

    reopened = (await patch_ticket(tickets, agent, closed, status="open")).json()
    assert reopened["resolved_at"] is None and reopened["closed_at"] is None


async def test_clients_cannot_set_workflow_timestamps(tickets, agent):
    ticket = await create_ticket(tickets, agent)
    response = await patch_ticket(tickets, agent, ticket, resolved_at="2026-01-01T00:00:00Z")
    assert response.status_code == 422
    assert any(error["field"] == "resolved_at" for error in response.json()["errors"])


async def test_tenant_status_in_the_pending_category(tickets, infra, tenant, agent):
    admin = auth_headers(infra, tenant, ["admin"], "admin-1")
    created = await tickets.post(
        "/api/v1/tickets/statuses",
        json={"key": "waiting_on_vendor", "name": "Waiting on vendor", "category": "pending"},
        headers=admin,
    )
    assert created.status_code == 201, created.text
    listed = (await tickets.get("/api/v1/tickets/statuses", headers=agent)).json()["items"]
    assert [s["key"] for s in listed] == [
        "open",
        "pending",
        "waiting_on_vendor",
        "in_progress",
        "resolved",
        "closed",
    ]

    ticket = await create_ticket(tickets, agent)
    waiting = await patch_ticket(tickets, agent, ticket, status="waiting_on_vendor")
    assert waiting.status_code == 200
    assert waiting.json()["status_category"] == "pending"

    filtered = await tickets.get("/api/v1/tickets?status_category=pending", headers=agent)
    assert [t["id"] for t in filtered.json()["items"]] == [ticket["id"]]

    closed = (await patch_ticket(tickets, agent, waiting.json(), status="closed")).json()
    refused = await patch_ticket(tickets, agent, closed, status="waiting_on_vendor")
    assert refused.status_code == 409
    assert refused.json()["allowed_next_statuses"] == ["open"]

    unknown = await patch_ticket(tickets, agent, closed, status="no_such_status")
    assert unknown.status_code == 422

    still_waiting = await create_ticket(tickets, agent)
    still_waiting = (await patch_ticket(tickets, agent, still_waiting, status="waiting_on_vendor")).json()
    in_use = await tickets.delete("/api/v1/tickets/statuses/waiting_on_vendor", headers=admin)
    assert in_use.status_code == 409
    await patch_ticket(tickets, agent, still_waiting, status="pending")
    removed = await tickets.delete("/api/v1/tickets/statuses/waiting_on_vendor", headers=admin)
    assert removed.status_code == 204


async def test_admins_rename_statuses_in_their_own_words_and_reorder_their_own(tickets, infra, tenant, agent):
    admin = auth_headers(infra, tenant, ["admin"], "admin-1")
    statuses = "/api/v1/tickets/statuses"
    for key, position in (("on_site", 1), ("parts_ordered", 2)):
        body = {"key": key, "name": key.replace("_", " "), "category": "in_progress", "position": position}
        assert (await tickets.post(statuses, json=body, headers=admin)).status_code == 201
    ticket = (
        await patch_ticket(tickets, agent, await create_ticket(tickets, agent), status="on_site")
    ).json()

    renamed = await tickets.patch(f"{statuses}/open", json={"name": "접수"}, headers=admin)
    assert renamed.status_code == 200, renamed.text
    assert renamed.json() == {
        "key": "open",
        "name": "접수",
        "category": "open",
        "builtin": True,
        "position": 0,
    }
    assert (
        await tickets.patch(f"{statuses}/open", json={"name": "신규 접수"}, headers=admin)
    ).status_code == 200
    moved = await tickets.patch(
        f"{statuses}/on_site", json={"name": "현장 출동", "position": 5}, headers=admin
    )
    assert moved.json() == {
        "key": "on_site",
        "name": "현장 출동",
        "category": "in_progress",
        "builtin": False,
        "position": 5,
    }
    listed = (await tickets.get(statuses, headers=agent)).json()["items"]
    assert [(s["key"], s["name"]) for s in listed] == [
        ("open", "신규 접수"),
        ("pending", "Pending"),
        ("in_progress", "In progress"),
        ("parts_ordered", "parts ordered"),
        ("on_site", "현장 출동"),
        ("resolved", "Resolved"),
        ("closed", "Closed"),
    ]
    # Keys stay, so tickets, filters and transitions are as before; a renamed built-in status
    # is still built in (it cannot be removed, nor added twice).
    assert (await tickets.get(f"{TICKETS}/{ticket['id']}", headers=agent)).json()["status"] == "on_site"
    assert (await tickets.get(f"{TICKETS}?status=on_site", headers=agent)).json()["items"][0]["id"] == ticket[
        "id"
    ]
    assert (await patch_ticket(tickets, agent, ticket, status="open")).json()["status"] == "open"
    assert (await tickets.delete(f"{statuses}/open", headers=admin)).status_code == 409
    again = {"key": "open", "name": "Open", "category": "open"}
    assert (await tickets.post(statuses, json=again, headers=admin)).status_code == 409
    other = auth_headers(infra, unique_tenant(), ["agent"], "agent-1")
    assert (await tickets.get(statuses, headers=other)).json()["items"][0]["name"] == "Open"

    for key, body, field in [
        ("open", {"position": 3}, "position"),  # built-in statuses come first in their category
        ("on_site", {}, None),
        ("on_site", {"name": None}, None),
        ("on_site", {"name": ""}, "name"),
        ("on_site", {"category": "pending"}, "category"),
        ("on_site", {"position": -1}, "position"),
    ]:
        refused = await tickets.patch(f"{statuses}/{key}", json=body, headers=admin)
        assert_problem(refused, 422, fields=(field,) if field else ())
    assert_problem(await tickets.patch(f"{statuses}/no_such", json={"name": "x"}, headers=admin), 404)
    assert (await tickets.get(statuses, headers=agent)).json()["items"] == listed  # nothing changed


async def test_admins_rename_categories(tickets, infra, tenant, agent):
    admin = auth_headers(infra, tenant, ["admin"], "admin-1")
    categories = "/api/v1/tickets/categories"
    assert (
        await tickets.post(categories, json={"key": "hvac", "name": "HVAC"}, headers=admin)
    ).status_code == 201
    ticket = await create_ticket(tickets, agent, category="hvac")
    renamed = await tickets.patch(f"{categories}/hvac", json={"name": "냉난방"}, headers=admin)
    assert renamed.status_code == 200, renamed.text
    assert renamed.json() == {"key": "hvac", "name": "냉난방"}
    assert (await tickets.get(categories, headers=agent)).json()["items"] == [
        {"key": "hvac", "name": "냉난방"}
    ]
    assert (await tickets.get(f"{TICKETS}/{ticket['id']}", headers=agent)).json()["category"] == "hvac"
    assert_problem(await tickets.patch(f"{categories}/plumbing", json={"name": "배관"}, headers=admin), 404)
    assert_problem(
        await tickets.patch(f"{categories}/hvac", json={"key": "x", "name": "y"}, headers=admin), 422
    )


async def test_history_records_who_changed_what_from_what_to_what(tickets, agent):
    ticket = await create_ticket(tickets, agent, priority="low", tags=["lobby"])
    changed = await patch_ticket(
        tickets, agent, ticket, priority="urgent", assignee_id="agent-7", tags=["lobby", "elevator"]
    )
    assert changed.status_code == 200, changed.text
    history = (await tickets.get(f"/api/v1/tickets/{ticket['id']}/history", headers=agent)).json()["items"]
    by_field = {entry["field"]: entry for entry in history}
    assert by_field["priority"]["old_value"] == "low" and by_field["priority"]["new_value"] == "urgent"
    assert by_field["assignee_id"]["old_value"] is None and by_field["assignee_id"]["new_value"] == "agent-7"
    assert by_field["tags"]["new_value"] == ["lobby", "elevator"]
    assert {entry["actor_id"] for entry in history} == {"agent-1"}


async def test_a_change_emits_updated_status_changed_and_assigned_events(tickets, infra, agent):
    ticket = await create_ticket(tickets, agent)
    await patch_ticket(tickets, agent, ticket, status="in_progress", assignee_id="agent-2")
    types = await outbox_types(infra, ticket["id"])
    assert types == [
        "helpdesk.tickets.ticket.created.v1",
        "helpdesk.tickets.ticket.updated.v1",
        "helpdesk.tickets.ticket.status_changed.v1",
        "helpdesk.tickets.ticket.assigned.v1",
    ]
    rows = await admin_fetch(
        infra,
        "SELECT payload->'data' AS data FROM tickets.outbox WHERE aggregate_id = $1 "
        "AND payload->>'type' = 'helpdesk.tickets.ticket.updated.v1'",
        ticket["id"],
    )
    import json

    data = json.loads(rows[0]["data"])
    assert data["changes"]["status"] == {"old": "open", "new": "in_progress"}
    assert data["changes"]["assignee_id"] == {"old": None, "new": "agent-2"}
    assert data["ticket"]["status"] == "in_progress" and data["actor_id"] == "agent-1"


async def test_a_patch_that_changes_nothing_writes_nothing(tickets, infra, agent):
    ticket = await create_ticket(tickets, agent, priority="high")
    same = await patch_ticket(tickets, agent, ticket, priority="high")
    assert same.status_code == 200 and same.json()["version"] == ticket["version"]
    assert await outbox_types(infra, ticket["id"]) == ["helpdesk.tickets.ticket.created.v1"]


async def test_requester_edits_own_description_but_not_the_workflow(tickets, infra, tenant):
    requester = auth_headers(infra, tenant, ["requester"], "req-1")
    other = auth_headers(infra, tenant, ["requester"], "req-2")
    ticket = await create_ticket(tickets, requester, subject="물이 샙니다")
    edited = await patch_ticket(tickets, requester, ticket, description="천장에서 누수가 있습니다")
    assert edited.status_code == 200
    refused = await patch_ticket(tickets, requester, edited.json(), status="closed", assignee_id="me")
    assert refused.status_code == 403
    assert "assignee_id" in refused.json()["detail"] and "status" in refused.json()["detail"]
    assert (await patch_ticket(tickets, other, edited.json(), subject="x")).status_code == 404


async def test_parent_and_child_links(tickets, agent):
    parent = await create_ticket(tickets, agent, subject="Building A power outage")
    child = await create_ticket(tickets, agent, subject="Elevator 2 down (power)", parent_id=parent["id"])
    assert child["parent_id"] == parent["id"]
    children = (await tickets.get(f"/api/v1/tickets?parent_id={parent['id']}", headers=agent)).json()["items"]
    assert [t["id"] for t in children] == [child["id"]]
    cycle = await patch_ticket(tickets, agent, parent, parent_id=child["id"])
    assert cycle.status_code == 422
    unlinked = await patch_ticket(tickets, agent, child, parent_id=None)
    assert unlinked.status_code == 200 and unlinked.json()["parent_id"] is None


async def test_a_change_records_all_its_events_in_one_statement(infra, agent):
    """A PATCH of status and assignee announces ticket.updated, ticket.status_changed and
    ticket.assigned, in that order, written to the outbox together."""
    app = create_app(settings_for(infra, Settings, "tickets"))
    async with app_client(app) as client:
        ticket = await create_ticket(client, agent)
        count_statements(app.state.engine)
        with statements_run() as statements:
            changed = await patch_ticket(client, agent, ticket, status="in_progress", assignee_id="agent-2")
    assert changed.status_code == 200, changed.text
    inserts = [statement for statement in statements if "INTO tickets.outbox" in statement]
    assert len(inserts) == 2, statements  # one executemany, seen by both counting hooks
    assert await outbox_types(infra, ticket["id"]) == [
        "helpdesk.tickets.ticket.created.v1",
        "helpdesk.tickets.ticket.updated.v1",
        "helpdesk.tickets.ticket.status_changed.v1",
        "helpdesk.tickets.ticket.assigned.v1",
    ]
