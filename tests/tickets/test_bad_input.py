"""Hostile and malformed input to the tickets API.

Every case must come back as a 4xx application/problem+json that names the problem (never a
500), and must write nothing: each request runs inside `nothing_written`, which compares all of
the tenant's rows (tickets, comments, history, statuses, categories, idempotency keys, outbox
events) before and after.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.conftest import Infra, auth_headers, unique_tenant
from tests.tickets.helpers import (
    TICKETS,
    add_comment,
    assert_problem,
    create_ticket,
    cursor_of,
    patch_ticket,
    tenant_state,
)


@dataclass
class Desk:
    """One tenant with an open ticket (a public reply and an internal note), plus a stranger's ticket."""

    tenant: str
    admin: dict[str, str]
    ticket: dict[str, Any]
    other_tenant_ticket: dict[str, Any]

    @property
    def url(self) -> str:
        return f"{TICKETS}/{self.ticket['id']}"

    @property
    def if_match(self) -> dict[str, str]:
        return self.admin | {"If-Match": f'W/"{self.ticket["version"]}"'}


@pytest.fixture
async def desk(tickets, infra) -> Desk:
    tenant = unique_tenant("bad")
    admin = auth_headers(infra, tenant, ["admin"], "admin-1")
    ticket = await create_ticket(tickets, admin, tags=["lift"], custom_fields={"floor": 3})
    await add_comment(tickets, admin, ticket["id"], "on our way")
    await add_comment(tickets, admin, ticket["id"], "call the vendor", "internal")
    ticket = (await tickets.get(f"{TICKETS}/{ticket['id']}", headers=admin)).json()
    stranger = auth_headers(infra, unique_tenant("bad-other"), ["admin"], "admin-2")
    return Desk(tenant, admin, ticket, await create_ticket(tickets, stranger))


@contextlib.asynccontextmanager
async def nothing_written(infra: Infra, tenant: str) -> AsyncIterator[None]:
    before = await tenant_state(infra, tenant)
    yield
    after = await tenant_state(infra, tenant)
    for table, rows in before.items():
        assert after[table] == rows, f"rejected request changed tickets.{table}"


async def send(client: httpx.AsyncClient, method: str, url: str, headers: dict[str, str], **kwargs: Any):
    return await client.request(method, url, headers=headers, **kwargs)


# -- unknown and server-owned fields ------------------------------------------------------------

SERVER_OWNED = [
    "tenant_id",
    "id",
    "created_at",
    "updated_at",
    "due_at",
    "first_response_due_at",
    "first_responded_at",
    "resolved_at",
    "closed_at",
    "version",
    "number",
    "status_category",
    "deleted_at",
    "merged_into_id",
    "x_not_a_field_7f3a",
]
SERVER_VALUE = {"tenant_id": "evil", "id": str(uuid.uuid4()), "version": 99, "number": 1}


@pytest.mark.parametrize("field", SERVER_OWNED)
async def test_create_rejects_unknown_or_server_owned_field(tickets, infra, desk, field):
    body = {"subject": "x", field: SERVER_VALUE.get(field, "2020-01-01T00:00:00Z")}
    async with nothing_written(infra, desk.tenant):
        response = await tickets.post(TICKETS, json=body, headers=desk.admin)
    problem = assert_problem(response, 422, fields=(field,))
    assert any(error["type"] == "extra_forbidden" for error in problem["errors"])


@pytest.mark.parametrize("field", [*SERVER_OWNED, "requester_id", "source"])
async def test_update_rejects_unknown_or_server_owned_field(tickets, infra, desk, field):
    body = {"subject": "changed", field: SERVER_VALUE.get(field, "2020-01-01T00:00:00Z")}
    async with nothing_written(infra, desk.tenant):
        response = await tickets.patch(desk.url, json=body, headers=desk.if_match)
    assert_problem(response, 422, fields=(field,))


# -- wrong types and invalid values -------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"subject": 42}, "subject"),
        ({"subject": None}, "subject"),
        ({"subject": ["a"]}, "subject"),
        ({"subject": "   "}, "subject"),
        ({"description": "no subject"}, "subject"),
        ({"subject": "x", "description": {"a": 1}}, "description"),
        ({"subject": "x", "priority": 3}, "priority"),
        ({"subject": "x", "priority": "whenever"}, "priority"),
        ({"subject": "x", "priority": "URGENT"}, "priority"),
        ({"subject": "x", "tags": "urgent"}, "tags"),
        ({"subject": "x", "tags": [1]}, "tags.0"),
        ({"subject": "x", "tags": [""]}, "tags.0"),
        ({"subject": "x", "tags": ["ok", "two\nlines"]}, "tags.1"),
        ({"subject": "x", "tags": ["tab\there"]}, "tags.0"),
        ({"subject": "x", "tags": ["\u200b"]}, "tags.0"),
        ({"subject": "\u200b\ufeff "}, "subject"),
        ({"subject": "x", "custom_fields": []}, "custom_fields"),
        ({"subject": "x", "custom_fields": "x"}, "custom_fields"),
        ({"subject": "x", "watchers": "bob"}, "watchers"),
        ({"subject": "x", "parent_id": "not-a-uuid"}, "parent_id"),
        ({"subject": "x", "parent_id": 7}, "parent_id"),
        ({"subject": "x", "category": "Has Spaces"}, "category"),
        ({"subject": "x", "type": "../etc"}, "type"),
        ({"subject": "x", "source": "EMAIL!"}, "source"),
        ({"subject": "x", "requester_email": "not-an-email"}, "requester_email"),
        ({"subject": "x", "group_id": True}, "group_id"),
        ({"subject": "x", "floor": 3}, "floor"),
    ],
)
async def test_create_with_wrong_type_or_value_is_422_naming_the_field(tickets, infra, desk, body, field):
    async with nothing_written(infra, desk.tenant):
        response = await tickets.post(TICKETS, json=body, headers=desk.admin)
    assert_problem(response, 422, fields=(field,))


