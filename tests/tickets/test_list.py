"""Listing: every filter and every sort, with keyset cursors, compared with the same rule in Python."""

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from tests.conftest import auth_headers, unique_tenant
from tests.tickets.helpers import admin_fetch, create_ticket, patch_ticket

PRIORITY_RANK = {"low": 1, "medium": 2, "high": 3, "urgent": 4}
INFINITY = datetime.max.replace(tzinfo=UTC)


@pytest.fixture(scope="module")
async def dataset(tickets, infra):
    """Twelve tickets of one tenant with varied fields; returns (tenant, headers, tickets by id)."""
    tenant = unique_tenant()
    agent = auth_headers(infra, tenant, ["agent"], "agent-1")
    specs = [
        dict(
            priority="urgent",
            category="elevator",
            building="A",
            floor="3",
            tags=["elevator", "safety"],
            custom_fields={"asset": "EL-1"},
            requester_id="req-1",
        ),
        dict(
            priority="high",
            category="plumbing",
            building="A",
            floor="1",
            room="101",
            tags=["leak"],
            requester_id="req-1",
            group_id="facilities",
        ),
        dict(
            priority="low",
            category="it",
            building="B",
            floor="3",
            tags=["printer"],
            requester_id="req-2",
            custom_fields={"asset": "PR-9", "vip": True},
        ),
        dict(
            priority="medium",
            category="elevator",
            building="B",
            floor="1",
            requester_id="req-2",
            assignee_id="agent-1",
        ),
        dict(
            priority="medium",
            category="it",
            tags=["printer", "safety"],
            requester_id="req-3",
            assignee_id="agent-2",
            group_id="it-desk",
        ),
        dict(
            priority="urgent", category="plumbing", building="A", floor="3", room="301", requester_id="req-3"
        ),
        dict(priority="low", requester_id="req-1"),
        dict(priority="high", category="hvac", building="C", requester_id="req-4", assignee_id="agent-1"),
        dict(priority="medium", category="hvac", building="C", floor="2", requester_id="req-4"),
        dict(priority="low", category="it", requester_id="req-2", tags=["printer"]),
    ]
    created = [
        await create_ticket(tickets, agent, subject=f"ticket {n}", **spec) for n, spec in enumerate(specs)
    ]
    # Workflow: a few statuses.
    for index, status in [
        (1, "in_progress"),
        (2, "pending"),
        (3, "resolved"),
        (4, "closed"),
        (8, "in_progress"),
    ]:
        moved = await patch_ticket(tickets, agent, created[index], status=status)
        assert moved.status_code == 200, moved.text
    # Deadlines set directly (SLA policies are tested elsewhere): past, future, none.
    now = datetime.now(UTC)
    for index, due in [
        (0, now - timedelta(hours=2)),
        (1, now + timedelta(hours=5)),
        (5, now - timedelta(days=1)),
        (4, now - timedelta(hours=1)),
        (7, now + timedelta(days=2)),
    ]:
        await admin_fetch(
            infra, "UPDATE tickets.tickets SET due_at = $1 WHERE id = $2::uuid", due, created[index]["id"]
        )
    child = await create_ticket(
        tickets, agent, subject="child", parent_id=created[0]["id"], requester_id="req-1"
    )
    deleted = await create_ticket(tickets, agent, subject="deleted one", requester_id="req-1")
    admin = auth_headers(infra, tenant, ["admin"], "admin-1")
    assert (await tickets.delete(f"/api/v1/tickets/{deleted['id']}", headers=admin)).status_code == 204
    everything = {}
    for ticket in [*created, child, deleted]:
        everything[ticket["id"]] = (
            await tickets.get(f"/api/v1/tickets/{ticket['id']}", headers=admin)
        ).json()
    return tenant, agent, everything


def parse(ts):
    return datetime.fromisoformat(ts) if ts else None


def newest_first(items):
    return [t["id"] for t in sorted(items, key=lambda t: (t["created_at"], t["id"]), reverse=True)]


