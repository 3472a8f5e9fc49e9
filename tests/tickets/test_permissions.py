"""Who may do what: every tickets route against every kind of caller, and list/search scoping.

Callers (columns of the matrix):
  own        requester "alice", who requested the ticket
  other      requester "bob" of the same tenant
  agent      agent of the tenant
  admin      admin of the tenant
  service    machine client of the tenant
  x-agent    agent of another tenant (same user id as `agent`)
  x-admin    admin of another tenant (same user id as `admin`)
  x-alice    requester of another tenant whose user id is also "alice"

Rules: a ticket the caller may not see is 404 (another tenant's always); an action the caller's
role may never do is 403 whatever the ticket. A refused request writes nothing, and a caller of
another tenant never changes this tenant (x-admin removing `on_hold` removes its own tenant's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import auth_headers, unique_tenant
from tests.tickets.helpers import (
    PROBLEM,
    TICKETS,
    add_comment,
    create_ticket,
    tenant_state,
)

CALLERS = ("own", "other", "agent", "admin", "service", "x-agent", "x-admin", "x-alice")
IDENTITIES = {  # caller -> (home tenant?, roles, user id)
    "own": (True, ["requester"], "alice"),
    "other": (True, ["requester"], "bob"),
    "agent": (True, ["agent"], "agent-1"),
    "admin": (True, ["admin"], "admin-1"),
    "service": (True, ["service"], "svc-1"),
    "x-agent": (False, ["agent"], "agent-1"),
    "x-admin": (False, ["admin"], "admin-1"),
    "x-alice": (False, ["requester"], "alice"),
}

# Route -> (method, path, body). In paths: {id} alice's ticket, {into} her second ticket,
# {deleted} her soft-deleted ticket; the tenant has status `on_hold`, category `hvac` and an
# SLA policy for `low` (so has the stranger tenant).
ROUTES: dict[str, tuple[str, str, Any]] = {
    "create": ("POST", "", {"subject": "new"}),
    "create for someone": ("POST", "", {"subject": "new", "assignee_id": "agent-1"}),
    "list": ("GET", "", None),
    "list deleted": ("GET", "?deleted=true", None),
    "read": ("GET", "/{id}", None),
    "update subject": ("PATCH", "/{id}", {"subject": "edited"}),
    "update priority": ("PATCH", "/{id}", {"priority": "urgent"}),
    "update status": ("PATCH", "/{id}", {"status": "in_progress"}),
    "delete": ("DELETE", "/{id}", None),
    "restore": ("POST", "/{deleted}/restore", None),
    "merge": ("POST", "/{id}/merge", {"into_ticket_id": "{into}"}),
    "similar": ("GET", "/{id}/similar", None),
    "comments": ("GET", "/{id}/comments", None),
    "reply": ("POST", "/{id}/comments", {"body": "any news?"}),
    "internal note": ("POST", "/{id}/comments", {"body": "vendor code 7", "visibility": "internal"}),
    "history": ("GET", "/{id}/history", None),
    "attachments": ("GET", "/{id}/attachments", None),
    "bulk": ("POST", "/bulk", {"ids": ["{id}"], "priority": "high"}),
    "statuses": ("GET", "/statuses", None),
    "add status": ("POST", "/statuses", {"key": "waiting_parts", "name": "Parts", "category": "pending"}),
    "rename status": ("PATCH", "/statuses/on_hold", {"name": "보류"}),
    "remove status": ("DELETE", "/statuses/on_hold", None),
    "categories": ("GET", "/categories", None),
    "add category": ("POST", "/categories", {"key": "plumbing", "name": "Plumbing"}),
    "rename category": ("PATCH", "/categories/hvac", {"name": "냉난방"}),
    "remove category": ("DELETE", "/categories/hvac", None),
    "dead letters": ("GET", "/dead-letters", None),
    "replay dead letter": ("POST", "/dead-letters/1/replay", None),  # none exists: admins get 404
    "sla policies": ("GET", "/sla/policies", None),
    "set sla policy": (
        "PUT",
        "/sla/policies/high",
        {"first_response_minutes": 60, "resolution_minutes": 480},
    ),
    "remove sla policy": ("DELETE", "/sla/policies/low", None),
    "sla calendar": ("GET", "/sla/calendar", None),
    "set sla calendar": ("PUT", "/sla/calendar", {"time_zone": "Asia/Seoul"}),
}

# fmt: off
EXPECTED: dict[str, tuple[int, ...]] = {
    #                      own  other agent admin service x-agent x-admin x-alice
    "create":             (201, 201,  201,  201,  201,    201,    201,    201),
    "create for someone": (403, 403,  201,  201,  201,    201,    201,    403),
    "list":               (200, 200,  200,  200,  200,    200,    200,    200),
    "list deleted":       (403, 403,  403,  200,  403,    403,    200,    403),
    "read":               (200, 404,  200,  200,  200,    404,    404,    404),
    "update subject":     (200, 404,  200,  200,  200,    404,    404,    404),
    "update priority":    (403, 404,  200,  200,  200,    404,    404,    404),
    "update status":      (403, 404,  200,  200,  200,    404,    404,    404),
    "delete":             (403, 403,  403,  204,  403,    403,    404,    403),
    "restore":            (403, 403,  403,  200,  403,    403,    404,    403),
    "merge":              (403, 403,  200,  200,  200,    404,    404,    403),
    "similar":            (403, 403,  200,  200,  200,    404,    404,    403),
    "comments":           (200, 404,  200,  200,  200,    404,    404,    404),
    "reply":              (201, 404,  201,  201,  201,    404,    404,    404),
    "internal note":      (403, 404,  201,  201,  201,    404,    404,    404),
    "history":            (403, 404,  200,  200,  200,    404,    404,    404),
    "attachments":        (200, 404,  200,  200,  200,    404,    404,    404),
    "bulk":               (403, 403,  200,  200,  200,    404,    404,    403),
    "statuses":           (200, 200,  200,  200,  200,    200,    200,    200),
    "add status":         (403, 403,  403,  201,  403,    403,    201,    403),
    "rename status":      (403, 403,  403,  200,  403,    403,    200,    403),
    "remove status":      (403, 403,  403,  204,  403,    403,    204,    403),
    "categories":         (200, 200,  200,  200,  200,    200,    200,    200),
    "add category":       (403, 403,  403,  201,  403,    403,    201,    403),
    "rename category":    (403, 403,  403,  200,  403,    403,    200,    403),
    "remove category":    (403, 403,  403,  204,  403,    403,    204,    403),
    "dead letters":       (403, 403,  403,  200,  403,    403,    200,    403),
    "replay dead letter": (403, 403,  403,  404,  403,    403,    404,    403),
    # SLA reads are for agents and admins only (sla/endpoints.py STAFF): unlike the ticket
    # routes, the service role is refused here.
    "sla policies":       (403, 403,  200,  200,  403,    200,    200,    403),
    "set sla policy":     (403, 403,  403,  200,  403,    403,    200,    403),
    "remove sla policy":  (403, 403,  403,  204,  403,    403,    204,    403),
    "sla calendar":       (403, 403,  200,  200,  403,    200,    200,    403),
    "set sla calendar":   (403, 403,  403,  200,  403,    403,    200,    403),
}
# fmt: on

CASES = [
    pytest.param(route, caller, EXPECTED[route][index], id=f"{route} as {caller}")
    for route in ROUTES
    for index, caller in enumerate(CALLERS)
]


@dataclass
class World:
    """A tenant with alice's and bob's tickets, and a stranger tenant that has tickets of its own."""

    tenant: str
    stranger: str
    headers: dict[str, dict[str, str]]
    ticket: dict[str, Any]  # alice's, with a public reply and an internal note
    into: dict[str, Any]  # alice's second ticket
    deleted: dict[str, Any]  # alice's, soft-deleted
    bobs: dict[str, Any]

    def fill(self, template: Any) -> Any:
        ids = {"id": self.ticket["id"], "into": self.into["id"], "deleted": self.deleted["id"]}
        if isinstance(template, str):
            return template.format(**ids)
        if isinstance(template, list):
            return [self.fill(item) for item in template]
        if isinstance(template, dict):
            return {key: self.fill(value) for key, value in template.items()}
        return template


LOW_POLICY = {"first_response_minutes": 480, "resolution_minutes": 4800}


async def build_world(tickets, infra) -> World:
    tenant, stranger = unique_tenant("perm"), unique_tenant("perm-x")
    headers = {
        caller: auth_headers(infra, tenant if home else stranger, roles, user)
        for caller, (home, roles, user) in IDENTITIES.items()
    }
    alice, bob, admin = headers["own"], headers["other"], headers["admin"]
    ticket = await create_ticket(tickets, alice, subject="radiator leaking in room 204", building="B1")
    await add_comment(tickets, headers["agent"], ticket["id"], "a plumber comes at 3pm")
    await add_comment(tickets, headers["agent"], ticket["id"], "tenant owes rent, low priority", "internal")
    ticket = (await tickets.get(f"{TICKETS}/{ticket['id']}", headers=admin)).json()
    into = await create_ticket(tickets, alice, subject="radiator leaking again in 204", building="B1")
    deleted = await create_ticket(tickets, alice, subject="never mind")
    assert (await tickets.delete(f"{TICKETS}/{deleted['id']}", headers=admin)).status_code == 204
    bobs = await create_ticket(tickets, bob, subject="door lock broken")
    for path, body in [
        ("statuses", {"key": "on_hold", "name": "On hold", "category": "pending"}),
        ("categories", {"key": "hvac", "name": "HVAC"}),
    ]:
        assert (await tickets.post(f"{TICKETS}/{path}", json=body, headers=admin)).status_code == 201
    assert (
        await tickets.put(f"{TICKETS}/sla/policies/low", json=LOW_POLICY, headers=admin)
    ).status_code == 200
    # The stranger tenant has its own alice, ticket and settings, so a wrong scope would find rows.
    await create_ticket(tickets, headers["x-alice"], subject="radiator leaking in room 204", building="B1")
    for path, body in [
        ("statuses", {"key": "on_hold", "name": "On hold", "category": "pending"}),
        ("categories", {"key": "hvac", "name": "HVAC"}),
    ]:
        assert (
            await tickets.post(f"{TICKETS}/{path}", json=body, headers=headers["x-admin"])
        ).status_code == 201
    stranger_policy = await tickets.put(
        f"{TICKETS}/sla/policies/low", json=LOW_POLICY, headers=headers["x-admin"]
    )
    assert stranger_policy.status_code == 200
    return World(tenant, stranger, headers, ticket, into, deleted, bobs)


@pytest.fixture(scope="module")
async def read_only_world(tickets, infra) -> World:
    """One world for the requests that change nothing (GETs, and every unauthenticated one):
    each case still checks that both tenants are untouched."""
    return await build_world(tickets, infra)


@pytest.mark.parametrize(("route", "caller", "expected"), CASES)
async def test_route_permissions(tickets, infra, read_only_world, route, caller, expected):
    method, path, body = ROUTES[route]
    world = read_only_world if method == "GET" else await build_world(tickets, infra)
    headers = world.headers[caller] | {"If-Match": f'W/"{world.ticket["version"]}"'}
    before = {tenant: await tenant_state(infra, tenant) for tenant in (world.tenant, world.stranger)}
    response = await tickets.request(
        method, TICKETS + world.fill(path), json=world.fill(body), headers=headers
    )
    assert response.status_code == expected, (
        f"{route} as {caller}: {response.status_code} {response.text[:300]}"
    )
    if expected >= 400:
        assert response.headers["content-type"] == PROBLEM
        assert response.json()["status"] == expected
        # Refused means untouched: neither the ticket's tenant nor the caller's changed.
        for tenant, state in before.items():
            assert await tenant_state(infra, tenant) == state
    elif caller.startswith("x-"):
        assert await tenant_state(infra, world.tenant) == before[world.tenant]
    if expected == 404:
        # A 404 says nothing about the ticket: no subject, no owner, no tenant in the answer.
        text = response.text
        assert "radiator" not in text and "alice" not in text and world.tenant not in text


@pytest.mark.parametrize("route", list(ROUTES))
async def test_every_route_needs_a_valid_token(tickets, infra, read_only_world, route):
    world = read_only_world
    method, path, body = ROUTES[route]
    for headers in ({}, {"Authorization": "Bearer not-a-jwt"}, {"Authorization": "Basic YWxpY2U6cHc="}):
        response = await tickets.request(
            method, TICKETS + world.fill(path), json=world.fill(body), headers=headers
        )
        assert response.status_code == 401, f"{route} {headers}: {response.status_code}"
        assert response.headers["content-type"] == PROBLEM


def _ids(response) -> set[str]:
    assert response.status_code == 200, response.text
    return {item["id"] for item in response.json()["items"]}


async def test_requester_lists_only_own_tickets_under_every_sort_and_page_size(tickets, infra):
    world = await build_world(tickets, infra)
    alice, agent = world.headers["own"], world.headers["agent"]
    on_behalf = await create_ticket(tickets, agent, subject="phoned in", requester_id="alice")
    unrelated = await create_ticket(tickets, agent, subject="walk-in", requester_id="carol")
    alices = {world.ticket["id"], world.into["id"], on_behalf["id"]}
    for params in [
        {},
        {"sort": "priority"},
        {"sort": "updated_at", "order": "asc"},
        {"sort": "due_at"},
        {"q": "radiator"},
        {"requester": "alice"},
        {"status_category": "open"},
    ]:
        seen, cursor = [], None
        while True:
            page = await tickets.get(
                TICKETS, params=params | {"limit": 1} | ({"cursor": cursor} if cursor else {}), headers=alice
            )
            seen += list(_ids(page))
            cursor = page.json()["next_cursor"]
            if cursor is None:
                break
        expected = {world.ticket["id"], world.into["id"]} if "q" in params else alices
        assert sorted(seen) == sorted(expected), params
    # Asking for someone else's tickets narrows, never widens.
    assert _ids(await tickets.get(TICKETS, params={"requester": "bob"}, headers=alice)) == set()
    staff_view = _ids(await tickets.get(TICKETS, headers=agent))
    assert staff_view == alices | {world.bobs["id"], unrelated["id"]}
    assert _ids(await tickets.get(TICKETS, headers=world.headers["service"])) == staff_view
    assert _ids(await tickets.get(TICKETS, headers=world.headers["x-alice"])).isdisjoint(staff_view)


async def test_requester_search_never_finds_others_tickets_or_internal_notes(tickets, infra):
    world = await build_world(tickets, infra)
    alice, bob, agent = world.headers["own"], world.headers["other"], world.headers["agent"]
    await add_comment(tickets, bob, world.bobs["id"], "my pumpkin soup spilled")
    await add_comment(tickets, agent, world.ticket["id"], "비밀 메모: 관리인 연락처 010", "internal")
    await add_comment(tickets, agent, world.ticket["id"], "zebra-4242 vendor account", "internal")
    for q in ["door lock", "pumpkin", "rent", "zebra-4242", "4242", "비밀", "관리인"]:
        response = await tickets.get(TICKETS, params={"q": q}, headers=alice)
        assert _ids(response) == set(), q
        assert q not in response.text
    for q in ["rent", "4242", "비밀"]:
        assert _ids(await tickets.get(TICKETS, params={"q": q}, headers=agent)) == {world.ticket["id"]}, q
    assert _ids(await tickets.get(TICKETS, params={"q": "pumpkin"}, headers=agent)) == {world.bobs["id"]}
    # Public replies on her own ticket are searchable for her.
    assert _ids(await tickets.get(TICKETS, params={"q": "plumber"}, headers=alice)) == {world.ticket["id"]}
    # Another tenant's staff find nothing of this tenant.
    for q in ["radiator", "rent", "4242", "pumpkin"]:
        found = _ids(await tickets.get(TICKETS, params={"q": q}, headers=world.headers["x-agent"]))
        assert world.ticket["id"] not in found and world.bobs["id"] not in found


async def test_requester_never_sees_internal_notes_in_comments(tickets, infra):
    world = await build_world(tickets, infra)
    url = f"{TICKETS}/{world.ticket['id']}/comments"
    mine = await tickets.get(url, headers=world.headers["own"])
    assert [c["visibility"] for c in mine.json()["items"]] == ["public"]
    assert "rent" not in mine.text
    staff = await tickets.get(url, headers=world.headers["agent"])
    assert [c["visibility"] for c in staff.json()["items"]] == ["public", "internal"]


async def test_internal_notes_stay_internal_after_a_merge(tickets, infra):
    world = await build_world(tickets, infra)
    merged = await tickets.post(
        f"{TICKETS}/{world.ticket['id']}/merge",
        json={"into_ticket_id": world.into["id"]},
        headers=world.headers["agent"],
    )
    assert merged.status_code == 200, merged.text
    moved = await tickets.get(f"{TICKETS}/{world.into['id']}/comments", headers=world.headers["own"])
    assert [c["body"] for c in moved.json()["items"]] == ["a plumber comes at 3pm"]
    assert _ids(await tickets.get(TICKETS, params={"q": "rent"}, headers=world.headers["own"])) == set()


async def test_requester_cannot_read_own_ticket_once_deleted(tickets, infra):
    world = await build_world(tickets, infra)
    url = f"{TICKETS}/{world.deleted['id']}"
    for suffix in ("", "/comments"):
        assert (await tickets.get(url + suffix, headers=world.headers["own"])).status_code == 404
        assert (await tickets.get(url + suffix, headers=world.headers["agent"])).status_code == 404
    assert (await tickets.get(url, headers=world.headers["admin"])).status_code == 200
    listed = await tickets.get(TICKETS, headers=world.headers["own"])
    assert world.deleted["id"] not in _ids(listed)
    assert _ids(await tickets.get(TICKETS, params={"deleted": "true"}, headers=world.headers["admin"])) == {
        world.deleted["id"]
    }


async def test_spoofed_identity_headers_are_ignored(tickets, infra):
    world = await build_world(tickets, infra)
    spoof = {"X-Tenant-Id": world.tenant, "X-User-Id": "alice", "X-User-Roles": "admin"}
    as_stranger = world.headers["x-agent"] | spoof
    assert (await tickets.get(f"{TICKETS}/{world.ticket['id']}", headers=as_stranger)).status_code == 404
    assert _ids(await tickets.get(TICKETS, headers=as_stranger)).isdisjoint(
        {world.ticket["id"], world.bobs["id"]}
    )
    as_bob = world.headers["other"] | spoof
    assert (await tickets.get(f"{TICKETS}/{world.ticket['id']}", headers=as_bob)).status_code == 404
    assert (await tickets.delete(f"{TICKETS}/{world.ticket['id']}", headers=as_bob)).status_code == 403


async def test_requester_creates_tickets_only_as_themselves(tickets, infra):
    world = await build_world(tickets, infra)
    for field, value in [
        ("requester_id", "bob"),
        ("watchers", ["bob"]),
        ("group_id", "staff"),
        ("parent_id", world.bobs["id"]),
    ]:
        before = await tenant_state(infra, world.tenant)
        response = await tickets.post(
            TICKETS, json={"subject": "x", field: value}, headers=world.headers["own"]
        )
        assert response.status_code == 403, (field, response.text)
        assert field in response.json()["detail"]
        assert await tenant_state(infra, world.tenant) == before
    created = await create_ticket(tickets, world.headers["own"], subject="plain")
    assert created["requester_id"] == "alice"