@pytest.mark.parametrize("body", [[], [{"subject": "x"}], "subject", 1, None, True])
async def test_create_with_a_body_that_is_not_an_object_is_422(tickets, infra, desk, body):
    async with nothing_written(infra, desk.tenant):
        response = await tickets.post(TICKETS, json=body, headers=desk.admin)
    assert_problem(response, 422)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"subject": None}, "subject"),
        ({"subject": ""}, "subject"),
        ({"description": None}, "description"),
        ({"status": None}, "status"),
        ({"status": 5}, "status"),
        ({"status": "Not A Key"}, "status"),
        ({"priority": None}, "priority"),
        ({"priority": "whenever"}, "priority"),
        ({"tags": None}, "tags"),
        ({"tags": {"a": 1}}, "tags"),
        ({"custom_fields": None}, "custom_fields"),
        ({"custom_fields": [1, 2]}, "custom_fields"),
        ({"watchers": None}, "watchers"),
        ({"parent_id": 123}, "parent_id"),
        ({"assignee_id": ["a"]}, "assignee_id"),
        ({"requester_email": "nobody"}, "requester_email"),
    ],
)
async def test_update_with_wrong_type_or_value_is_422_naming_the_field(tickets, infra, desk, body, field):
    async with nothing_written(infra, desk.tenant):
        response = await tickets.patch(desk.url, json=body, headers=desk.if_match)
    assert_problem(response, 422, fields=(field,))


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"priority": "whenever"}, "priority"),
        ({"status_category": "bogus"}, "status_category"),
        ({"status_category": "Open"}, "status_category"),
        ({"sort": "random"}, "sort"),
        ({"sort": "subject"}, "sort"),
        ({"order": "sideways"}, "order"),
        ({"order": "DESC"}, "order"),
        ({"overdue": "maybe"}, "overdue"),
        ({"deleted": "perhaps"}, "deleted"),
        ({"created_from": "yesterday"}, "created_from"),
        ({"due_before": "soon"}, "due_before"),
        ({"parent_id": "not-a-uuid"}, "parent_id"),
        ({"q": ""}, "q"),
        ({"q": "x" * 201}, "q"),
        ({"building": ""}, "building"),
        ({"floor": "x" * 201}, "floor"),
        ({"tag": [f"t{i}" for i in range(51)]}, "tag"),
    ],
)
async def test_list_with_invalid_filter_sort_or_order_is_422_naming_it(tickets, desk, params, field):
    response = await tickets.get(TICKETS, params=params, headers=desk.admin)
    problem = assert_problem(response, 422)
    named = [error["field"] for error in problem["errors"]]
    assert any(name == field or name.startswith(f"{field}.") for name in named), named


async def test_relevance_sort_without_a_query_is_400(tickets, desk):
    response = await tickets.get(TICKETS, params={"sort": "relevance"}, headers=desk.admin)
    assert_problem(response, 400, detail="relevance")


@pytest.mark.parametrize(
    "params",
    [
        {"created_from": "9999-12-31T23:59:59-14:00"},
        {"created_to": "0001-01-01T00:00:00+14:00"},
        {"updated_from": "9999-12-31T23:59:59-14:00"},
        {"due_before": "0001-01-01T00:00:00+14:00"},
    ],
    ids=lambda params: next(iter(params)),
)
async def test_list_with_a_date_outside_the_timestamp_range_is_422(tickets, desk, params):
    response = await tickets.get(TICKETS, params=params, headers=desk.admin)
    assert_problem(response, 422, fields=(next(iter(params)),))


# -- sizes -------------------------------------------------------------------------------------


def _nested(depth: int) -> dict[str, Any]:
    value: Any = "bottom"
    for _ in range(depth):
        value = {"d": value}
    return value


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"subject": "x" * 100_000}, "subject"),
        ({"subject": "엘" * 501}, "subject"),
        ({"subject": "x", "description": "x" * 100_001}, "description"),
        ({"subject": "x", "tags": [f"t{i}" for i in range(10_000)]}, "tags"),
        ({"subject": "x", "tags": [f"t{i}" for i in range(51)]}, "tags"),
        ({"subject": "x", "tags": ["x" * 51]}, "tags.0"),
        ({"subject": "x", "watchers": [f"u{i}" for i in range(101)]}, "watchers"),
        ({"subject": "x", "custom_fields": _nested(100)}, "custom_fields"),
        ({"subject": "x", "custom_fields": _nested(6)}, "custom_fields"),
        ({"subject": "x", "custom_fields": {"a": [[[[[["deep"]]]]]]}}, "custom_fields"),
        ({"subject": "x", "custom_fields": {f"k{i}": i for i in range(51)}}, "custom_fields"),
        ({"subject": "x", "custom_fields": {"big": "x" * 17_000}}, "custom_fields"),
        ({"subject": "x", "custom_fields": {"k" * 65: 1}}, "custom_fields"),
        ({"subject": "x", "custom_fields": {"": 1}}, "custom_fields"),
        ({"subject": "x", "location": "x" * 201}, "location"),
    ],
    ids=[
        "subject-100kB",
        "subject-501-korean",
        "description-100001",
        "tags-10000",
        "tags-51",
        "tag-51-chars",
        "watchers-101",
        "custom-fields-100-deep",
        "custom-fields-6-deep",
        "custom-fields-list-nesting",
        "custom-fields-51-keys",
        "custom-fields-17kB",
        "custom-field-name-65",
        "custom-field-name-empty",
        "location-201",
    ],
)
async def test_oversized_create_is_422_naming_the_field(tickets, infra, desk, body, field):
    async with nothing_written(infra, desk.tenant):
        response = await tickets.post(TICKETS, json=body, headers=desk.admin)
    assert_problem(response, 422, fields=(field,))


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"subject": "x" * 100_000}, "subject"),
        ({"tags": [f"t{i}" for i in range(10_000)]}, "tags"),
        ({"custom_fields": _nested(100)}, "custom_fields"),
    ],
    ids=["subject-100kB", "tags-10000", "custom-fields-100-deep"],
)
async def test_oversized_update_is_422_naming_the_field(tickets, infra, desk, body, field):
    async with nothing_written(infra, desk.tenant):
        response = await tickets.patch(desk.url, json=body, headers=desk.if_match)
    assert_problem(response, 422, fields=(field,))