async def list_all(tickets, headers, params, limit=3):
    """Follow cursors to the end; returns ids in the order served."""
    ids, cursor = [], None
    for _ in range(100):
        page_params = {**params, "limit": limit, **({"cursor": cursor} if cursor else {})}
        response = await tickets.get("/api/v1/tickets", params=page_params, headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        ids += [t["id"] for t in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            return ids
    raise AssertionError("pagination did not end")


NOW = datetime.now(UTC)

FILTERS = [
    ({"status": "open"}, lambda t: t["status"] == "open"),
    ({"status": ["pending", "in_progress"]}, lambda t: t["status"] in ("pending", "in_progress")),
    ({"status_category": "resolved"}, lambda t: t["status_category"] == "resolved"),
    ({"priority": "urgent"}, lambda t: t["priority"] == "urgent"),
    ({"priority": ["low", "high"]}, lambda t: t["priority"] in ("low", "high")),
    ({"category": "it"}, lambda t: t["category"] == "it"),
    ({"assignee": "me"}, lambda t: t["assignee_id"] == "agent-1"),
    ({"assignee": "none"}, lambda t: t["assignee_id"] is None),
    ({"assignee": "agent-2"}, lambda t: t["assignee_id"] == "agent-2"),
    ({"group": "facilities"}, lambda t: t["group_id"] == "facilities"),
    ({"requester": "req-2"}, lambda t: t["requester_id"] == "req-2"),
    ({"tag": "printer"}, lambda t: "printer" in t["tags"]),
    ({"tag": ["printer", "safety"]}, lambda t: {"printer", "safety"} <= set(t["tags"])),
    ({"building": "A"}, lambda t: t["building"] == "A"),
    ({"floor": "3"}, lambda t: t["floor"] == "3"),
    ({"building": "A", "floor": "3"}, lambda t: t["building"] == "A" and t["floor"] == "3"),
    ({"room": "301"}, lambda t: t["room"] == "301"),
    ({"cf.asset": "PR-9"}, lambda t: t["custom_fields"].get("asset") == "PR-9"),
    (
        {"overdue": "true"},
        lambda t: (
            t["due_at"] and parse(t["due_at"]) < NOW and t["status_category"] not in ("resolved", "closed")
        ),
    ),
    (
        {"due_before": (NOW + timedelta(days=1)).isoformat()},
        lambda t: t["due_at"] and parse(t["due_at"]) < NOW + timedelta(days=1),
    ),
    ({"created_from": "2000-01-01T00:00:00Z"}, lambda t: True),
    ({"created_to": "2000-01-01T00:00:00Z"}, lambda t: False),
    ({"updated_from": "2000-01-01T00:00:00", "updated_to": "2999-01-01T00:00:00Z"}, lambda t: True),
    ({"priority": "medium", "category": "it"}, lambda t: t["priority"] == "medium" and t["category"] == "it"),
]


@pytest.mark.parametrize(("params", "rule"), FILTERS, ids=[str(p) for p, _ in FILTERS])
async def test_filter(tickets, dataset, params, rule):
    _, agent, everything = dataset
    live = [t for t in everything.values() if t["deleted_at"] is None]
    expected = newest_first([t for t in live if rule(t)])
    assert await list_all(tickets, agent, params) == expected


async def test_parent_filter_lists_children(tickets, dataset):
    _, agent, everything = dataset
    child = next(t for t in everything.values() if t["subject"] == "child")
    assert await list_all(tickets, agent, {"parent_id": child["parent_id"]}) == [child["id"]]


def sort_key(field):
    return {
        "created_at": lambda t: (t["created_at"], t["id"]),
        "updated_at": lambda t: (t["updated_at"], t["id"]),
        "priority": lambda t: (PRIORITY_RANK[t["priority"]], t["created_at"], t["id"]),
        "due_at": lambda t: (parse(t["due_at"]) or INFINITY, t["id"]),
    }[field]


@pytest.mark.parametrize("field", ["created_at", "updated_at", "priority", "due_at"])
@pytest.mark.parametrize("order", ["asc", "desc"])
async def test_sort_with_keyset_pages(tickets, dataset, field, order):
    _, agent, everything = dataset
    live = [t for t in everything.values() if t["deleted_at"] is None]
    expected = [t["id"] for t in sorted(live, key=sort_key(field), reverse=order == "desc")]
    assert await list_all(tickets, agent, {"sort": field, "order": order}, limit=2) == expected


async def test_sort_and_filter_combine(tickets, dataset):
    _, agent, everything = dataset
    live = [t for t in everything.values() if t["deleted_at"] is None and t["building"] == "A"]
    expected = [t["id"] for t in sorted(live, key=sort_key("priority"), reverse=True)]
    assert await list_all(tickets, agent, {"building": "A", "sort": "priority"}, limit=1) == expected


async def test_a_cursor_from_another_sort_is_refused(tickets, dataset):
    _, agent, _ = dataset
    page = (
        await tickets.get("/api/v1/tickets", params={"limit": 1, "sort": "priority"}, headers=agent)
    ).json()
    response = await tickets.get("/api/v1/tickets", params={"cursor": page["next_cursor"]}, headers=agent)
    assert response.status_code == 400


async def test_deleted_tickets_are_listed_only_for_admins_who_ask(tickets, infra, dataset):
    tenant, agent, everything = dataset
    deleted = [t["id"] for t in everything.values() if t["deleted_at"] is not None]
    assert not set(deleted) & set(await list_all(tickets, agent, {}))
    admin = auth_headers(infra, tenant, ["admin"], "admin-1")
    assert await list_all(tickets, admin, {"deleted": "true"}) == deleted
    assert (
        await tickets.get("/api/v1/tickets", params={"deleted": "true"}, headers=agent)
    ).status_code == 403


async def test_requesters_list_only_their_own(tickets, infra, dataset):
    tenant, _, everything = dataset
    requester = auth_headers(infra, tenant, ["requester"], "req-2")
    expected = newest_first(
        [t for t in everything.values() if t["requester_id"] == "req-2" and not t["deleted_at"]]
    )
    assert await list_all(tickets, requester, {}) == expected
    # A requester filtering by someone else gets nothing, not their tickets.
    assert await list_all(tickets, requester, {"requester": "req-1"}) == []


async def test_other_tenants_see_none_of_it(tickets, infra, dataset):
    other = auth_headers(infra, unique_tenant(), ["admin"], "agent-1")
    assert await list_all(tickets, other, {}) == []


async def test_time_ranges_on_tickets_created_and_updated_at_different_times(tickets, infra):
    """`updated_to` also bounds created_at in SQL, `created_from` updated_at: the results must not change."""
    tenant = unique_tenant()
    agent = auth_headers(infra, tenant, ["agent"], "agent-1")
    now = datetime.now(UTC)
    days = [  # (created, updated) days ago
        ("old, touched yesterday", 10, 1),
        ("old, untouched", 10, 9),
        ("recent", 2, 2),
        ("recent, touched today", 3, 0),
    ]
    ids = {}
    for subject, created, updated in days:
        ticket = await create_ticket(tickets, agent, subject=subject)
        ids[subject] = ticket["id"]
        await admin_fetch(
            infra,
            "UPDATE tickets.tickets SET created_at = $1, updated_at = $2 WHERE id = $3::uuid",
            now - timedelta(days=created),
            now - timedelta(days=updated),
            ticket["id"],
        )
    five_days_ago = (now - timedelta(days=5)).isoformat()

    async def listed(params):
        return {subject for subject, id_ in ids.items() if id_ in await list_all(tickets, agent, params)}

    assert await listed({"updated_to": five_days_ago}) == {"old, untouched"}
    assert await listed({"created_from": five_days_ago}) == {"recent", "recent, touched today"}
    assert await listed({"updated_from": five_days_ago}) == {
        "old, touched yesterday",
        "recent",
        "recent, touched today",
    }
    assert await listed({"created_to": five_days_ago, "sort": "updated_at"}) == {
        "old, touched yesterday",
        "old, untouched",
    }
    # The database keeps the pair consistent, so the derived bounds never hide a ticket.
    with pytest.raises(asyncpg.CheckViolationError):
        await admin_fetch(
            infra,
            "UPDATE tickets.tickets SET updated_at = created_at - interval '1 second' WHERE id = $1::uuid",
            ids["recent"],
        )


async def test_custom_field_filters_match_numbers_and_booleans_too(tickets, infra):
    # A query string is text: cf.floor=3 must find a stored 3 as well as a stored "3".
    agent = auth_headers(infra, unique_tenant(), ["agent"], "agent-1")
    fields = {"floor": 3, "load": 1.5, "vip": True, "vendor": "otis"}
    typed = await create_ticket(tickets, agent, subject="typed", custom_fields=fields)
    text = await create_ticket(tickets, agent, subject="text", custom_fields={"floor": "3", "vip": "true"})
    await create_ticket(tickets, agent, subject="other", custom_fields={"floor": 4, "load": 15, "vip": False})
    for params, expected in [
        ({"cf.floor": "3"}, {typed["id"], text["id"]}),
        ({"cf.load": "1.5"}, {typed["id"]}),
        ({"cf.vip": "true"}, {typed["id"], text["id"]}),
        ({"cf.vip": "true", "cf.vendor": "otis"}, {typed["id"]}),
        ({"cf.floor": "3.0"}, {typed["id"]}),  # the same number
        ({"cf.vendor": "Otis"}, set()),
    ]:
        response = await tickets.get("/api/v1/tickets", params=params, headers=agent)
        assert response.status_code == 200, response.text
        assert {ticket["id"] for ticket in response.json()["items"]} == expected, params


async def test_tags_are_case_insensitive(tickets, infra):
    agent = auth_headers(infra, unique_tenant(), ["agent"], "agent-1")
    ticket = await create_ticket(tickets, agent, tags=["VIP", "vip", "Elevator", "ÜBER", "누수"])
    assert ticket["tags"] == ["vip", "elevator", "über", "누수"]
    other = await create_ticket(tickets, agent, tags=["vip"])
    for tag, expected in [
        ("VIP", {ticket["id"], other["id"]}),
        ("elevator", {ticket["id"]}),
        ("Über", {ticket["id"]}),
    ]:
        response = await tickets.get("/api/v1/tickets", params={"tag": tag}, headers=agent)
        assert response.status_code == 200, response.text
        assert {item["id"] for item in response.json()["items"]} == expected, tag

    changed = await patch_ticket(tickets, agent, ticket, tags=["Urgent", "urgent", "ELEVATOR"])
    assert changed.status_code == 200, changed.text
    assert changed.json()["tags"] == ["urgent", "elevator"]
    bulk = await tickets.post(
        "/api/v1/tickets/bulk",
        json={
            "ids": [ticket["id"], other["id"]],
            "add_tags": ["Elevator", "Leak"],
            "remove_tags": ["VIP", "URGENT"],
        },
        headers=agent,
    )
    assert bulk.status_code == 200, bulk.text
    assert {item["id"]: item["tags"] for item in bulk.json()["items"]} == {
        ticket["id"]: ["elevator", "leak"],
        other["id"]: ["elevator", "leak"],
    }