async def test_oversized_comment_is_422(tickets, infra, desk):
    async with nothing_written(infra, desk.tenant):
        response = await tickets.post(f"{desk.url}/comments", json={"body": "x" * 50_001}, headers=desk.admin)
    assert_problem(response, 422, fields=("body",))


@pytest.mark.parametrize("opener", [b'{"a":', b"["], ids=["objects", "arrays"])
async def test_json_nested_beyond_the_parser_limit_is_a_4xx(tickets, infra, desk, opener):
    closer = b"}" if opener.startswith(b"{") else b"]"
    body = b'{"subject":"x","custom_fields":{"a":' + opener * 100_000 + b"1" + closer * 100_000 + b"}}"
    async with nothing_written(infra, desk.tenant):
        response = await tickets.post(
            TICKETS, content=body, headers=desk.admin | {"Content-Type": "application/json"}
        )
    assert response.status_code in (400, 413, 422)
    assert_problem(response, response.status_code)


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
async def test_custom_field_numbers_must_be_finite(tickets, infra, desk, number):
    body = b'{"subject":"x","custom_fields":{"reading":' + number + b"}}"
    async with nothing_written(infra, desk.tenant):
        created = await tickets.post(
            TICKETS, content=body, headers=desk.admin | {"Content-Type": "application/json"}
        )
        updated = await tickets.patch(
            desk.url,
            content=b'{"custom_fields":{"reading":' + number + b"}}",
            headers=desk.if_match | {"Content-Type": "application/json"},
        )
    assert_problem(created, 422, fields=("custom_fields",))
    assert_problem(updated, 422, fields=("custom_fields",))


# -- NUL characters (PostgreSQL text cannot hold them) -------------------------------------------

NUL = "nul\x00byte"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"subject": NUL}, "subject"),
        ({"subject": "x", "description": NUL}, "description"),
        ({"subject": "x", "tags": [NUL]}, "tags.0"),
        ({"subject": "x", "location": NUL}, "location"),
        ({"subject": "x", "building": NUL}, "building"),
        ({"subject": "x", "floor": NUL}, "floor"),
        ({"subject": "x", "room": NUL}, "room"),
        ({"subject": "x", "requester_name": NUL}, "requester_name"),
        ({"subject": "x", "requester_email": "a\x00@example.com"}, "requester_email"),
        ({"subject": "x", "requester_id": NUL}, "requester_id"),
        ({"subject": "x", "assignee_id": NUL}, "assignee_id"),
        ({"subject": "x", "watchers": [NUL]}, "watchers.0"),
        ({"subject": "x", "custom_fields": {NUL: 1}}, "custom_fields"),
        ({"subject": "x", "custom_fields": {"k": NUL}}, "custom_fields"),
        ({"subject": "x", "custom_fields": {"k": {"deeper": [NUL]}}}, "custom_fields"),
        ({"subject": "x", "category": NUL}, "category"),
        ({"subject": "x", "source": NUL}, "source"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
async def test_nul_in_a_created_field_is_422(tickets, infra, desk, body, field):
    async with nothing_written(infra, desk.tenant):
        response = await tickets.post(TICKETS, json=body, headers=desk.admin)
    assert_problem(response, 422, fields=(field,))


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"subject": NUL}, "subject"),
        ({"description": NUL}, "description"),
        ({"requester_email": "a\x00@example.com"}, "requester_email"),
        ({"requester_name": NUL}, "requester_name"),
        ({"floor": NUL}, "floor"),
        ({"custom_fields": {"k": NUL}}, "custom_fields"),
        ({"tags": ["ok", NUL]}, "tags.1"),
        ({"assignee_id": NUL}, "assignee_id"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
async def test_nul_in_an_updated_field_is_422(tickets, infra, desk, body, field):
    async with nothing_written(infra, desk.tenant):
        response = await tickets.patch(desk.url, json=body, headers=desk.if_match)
    assert_problem(response, 422, fields=(field,))


@pytest.mark.parametrize(
    "body",
    [
        {"body": NUL},
        {"body": NUL, "content_type": "text/html"},
        {"body": "<p>\x00</p>", "content_type": "text/html"},
    ],
)
async def test_nul_in_a_comment_is_422(tickets, infra, desk, body):
    async with nothing_written(infra, desk.tenant):
        response = await tickets.post(f"{desk.url}/comments", json=body, headers=desk.admin)
    assert_problem(response, 422, fields=("body",))


@pytest.mark.parametrize("text", ["\u200b", "\ufeff", " \u200b\u2060 "])
async def test_a_comment_of_only_invisible_characters_is_422(tickets, infra, desk, text):
    # Like a blank one: stripping does not remove zero-width spaces or a BOM.
    async with nothing_written(infra, desk.tenant):
        response = await tickets.post(f"{desk.url}/comments", json={"body": text}, headers=desk.admin)
    assert_problem(response, 422, fields=("body",))


@pytest.mark.parametrize(
    "name",
    [
        "q",
        "status",
        "category",
        "tag",
        "building",
        "floor",
        "room",
        "assignee",
        "group",
        "requester",
        "cf.floor",
    ],
)
async def test_nul_in_a_list_filter_is_a_4xx_naming_it(tickets, desk, name):
    response = await tickets.get(TICKETS, params={name: NUL}, headers=desk.admin)
    assert response.status_code in (400, 422), response.text
    problem = assert_problem(response, response.status_code)
    if response.status_code == 422:
        assert any(error["field"].split(".")[0] == name for error in problem["errors"]), problem
    else:
        assert name in problem["detail"]


@pytest.mark.parametrize("path", ["statuses", "categories"])
async def test_nul_in_a_settings_key_is_a_4xx(tickets, infra, desk, path):
    async with nothing_written(infra, desk.tenant):
        removed = await tickets.delete(f"{TICKETS}/{path}/a%00b", headers=desk.admin)
        created = await tickets.post(
            f"{TICKETS}/{path}",
            json={"key": "ok", "name": NUL} | ({"category": "pending"} if path == "statuses" else {}),
            headers=desk.admin,
        )
        renamed = await tickets.patch(f"{TICKETS}/{path}/a%00b", json={"name": "x"}, headers=desk.admin)
        named = await tickets.patch(f"{TICKETS}/{path}/open", json={"name": NUL}, headers=desk.admin)
    for response in (removed, renamed):
        assert response.status_code in (404, 422)
        assert_problem(response, response.status_code)
    assert_problem(created, 422, fields=("name",))
    assert_problem(named, 422, fields=("name",))


# -- cursors -------------------------------------------------------------------------------------

SOME_ID = str(uuid.uuid4())
SOME_TIME = "2024-01-01T00:00:00+00:00"


@pytest.mark.parametrize(
    ("params", "cursor"),
    [
        ({}, "!!!not base64!!!"),
        ({}, "e30"),  # {} in base64
        ({}, cursor_of([1])),
        ({}, cursor_of("created_at")),
        ({}, cursor_of(None)),
        ({}, cursor_of(["created_at", "desc", SOME_TIME])),
        ({}, cursor_of(["created_at", "desc", SOME_TIME, SOME_ID, "extra"])),
        ({}, cursor_of(["created_at", "desc", "not a time", SOME_ID])),
        ({}, cursor_of(["created_at", "desc", SOME_TIME, "not-a-uuid"])),
        ({}, cursor_of(["created_at", "desc", SOME_TIME, 123])),
        ({}, cursor_of(["created_at", "desc", SOME_TIME, None])),
        ({}, cursor_of(["created_at", "desc", [1], {"a": 1}])),
        ({}, cursor_of(["created_at", "desc", 1700000000, SOME_ID])),
        ({}, cursor_of(["created_at", "desc", "9999-12-31T23:59:59-14:00", SOME_ID])),
        ({}, cursor_of(["created_at", "desc", "0001-01-01T00:00:00+14:00", SOME_ID])),
        ({"sort": "priority"}, cursor_of(["priority", "desc", 10**30, SOME_TIME, SOME_ID])),
        ({"sort": "priority"}, cursor_of(["priority", "desc", 40_000, SOME_TIME, SOME_ID])),
        ({"sort": "priority"}, cursor_of(["priority", "desc", "high", SOME_TIME, SOME_ID])),
        ({"sort": "due_at"}, cursor_of(["due_at", "desc", "never", SOME_ID])),
        ({"q": "lift"}, cursor_of(["relevance", "desc", "very", SOME_ID])),
        ({}, "A" * 513),
    ],
)
async def test_malformed_list_cursor_is_a_4xx(tickets, desk, params, cursor):
    response = await tickets.get(TICKETS, params=params | {"cursor": cursor}, headers=desk.admin)
    assert response.status_code in (400, 422), response.text
    problem = assert_problem(response, response.status_code)
    assert "cursor" in problem["detail"]


@pytest.mark.parametrize(
    "other",
    [
        {"sort": "updated_at"},
        {"sort": "priority"},
        {"sort": "due_at"},
        {"order": "asc"},
        {"q": "elevator"},
    ],
)
async def test_a_cursor_from_another_sort_is_400(tickets, desk, other):
    await create_ticket(tickets, desk.admin, subject="elevator again")
    first = await tickets.get(TICKETS, params={"limit": 1}, headers=desk.admin)
    cursor = first.json()["next_cursor"]
    assert cursor
    response = await tickets.get(TICKETS, params={"limit": 1, "cursor": cursor} | other, headers=desk.admin)
    assert_problem(response, 400, detail="cursor")


@pytest.mark.parametrize("route", ["comments", "history"])
@pytest.mark.parametrize(
    "cursor",
    [
        "%%%",
        cursor_of([1]),
        cursor_of([SOME_TIME, 5]),
        cursor_of([SOME_TIME, None]),
        cursor_of([None, None]),
        cursor_of(["not a time", SOME_ID]),
        cursor_of([SOME_TIME, "not-a-uuid"]),
        cursor_of(["9999-12-31T23:59:59-14:00", SOME_ID]),
        cursor_of([SOME_TIME, SOME_ID, "extra"]),
    ],
)
async def test_malformed_comment_and_history_cursor_is_400(tickets, desk, route, cursor):
    response = await tickets.get(f"{desk.url}/{route}", params={"cursor": cursor}, headers=desk.admin)
    assert_problem(response, 400, detail="cursor")


@pytest.mark.parametrize(
    "cursor", [cursor_of([10**30]), cursor_of([True]), cursor_of(["7"]), cursor_of([1.5]), "@@"]
)
async def test_malformed_dead_letter_cursor_is_400(tickets, desk, cursor):
    response = await tickets.get(f"{TICKETS}/dead-letters", params={"cursor": cursor}, headers=desk.admin)
    assert_problem(response, 400, detail="cursor")


# -- limits --------------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", ["1000000", "0", "-1", "201", "ten", "1.5"])
@pytest.mark.parametrize("route", ["", "/{id}/comments", "/{id}/history"])
async def test_limit_outside_1_to_200_is_422(tickets, desk, limit, route):
    url = TICKETS + route.format(id=desk.ticket["id"])
    response = await tickets.get(url, params={"limit": limit}, headers=desk.admin)
    assert_problem(response, 422, fields=("limit",))


# -- If-Match ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "*",
        "1",
        "W/1",
        '"abc"',
        'W/"-1"',
        'W/"1", *',
        'W/"1",',
        ", ".join(['W/"1"'] * 21),
        'W/"99999999999"',
        "garbage",
        'W/"1' + " " * 150,
    ],
)
async def test_malformed_if_match_is_400(tickets, infra, desk, value):
    async with nothing_written(infra, desk.tenant):
        response = await tickets.patch(
            desk.url, json={"subject": "new"}, headers=desk.admin | {"If-Match": value}
        )
    assert_problem(response, 400, detail="If-Match")


async def test_overlong_if_match_is_422(tickets, infra, desk):
    async with nothing_written(infra, desk.tenant):
        response = await tickets.patch(
            desk.url, json={"subject": "new"}, headers=desk.admin | {"If-Match": 'W/"' + "1" * 300 + '"'}
        )
    assert_problem(response, 422, fields=("If-Match",))


@pytest.mark.parametrize("offset", [-1, 1, 1000])
async def test_stale_if_match_is_412_with_the_current_etag(tickets, infra, desk, offset):
    stale = f'W/"{desk.ticket["version"] + offset}"'
    async with nothing_written(infra, desk.tenant):
        response = await tickets.patch(
            desk.url, json={"subject": "new"}, headers=desk.admin | {"If-Match": stale}
        )
    assert_problem(response, 412)
    assert response.headers["etag"] == f'W/"{desk.ticket["version"]}"'


async def test_if_match_from_before_a_concurrent_change_is_412(tickets, infra, desk):
    assert (await patch_ticket(tickets, desk.admin, desk.ticket, subject="first writer")).status_code == 200
    async with nothing_written(infra, desk.tenant):
        second = await patch_ticket(tickets, desk.admin, desk.ticket, subject="second writer")
    assert_problem(second, 412)


async def test_if_match_may_list_etags_on_one_line_or_several(tickets, infra, desk):
    # RFC 9110: the update applies if the current version is any of them.
    current = f'W/"{desk.ticket["version"]}"'
    stale = await tickets.patch(
        desk.url, json={"subject": "x"}, headers=desk.admin | {"If-Match": 'W/"97", W/"98"'}
    )
    assert_problem(stale, 412, detail='If-Match W/"97", W/"98"')
    listed = await tickets.patch(
        desk.url, json={"subject": "listed"}, headers=desk.admin | {"If-Match": f'"99", {current}'}
    )
    assert listed.status_code == 200, listed.text
    # Two header lines are the same list; the stale one alone would be 412.
    lines = [*desk.admin.items(), ("If-Match", 'W/"99"'), ("If-Match", listed.headers["ETag"])]
    again = await tickets.patch(desk.url, json={"subject": "two lines"}, headers=lines)
    assert again.status_code == 200, again.text
    assert again.json()["subject"] == "two lines"


async def test_missing_if_match_is_428(tickets, infra, desk):
    async with nothing_written(infra, desk.tenant):
        response = await tickets.patch(desk.url, json={"subject": "new"}, headers=desk.admin)
    assert_problem(response, 428, detail="If-Match")


# -- ids -----------------------------------------------------------------------------------------

BAD_IDS = ["not-a-uuid", "1", "00000000-0000-0000-0000-00000000000g", "' OR '1'='1", "x" * 1000]
ID_ROUTES = [
    ("GET", "/{id}", None),
    ("PATCH", "/{id}", {"subject": "x"}),
    ("DELETE", "/{id}", None),
    ("POST", "/{id}/restore", None),
    ("POST", "/{id}/merge", {"into_ticket_id": SOME_ID}),
    ("GET", "/{id}/similar", None),
    ("GET", "/{id}/comments", None),
    ("POST", "/{id}/comments", {"body": "hello"}),
    ("GET", "/{id}/history", None),
    ("GET", "/{id}/attachments", None),
    ("GET", "/{id}/attachments/" + SOME_ID, None),
]


@pytest.mark.parametrize("bad_id", BAD_IDS, ids=["word", "digit", "non-hex", "sql", "long"])
@pytest.mark.parametrize(("method", "route", "body"), ID_ROUTES, ids=[f"{m} {r}" for m, r, _ in ID_ROUTES])
async def test_non_uuid_ticket_id_is_422_in_every_route(tickets, infra, desk, bad_id, method, route, body):
    headers = desk.admin | {"If-Match": 'W/"1"'}
    async with nothing_written(infra, desk.tenant):
        response = await send(tickets, method, TICKETS + route.format(id=bad_id), headers, json=body)
    assert_problem(response, 422, fields=("ticket_id",))


@pytest.mark.parametrize(("method", "route", "body"), ID_ROUTES, ids=[f"{m} {r}" for m, r, _ in ID_ROUTES])
async def test_unknown_ticket_id_is_404_in_every_route(tickets, infra, desk, method, route, body):
    headers = desk.admin | {"If-Match": 'W/"1"'}
    async with nothing_written(infra, desk.tenant):
        response = await send(tickets, method, TICKETS + route.format(id=uuid.uuid4()), headers, json=body)
    assert_problem(response, 404)


# Fixed paths in the place of a ticket id: the wrong method is a 405 naming the right ones,
# not a 422 "ticket_id is not a UUID" from the `/{ticket_id}` route.
FIXED_PATHS_WRONG_METHODS = [
    ("GET", "/bulk", "POST"),
    ("PATCH", "/bulk", "POST"),
    ("DELETE", "/bulk", "POST"),
    ("PATCH", "/statuses", "GET, POST"),
    ("DELETE", "/statuses", "GET, POST"),
    ("PATCH", "/categories", "GET, POST"),
    ("DELETE", "/categories", "GET, POST"),
    ("DELETE", "/dead-letters", "GET"),
]


@pytest.mark.parametrize(("method", "route", "allow"), FIXED_PATHS_WRONG_METHODS)
async def test_wrong_method_on_a_fixed_path_is_405(tickets, infra, desk, method, route, allow):
    async with nothing_written(infra, desk.tenant):
        response = await send(tickets, method, TICKETS + route, desk.admin | {"If-Match": 'W/"1"'})
    assert_problem(response, 405)
    assert response.headers["allow"] == allow


@pytest.mark.parametrize("into", ["nope", 5, None, ""])
async def test_merge_target_must_be_a_uuid(tickets, infra, desk, into):
    async with nothing_written(infra, desk.tenant):
        response = await tickets.post(f"{desk.url}/merge", json={"into_ticket_id": into}, headers=desk.admin)
    assert_problem(response, 422, fields=("into_ticket_id",))


# -- content type and JSON ---------------------------------------------------------------------

JSON_ROUTES = [
    ("POST", "", {"subject": "x"}),
    ("PATCH", "/{id}", {"subject": "x"}),
    ("POST", "/{id}/comments", {"body": "x"}),
    ("POST", "/{id}/merge", {"into_ticket_id": SOME_ID}),
    ("POST", "/bulk", {"ids": [SOME_ID], "priority": "high"}),
    ("POST", "/statuses", {"key": "waiting", "name": "Waiting", "category": "pending"}),
    ("POST", "/categories", {"key": "hvac", "name": "HVAC"}),
    ("PATCH", "/statuses/open", {"name": "Open"}),
    ("PATCH", "/categories/hvac", {"name": "HVAC"}),
]
JSON_ROUTE_IDS = [f"{m} {r or '/'}" for m, r, _ in JSON_ROUTES]


@pytest.mark.parametrize(
    ("content_type", "encode"),
    [
        ("text/plain", lambda body: json.dumps(body).encode()),
        ("application/x-www-form-urlencoded", lambda body: str(httpx.QueryParams(body)).encode()),
        (
            "multipart/form-data; boundary=x",
            lambda body: b"--x\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n--x--\r\n",
        ),
        ("application/xml", lambda body: b"<ticket><subject>x</subject></ticket>"),
    ],
    ids=["text", "form", "multipart", "xml"],
)
@pytest.mark.parametrize(("method", "route", "body"), JSON_ROUTES, ids=JSON_ROUTE_IDS)
async def test_non_json_content_type_is_rejected(
    tickets, infra, desk, content_type, encode, method, route, body
):
    headers = desk.if_match | {"Content-Type": content_type}
    url = TICKETS + route.format(id=desk.ticket["id"])
    async with nothing_written(infra, desk.tenant):
        response = await send(tickets, method, url, headers, content=encode(body))
    assert response.status_code in (415, 422), response.text
    assert_problem(response, response.status_code)


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b'{"subject": "x",}', b'{"subject": "x"', b"", b"\xff\xfe\x00", b'{"subject": "\\ud800"}'],
    ids=["garbage", "trailing-comma", "truncated", "empty", "not-utf8", "lone-surrogate"],
)
@pytest.mark.parametrize(("method", "route", "body"), JSON_ROUTES, ids=JSON_ROUTE_IDS)
async def test_invalid_json_is_a_4xx(tickets, infra, desk, raw, method, route, body):
    headers = desk.if_match | {"Content-Type": "application/json"}
    url = TICKETS + route.format(id=desk.ticket["id"])
    async with nothing_written(infra, desk.tenant):
        response = await send(tickets, method, url, headers, content=raw)
    assert response.status_code in (400, 422), response.text
    assert_problem(response, response.status_code)


# -- bulk ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"ids": [str(uuid.uuid4()) for _ in range(501)], "priority": "high"}, "ids"),
        ({"ids": [], "priority": "high"}, "ids"),
        ({"priority": "high"}, "ids"),
        ({"ids": None, "priority": "high"}, "ids"),
        ({"ids": ["nope"], "priority": "high"}, "ids.0"),
        ({"ids": SOME_ID, "priority": "high"}, "ids"),
        ({"ids": [SOME_ID], "priority": "whenever"}, "priority"),
        ({"ids": [SOME_ID], "status": "Bad Key"}, "status"),
        ({"ids": [SOME_ID], "add_tags": [f"t{i}" for i in range(51)]}, "add_tags"),
        ({"ids": [SOME_ID], "tenant_id": "evil"}, "tenant_id"),
        ({"ids": [SOME_ID], "status": None}, "status"),
        ({"ids": [SOME_ID], "tags": None}, "tags"),
    ],
    ids=[
        "501-ids",
        "empty-ids",
        "no-ids",
        "null-ids",
        "non-uuid",
        "string-ids",
        "priority",
        "status-key",
        "51-tags",
        "tenant_id",
        "null-status",
        "null-tags",
    ],
)
async def test_bulk_body_errors_are_422(tickets, infra, desk, body, field):
    async with nothing_written(infra, desk.tenant):
        response = await tickets.post(f"{TICKETS}/bulk", json=body, headers=desk.admin)
    assert_problem(response, 422, fields=(field,))


async def test_bulk_with_duplicate_ids_changes_each_ticket_once(tickets, infra, desk):
    response = await tickets.post(
        f"{TICKETS}/bulk", json={"ids": [desk.ticket["id"]] * 3, "priority": "high"}, headers=desk.admin
    )
    assert response.status_code == 200, response.text
    assert [item["id"] for item in response.json()["items"]] == [desk.ticket["id"]]
    state = await tenant_state(infra, desk.tenant)
    (row,) = [row for row in state["tickets"] if str(row["id"]) == desk.ticket["id"]]
    assert row["version"] == desk.ticket["version"] + 1
    assert [h["field"] for h in state["history"] if h["field"] == "priority"] == ["priority"]


async def test_bulk_with_one_unknown_id_changes_nothing(tickets, infra, desk):
    second = await create_ticket(tickets, desk.admin)
    missing = [str(uuid.uuid4()), desk.other_tenant_ticket["id"]]
    async with nothing_written(infra, desk.tenant):
        response = await tickets.post(
            f"{TICKETS}/bulk",
            json={"ids": [desk.ticket["id"], second["id"], *missing], "priority": "urgent"},
            headers=desk.admin,
        )
    problem = assert_problem(response, 404)
    assert sorted(problem["missing_ids"]) == sorted(missing)


async def test_bulk_with_one_invalid_transition_changes_nothing(tickets, infra, desk):
    closed = await create_ticket(tickets, desk.admin)
    assert (await patch_ticket(tickets, desk.admin, closed, status="closed")).status_code == 200
    async with nothing_written(infra, desk.tenant):
        response = await tickets.post(
            f"{TICKETS}/bulk",
            json={"ids": [desk.ticket["id"], closed["id"]], "status": "pending"},
            headers=desk.admin,
        )
    problem = assert_problem(response, 409)
    assert problem["allowed_next_statuses"] == ["open"]


async def test_bulk_with_an_unknown_status_changes_nothing(tickets, infra, desk):
    async with nothing_written(infra, desk.tenant):
        response = await tickets.post(
            f"{TICKETS}/bulk",
            json={"ids": [desk.ticket["id"]], "status": "no_such_status"},
            headers=desk.admin,
        )
    assert_problem(response, 422, fields=("status",))


async def test_bulk_tags_cannot_grow_a_ticket_past_the_tag_limit(tickets, infra, desk):
    async with nothing_written(infra, desk.tenant):
        response = await tickets.post(
            f"{TICKETS}/bulk",
            json={
                "ids": [desk.ticket["id"]],
                "tags": [f"t{i}" for i in range(50)],
                "add_tags": [f"u{i}" for i in range(50)],
            },
            headers=desk.admin,
        )
    assert_problem(response, 422, fields=("tags",))


# -- workflow ------------------------------------------------------------------------------------


async def test_invalid_status_transition_is_409_listing_the_allowed_next_statuses(tickets, infra, desk):
    closed = await patch_ticket(tickets, desk.admin, desk.ticket, status="closed")
    assert closed.status_code == 200, closed.text
    async with nothing_written(infra, desk.tenant):
        response = await patch_ticket(tickets, desk.admin, closed.json(), status="pending")
    problem = assert_problem(response, 409, detail="allowed next: open")
    assert problem["current_status"] == "closed"
    assert problem["allowed_next_statuses"] == ["open"]


async def test_resolved_ticket_lists_its_next_statuses_including_custom_ones(tickets, infra, desk):
    created = await tickets.post(
        f"{TICKETS}/statuses",
        json={"key": "on_site", "name": "On site", "category": "in_progress"},
        headers=desk.admin,
    )
    assert created.status_code == 201, created.text
    resolved = await patch_ticket(tickets, desk.admin, desk.ticket, status="resolved")
    assert resolved.status_code == 200, resolved.text
    async with nothing_written(infra, desk.tenant):
        response = await patch_ticket(tickets, desk.admin, resolved.json(), status="pending")
    problem = assert_problem(response, 409)
    # Display order: by category, the built-in status first, then the tenant's.
    assert problem["allowed_next_statuses"] == ["open", "in_progress", "on_site", "closed"]


@pytest.mark.parametrize("status", ["no_such_status", "waiting_on_vendor"])
async def test_unknown_status_key_is_422(tickets, infra, desk, status):
    async with nothing_written(infra, desk.tenant):
        response = await patch_ticket(tickets, desk.admin, desk.ticket, status=status)
    assert_problem(response, 422, fields=("status",), detail=status)


async def test_a_status_of_another_tenant_is_unknown_here(tickets, infra, desk):
    stranger = auth_headers(infra, unique_tenant("bad-other"), ["admin"])
    created = await tickets.post(
        f"{TICKETS}/statuses",
        json={"key": "theirs", "name": "Theirs", "category": "pending"},
        headers=stranger,
    )
    assert created.status_code == 201
    async with nothing_written(infra, desk.tenant):
        response = await patch_ticket(tickets, desk.admin, desk.ticket, status="theirs")
    assert_problem(response, 422, fields=("status",))


@pytest.mark.parametrize("key", ["open", "pending", "in_progress", "resolved", "closed"])
async def test_built_in_status_cannot_be_deleted(tickets, infra, desk, key):
    async with nothing_written(infra, desk.tenant):
        response = await tickets.delete(f"{TICKETS}/statuses/{key}", headers=desk.admin)
    assert_problem(response, 409, detail=key)


@pytest.mark.parametrize("key", ["open", "closed"])
async def test_built_in_status_cannot_be_redefined(tickets, infra, desk, key):
    async with nothing_written(infra, desk.tenant):
        response = await tickets.post(
            f"{TICKETS}/statuses",
            json={"key": key, "name": "Mine", "category": "pending"},
            headers=desk.admin,
        )
    assert_problem(response, 409, detail=key)


async def test_status_in_use_cannot_be_deleted(tickets, infra, desk):
    body = {"key": "on_hold", "name": "On hold", "category": "pending"}
    assert (await tickets.post(f"{TICKETS}/statuses", json=body, headers=desk.admin)).status_code == 201
    assert (await patch_ticket(tickets, desk.admin, desk.ticket, status="on_hold")).status_code == 200
    async with nothing_written(infra, desk.tenant):
        duplicate = await tickets.post(f"{TICKETS}/statuses", json=body, headers=desk.admin)
        removed = await tickets.delete(f"{TICKETS}/statuses/on_hold", headers=desk.admin)
    assert_problem(duplicate, 409)
    assert_problem(removed, 409, detail="in use")


@pytest.mark.parametrize("path", ["statuses/never_defined", "categories/never_defined"])
async def test_deleting_an_unknown_setting_is_404(tickets, infra, desk, path):
    async with nothing_written(infra, desk.tenant):
        response = await tickets.delete(f"{TICKETS}/{path}", headers=desk.admin)
    assert_problem(response, 404)


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("statuses", {"key": "Bad Key", "name": "x", "category": "pending"}, "key"),
        ("statuses", {"key": "x" * 41, "name": "x", "category": "pending"}, "key"),
        ("statuses", {"key": "ok", "name": "x", "category": "waiting"}, "category"),
        ("statuses", {"key": "ok", "name": "x", "category": "pending", "position": -1}, "position"),
        ("statuses", {"key": "ok", "name": "x", "category": "pending", "position": 10**20}, "position"),
        ("statuses", {"key": "ok", "name": "x", "category": "pending", "builtin": True}, "builtin"),
        ("categories", {"key": "../x", "name": "x"}, "key"),
        ("categories", {"key": "ok", "name": ""}, "name"),
        ("categories", {"key": "ok", "name": "x", "tenant_id": "evil"}, "tenant_id"),
    ],
)
async def test_invalid_setting_is_422(tickets, infra, desk, path, body, field):
    async with nothing_written(infra, desk.tenant):
        response = await tickets.post(f"{TICKETS}/{path}", json=body, headers=desk.admin)
    assert_problem(response, 422, fields=(field,))


async def test_category_outside_the_defined_list_is_422(tickets, infra, desk):
    created = await tickets.post(
        f"{TICKETS}/categories", json={"key": "hvac", "name": "HVAC"}, headers=desk.admin
    )
    assert created.status_code == 201
    async with nothing_written(infra, desk.tenant):
        on_create = await tickets.post(
            TICKETS, json={"subject": "x", "category": "plumbing"}, headers=desk.admin
        )
        on_update = await patch_ticket(tickets, desk.admin, desk.ticket, category="plumbing")
    assert_problem(on_create, 422, fields=("category",))
    assert_problem(on_update, 422, fields=("category",))


# -- parents and merges ----------------------------------------------------------------------------


async def test_parent_in_another_tenant_is_422_like_a_missing_one(tickets, infra, desk):
    foreign = desk.other_tenant_ticket["id"]
    async with nothing_written(infra, desk.tenant):
        on_create = await tickets.post(
            TICKETS, json={"subject": "x", "parent_id": foreign}, headers=desk.admin
        )
        on_update = await patch_ticket(tickets, desk.admin, desk.ticket, parent_id=foreign)
        missing = await patch_ticket(tickets, desk.admin, desk.ticket, parent_id=str(uuid.uuid4()))
    for response in (on_create, on_update, missing):
        problem = assert_problem(response, 422, fields=("parent_id",))
        assert "not found" in problem["detail"]


async def test_ticket_cannot_be_its_own_parent(tickets, infra, desk):
    async with nothing_written(infra, desk.tenant):
        response = await patch_ticket(tickets, desk.admin, desk.ticket, parent_id=desk.ticket["id"])
    assert_problem(response, 422, fields=("parent_id",))


async def test_parent_links_cannot_form_a_cycle(tickets, infra, desk):
    child = await create_ticket(tickets, desk.admin, parent_id=desk.ticket["id"])
    grandchild = await create_ticket(tickets, desk.admin, parent_id=child["id"])
    async with nothing_written(infra, desk.tenant):
        response = await patch_ticket(tickets, desk.admin, desk.ticket, parent_id=grandchild["id"])
    assert_problem(response, 422, fields=("parent_id",), detail="cycle")


async def test_deleted_ticket_cannot_become_a_parent(tickets, infra, desk):
    doomed = await create_ticket(tickets, desk.admin)
    assert (await tickets.delete(f"{TICKETS}/{doomed['id']}", headers=desk.admin)).status_code == 204
    async with nothing_written(infra, desk.tenant):
        response = await patch_ticket(tickets, desk.admin, desk.ticket, parent_id=doomed["id"])
    assert_problem(response, 422, fields=("parent_id",))


async def test_merge_into_itself_is_422(tickets, infra, desk):
    async with nothing_written(infra, desk.tenant):
        response = await tickets.post(
            f"{desk.url}/merge", json={"into_ticket_id": desk.ticket["id"]}, headers=desk.admin
        )
    assert_problem(response, 422, fields=("into_ticket_id",))


@pytest.mark.parametrize("target", ["missing", "other-tenant", "deleted"])
async def test_merge_into_a_ticket_you_cannot_see_is_422(tickets, infra, desk, target):
    if target == "missing":
        into = str(uuid.uuid4())
    elif target == "other-tenant":
        into = desk.other_tenant_ticket["id"]
    else:
        into = (await create_ticket(tickets, desk.admin))["id"]
        assert (await tickets.delete(f"{TICKETS}/{into}", headers=desk.admin)).status_code == 204
    async with nothing_written(infra, desk.tenant):
        response = await tickets.post(f"{desk.url}/merge", json={"into_ticket_id": into}, headers=desk.admin)
    assert_problem(response, 422, fields=("into_ticket_id",), detail="not found")


async def test_merged_ticket_cannot_be_merged_again(tickets, infra, desk):
    first, second = await create_ticket(tickets, desk.admin), await create_ticket(tickets, desk.admin)
    merged = await tickets.post(f"{desk.url}/merge", json={"into_ticket_id": first["id"]}, headers=desk.admin)
    assert merged.status_code == 200, merged.text
    async with nothing_written(infra, desk.tenant):
        again = await tickets.post(
            f"{desk.url}/merge", json={"into_ticket_id": second["id"]}, headers=desk.admin
        )
        back = await tickets.post(
            f"{TICKETS}/{first['id']}/merge", json={"into_ticket_id": desk.ticket["id"]}, headers=desk.admin
        )
    assert_problem(again, 409, detail="already merged")
    assert_problem(back, 409, detail="already merged")


async def test_restoring_a_ticket_that_is_not_deleted_is_409(tickets, infra, desk):
    async with nothing_written(infra, desk.tenant):
        response = await tickets.post(f"{desk.url}/restore", headers=desk.admin)
    assert_problem(response, 409)


async def test_empty_comment_after_html_is_removed_is_422(tickets, infra, desk):
    async with nothing_written(infra, desk.tenant):
        response = await tickets.post(
            f"{desk.url}/comments",
            json={"body": "<script>alert(1)</script><p> </p>", "content_type": "text/html"},
            headers=desk.admin,
        )
    assert_problem(response, 422, fields=("body",))


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"body": "x", "visibility": "secret"}, "visibility"),
        ({"body": "x", "content_type": "application/pdf"}, "content_type"),
        ({"body": "x", "author_id": "someone-else"}, "author_id"),
        ({"body": ""}, "body"),
        ({}, "body"),
    ],
)
async def test_invalid_comment_is_422(tickets, infra, desk, body, field):
    async with nothing_written(infra, desk.tenant):
        response = await tickets.post(f"{desk.url}/comments", json=body, headers=desk.admin)
    assert_problem(response, 422, fields=(field,))


@pytest.mark.parametrize("key", [b"", b"has space", b"x" * 256, "é".encode()])
async def test_invalid_idempotency_key_is_422(tickets, infra, desk, key):
    async with nothing_written(infra, desk.tenant):
        response = await tickets.post(
            TICKETS, json={"subject": "x"}, headers=desk.admin | {"Idempotency-Key": key}
        )
    assert_problem(response, 422, fields=("Idempotency-Key",))
