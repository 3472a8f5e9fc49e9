"""SLA management API: policies and the business calendar, permissions, bad input, isolation."""

import asyncio
from datetime import datetime, timedelta

import pytest

from services.tickets.app import create_app
from services.tickets.settings import Settings
from tests.conftest import app_client, auth_headers, settings_for, unique_tenant
from tests.tickets.helpers import (
    TICKETS,
    add_comment,
    admin_fetch,
    assert_problem,
    create_ticket,
    minutes_after_creation,
    outbox_types,
    patch_ticket,
    read_ticket,
)

POLICIES = "/api/v1/tickets/sla/policies"
CALENDAR = "/api/v1/tickets/sla/calendar"
URGENT = {"first_response_minutes": 15, "resolution_minutes": 240, "business_hours_only": False}


@pytest.fixture(scope="module")
async def tickets(infra):
    # The scheduler is not under test here: one scan at start-up, then it idles.
    settings = settings_for(infra, Settings, "tickets", sla_scan_interval_s=3600)
    async with app_client(create_app(settings)) as client:
        yield client


def admin(infra, tenant):
    return auth_headers(infra, tenant, ["admin"], "admin-1")


def agent(infra, tenant):
    return auth_headers(infra, tenant, ["agent"], "agent-1")


async def test_admin_manages_policies_and_agents_read_them(tickets, infra):
    tenant = unique_tenant()
    created = await tickets.put(f"{POLICIES}/urgent", json=URGENT, headers=admin(infra, tenant))
    assert created.status_code == 200, created.text
    policy = created.json()
    assert policy["priority"] == "urgent"
    assert (policy["first_response_minutes"], policy["resolution_minutes"]) == (15, 240)
    assert policy["business_hours_only"] is False and policy["pause_while_pending"] is False
    low = {"first_response_minutes": 480, "resolution_minutes": 4800, "pause_while_pending": True}
    assert (await tickets.put(f"{POLICIES}/low", json=low, headers=admin(infra, tenant))).status_code == 200

    listing = await tickets.get(POLICIES, headers=agent(infra, tenant))
    assert listing.status_code == 200
    items = listing.json()["items"]
    assert [p["priority"] for p in items] == ["low", "urgent"]
    assert items[0]["pause_while_pending"] is True

    replaced = await tickets.put(
        f"{POLICIES}/urgent",
        json={**URGENT, "resolution_minutes": 120, "business_hours_only": True},
        headers=admin(infra, tenant),
    )
    assert replaced.json()["resolution_minutes"] == 120 and replaced.json()["business_hours_only"] is True
    assert replaced.json()["created_at"] == policy["created_at"]

    deleted = await tickets.delete(f"{POLICIES}/low", headers=admin(infra, tenant))
    assert deleted.status_code == 204 and deleted.content == b""
    listing = await tickets.get(POLICIES, headers=admin(infra, tenant))
    assert [p["priority"] for p in listing.json()["items"]] == ["urgent"]
    again = await tickets.delete(f"{POLICIES}/low", headers=admin(infra, tenant))
    assert again.status_code == 404
    assert again.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("critical", URGENT, "priority"),
        ("urgent", {**URGENT, "first_response_minutes": 0}, "first_response_minutes"),
        ("urgent", {**URGENT, "first_response_minutes": 525_601}, "first_response_minutes"),
        ("urgent", {**URGENT, "resolution_minutes": 10}, "resolution_minutes"),
        ("urgent", {**URGENT, "colour": "red"}, "colour"),
        ("urgent", {"first_response_minutes": 10}, "resolution_minutes"),
        ("urgent", {**URGENT, "first_response_minutes": "soon"}, "first_response_minutes"),
    ],
)
async def test_bad_policy_input_is_a_422_problem_naming_the_field(tickets, infra, path, body, field):
    tenant = unique_tenant()
    response = await tickets.put(f"{POLICIES}/{path}", json=body, headers=admin(infra, tenant))
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert field in problem["detail"] or any(field in str(e) for e in problem["errors"]), problem
    listing = await tickets.get(POLICIES, headers=admin(infra, tenant))
    assert listing.json() == {"items": []}


async def test_unknown_priority_on_delete_is_422(tickets, infra):
    response = await tickets.delete(f"{POLICIES}/critical", headers=admin(infra, unique_tenant()))
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"


async def test_requesters_and_agents_cannot_change_sla_settings(tickets, infra):
    tenant = unique_tenant()
    await tickets.put(f"{POLICIES}/high", json=URGENT, headers=admin(infra, tenant))
    requester = auth_headers(infra, tenant, ["requester"], "req-1")
    for method, path, body in [
        ("GET", POLICIES, None),
        ("PUT", f"{POLICIES}/high", URGENT),
        ("DELETE", f"{POLICIES}/high", None),
        ("GET", CALENDAR, None),
        ("PUT", CALENDAR, {"time_zone": "UTC"}),
    ]:
        response = await tickets.request(method, path, json=body, headers=requester)
        assert response.status_code == 403, (method, path, response.text)
        assert response.headers["content-type"] == "application/problem+json"
    for method, path, body in [
        ("PUT", f"{POLICIES}/high", {**URGENT, "resolution_minutes": 999}),
        ("DELETE", f"{POLICIES}/high", None),
        ("PUT", CALENDAR, {"time_zone": "Asia/Seoul"}),
    ]:
        response = await tickets.request(method, path, json=body, headers=agent(infra, tenant))
        assert response.status_code == 403, (method, path)
    unauthenticated = await tickets.get(POLICIES)
    assert unauthenticated.status_code == 401
    policies = (await tickets.get(POLICIES, headers=admin(infra, tenant))).json()["items"]
    assert [(p["priority"], p["resolution_minutes"]) for p in policies] == [("high", 240)]
    assert (await tickets.get(CALENDAR, headers=admin(infra, tenant))).json()["time_zone"] == "UTC"


async def test_tenants_never_see_or_touch_each_others_sla_settings(tickets, infra):
    owner, other = unique_tenant(), unique_tenant()
    await tickets.put(f"{POLICIES}/urgent", json=URGENT, headers=admin(infra, owner))
    await tickets.put(CALENDAR, json={"time_zone": "Asia/Seoul"}, headers=admin(infra, owner))

    assert (await tickets.get(POLICIES, headers=admin(infra, other))).json() == {"items": []}
    assert (await tickets.delete(f"{POLICIES}/urgent", headers=admin(infra, other))).status_code == 404
    assert (await tickets.get(CALENDAR, headers=admin(infra, other))).json()["time_zone"] == "UTC"
    # The other tenant's own policy for the same priority is a separate row.
    mine = await tickets.put(
        f"{POLICIES}/urgent", json={**URGENT, "resolution_minutes": 60}, headers=admin(infra, other)
    )
    assert mine.status_code == 200

    owned = (await tickets.get(POLICIES, headers=agent(infra, owner))).json()["items"]
    assert [(p["priority"], p["resolution_minutes"]) for p in owned] == [("urgent", 240)]
    assert (await tickets.get(CALENDAR, headers=agent(infra, owner))).json()["time_zone"] == "Asia/Seoul"


async def test_calendar_defaults_then_round_trips_normalised(tickets, infra):
    tenant = unique_tenant()
    default = await tickets.get(CALENDAR, headers=agent(infra, tenant))
    assert default.status_code == 200
    assert default.json() == {"time_zone": "UTC", "business_hours": {}, "holidays": []}

    body = {
        "time_zone": "Asia/Seoul",
        "business_hours": {
            "fri": ["09:00", "18:00"],
            "mon": [["13:00", "18:00"], ["09:00", "12:00"]],
            "sat": [],
        },
        "holidays": ["2025-10-03", "2025-03-03", "2025-10-03"],
    }
    saved = await tickets.put(CALENDAR, json=body, headers=admin(infra, tenant))
    assert saved.status_code == 200, saved.text
    expected = {
        "time_zone": "Asia/Seoul",
        "business_hours": {"mon": [["09:00", "12:00"], ["13:00", "18:00"]], "fri": [["09:00", "18:00"]]},
        "holidays": ["2025-03-03", "2025-10-03"],
    }
    assert saved.json() == {**expected, "open_tickets_updated": 0, "retarget": None}
    assert (await tickets.get(CALENDAR, headers=agent(infra, tenant))).json() == expected

    cleared = await tickets.put(
        CALENDAR, json={"time_zone": "America/New_York"}, headers=admin(infra, tenant)
    )
    assert cleared.json() == {
        "time_zone": "America/New_York",
        "business_hours": {},
        "holidays": [],
        "open_tickets_updated": 0,
        "retarget": None,
    }


@pytest.mark.parametrize(
    ("body", "field", "fragment"),
    [
        ({"time_zone": "Mars/Olympus"}, "time_zone", "unknown IANA time zone"),
        ({"time_zone": "KST"}, "time_zone", "unknown IANA time zone"),
        ({"time_zone": "localtime"}, "time_zone", "unknown IANA time zone"),  # the host's zone
        ({"business_hours": {"mon": [["09:00", "12:00"], ["11:00", "13:00"]]}}, "business_hours", "overlap"),
        ({"business_hours": {"tue": [["09:00", "25:00"]]}}, "business_hours", "business_hours.tue"),
        ({"business_hours": {"wed": [["18:00", "09:00"]]}}, "business_hours", "ends before it starts"),
        ({"business_hours": {"someday": [["09:00", "18:00"]]}}, "business_hours", "unknown weekday"),
        ({"business_hours": {"mon": "all day"}}, "business_hours", "list"),
        ({"holidays": ["2025-02-30"]}, "holidays", ""),
        ({"time_zone": "UTC", "week_start": "sun"}, "week_start", ""),
    ],
)
async def test_bad_calendar_is_a_422_problem_naming_the_field(tickets, infra, body, field, fragment):
    tenant = unique_tenant()
    response = await tickets.put(CALENDAR, json=body, headers=admin(infra, tenant))
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert field in problem["detail"]
    assert any(e["field"].startswith(field) and fragment in e["message"] for e in problem["errors"]), problem
    assert (await tickets.get(CALENDAR, headers=admin(infra, tenant))).json()["time_zone"] == "UTC"


async def test_targets_the_business_hours_cannot_supply_within_twenty_years_are_refused(tickets, infra):
    tenant = unique_tenant()
    boss = admin(infra, tenant)
    weekdays = {
        "time_zone": "Asia/Seoul",
        "business_hours": {day: [["09:00", "18:00"]] for day in ("mon", "tue", "wed", "thu", "fri")},
    }
    assert (await tickets.put(CALENDAR, json=weekdays, headers=boss)).status_code == 200
    a_year = {"first_response_minutes": 60, "resolution_minutes": 525_600, "business_hours_only": True}
    assert (await tickets.put(f"{POLICIES}/low", json=a_year, headers=boss)).status_code == 200  # ~4 years

    # An hour a week would make that target 168 years: every ticket would get no deadline.
    sparse = {"time_zone": "Asia/Seoul", "business_hours": {"mon": [["09:00", "10:00"]]}}
    refused = await tickets.put(CALENDAR, json=sparse, headers=boss)
    assert_problem(refused, 422, fields=("business_hours",), detail="low policy")
    assert (await tickets.get(CALENDAR, headers=boss)).json()["business_hours"]["tue"] == [["09:00", "18:00"]]

    assert (await tickets.delete(f"{POLICIES}/low", headers=boss)).status_code == 204
    assert (await tickets.put(CALENDAR, json=sparse, headers=boss)).status_code == 200
    too_long = await tickets.put(f"{POLICIES}/low", json=a_year, headers=boss)
    assert_problem(too_long, 422, fields=("resolution_minutes",), detail="20 years")
    two_years = {**a_year, "resolution_minutes": 6000}
    assert (await tickets.put(f"{POLICIES}/low", json=two_years, headers=boss)).status_code == 200
    round_the_clock = {**a_year, "business_hours_only": False}
    assert (await tickets.put(f"{POLICIES}/high", json=round_the_clock, headers=boss)).status_code == 200


async def test_ticket_api_applies_policies_pauses_and_resumes(tickets, infra):
    """Wiring with the core ticket service: deadlines at creation, pause in pending, resume later."""
    tenant = unique_tenant()
    staff = agent(infra, tenant)
    body = {**URGENT, "pause_while_pending": True}
    assert (
        await tickets.put(f"{POLICIES}/urgent", json=body, headers=admin(infra, tenant))
    ).status_code == 200
    ticket = await create_ticket(tickets, staff, priority="urgent")
    created = datetime.fromisoformat(ticket["created_at"])
    assert datetime.fromisoformat(ticket["due_at"]) == created + timedelta(minutes=240)

    paused = await patch_ticket(tickets, staff, ticket, status="pending")
    assert paused.status_code == 200, paused.text
    paused_at = datetime.fromisoformat(paused.json()["sla_paused_at"])
    assert paused.json()["due_at"] == ticket["due_at"]
    await asyncio.sleep(0.3)

    resumed = await patch_ticket(tickets, staff, paused.json(), status="open")
    assert resumed.status_code == 200, resumed.text
    after = resumed.json()
    assert after["sla_paused_at"] is None
    pushed = datetime.fromisoformat(after["due_at"]) - datetime.fromisoformat(ticket["due_at"])
    assert pushed == datetime.fromisoformat(after["updated_at"]) - paused_at
    assert pushed >= timedelta(seconds=0.3)
    first_pushed = datetime.fromisoformat(after["first_response_due_at"]) - datetime.fromisoformat(
        ticket["first_response_due_at"]
    )
    assert first_pushed == pushed


async def test_a_changed_policy_moves_open_tickets_only_when_asked(tickets, infra):
    tenant = unique_tenant()
    staff, boss = agent(infra, tenant), admin(infra, tenant)
    await tickets.put(f"{POLICIES}/urgent", json=URGENT, headers=boss)
    open_ticket = await create_ticket(tickets, staff, priority="urgent")
    requester = auth_headers(infra, tenant, ["requester"], "req-1")
    answered = await create_ticket(tickets, requester)
    answered = (await patch_ticket(tickets, staff, answered, priority="urgent")).json()
    await add_comment(tickets, staff, answered["id"], "On our way to floor 3.")
    resolved = await create_ticket(tickets, staff, priority="urgent")
    assert (await patch_ticket(tickets, staff, resolved, status="resolved")).status_code == 200
    other_priority = await create_ticket(tickets, staff, priority="low")

    # By default the new targets are for tickets to come.
    slower = {**URGENT, "first_response_minutes": 30, "resolution_minutes": 480}
    kept = await tickets.put(f"{POLICIES}/urgent", json=slower, headers=boss)
    assert kept.status_code == 200 and kept.json()["open_tickets_updated"] == 0
    assert minutes_after_creation(await read_ticket(tickets, staff, open_ticket), "due_at") == 240

    applied = await tickets.put(
        f"{POLICIES}/urgent", params={"apply_to_open_tickets": "true"}, json=slower, headers=boss
    )
    assert applied.status_code == 200, applied.text
    assert applied.json()["open_tickets_updated"] == 2
    assert applied.json()["resolution_minutes"] == 480

    moved = await read_ticket(tickets, staff, open_ticket)
    assert minutes_after_creation(moved, "first_response_due_at") == 30
    assert minutes_after_creation(moved, "due_at") == 480
    assert moved["version"] == open_ticket["version"] + 1
    # A first response already given keeps the target it met.
    met = await read_ticket(tickets, staff, answered)
    assert met["first_response_due_at"] == answered["first_response_due_at"]
    assert minutes_after_creation(met, "due_at") == 480
    assert (await read_ticket(tickets, staff, resolved))["due_at"] == resolved["due_at"]
    assert (await read_ticket(tickets, staff, other_priority))["due_at"] is None

    history = (await tickets.get(f"{TICKETS}/{open_ticket['id']}/history", headers=staff)).json()["items"]
    entries = {entry["field"]: entry for entry in history if entry["field"].endswith("due_at")}
    assert set(entries) == {"due_at", "first_response_due_at"}
    assert entries["due_at"]["actor_id"] == "admin-1"
    old, new = (datetime.fromisoformat(entries["due_at"][key]) for key in ("old_value", "new_value"))
    assert (old, new) == (
        datetime.fromisoformat(open_ticket["due_at"]),
        datetime.fromisoformat(moved["due_at"]),
    )
    assert (await outbox_types(infra, open_ticket["id"]))[-1] == "helpdesk.tickets.ticket.updated.v1"

    # The same targets again change nothing and record nothing.
    again = await tickets.put(
        f"{POLICIES}/urgent", params={"apply_to_open_tickets": "true"}, json=slower, headers=boss
    )
    assert again.json()["open_tickets_updated"] == 0
    assert (await read_ticket(tickets, staff, open_ticket))["version"] == moved["version"]


async def test_a_deleted_policy_takes_open_tickets_deadlines_only_when_asked(tickets, infra):
    tenant = unique_tenant()
    staff, boss = agent(infra, tenant), admin(infra, tenant)
    await tickets.put(f"{POLICIES}/high", json=URGENT, headers=boss)
    ticket = await create_ticket(tickets, staff, priority="high")
    deleted = await tickets.delete(f"{POLICIES}/high", params={"apply_to_open_tickets": "1"}, headers=boss)
    assert deleted.status_code == 204
    cleared = await read_ticket(tickets, staff, ticket)
    assert cleared["due_at"] is None and cleared["first_response_due_at"] is None


async def test_a_new_calendar_moves_business_hours_deadlines_when_asked(tickets, infra):
    tenant = unique_tenant()
    staff, boss = agent(infra, tenant), admin(infra, tenant)
    business = {"first_response_minutes": 60, "resolution_minutes": 120, "business_hours_only": True}
    await tickets.put(f"{POLICIES}/medium", json=business, headers=boss)
    await tickets.put(f"{POLICIES}/urgent", json=URGENT, headers=boss)  # round the clock
    ticket = await create_ticket(tickets, staff, priority="medium")
    round_the_clock = await create_ticket(tickets, staff, priority="urgent")
    assert minutes_after_creation(ticket, "due_at") == 120  # no business hours set yet

    # Open only on a far-away weekday: every deadline moves to then.
    hours = {"time_zone": "UTC", "business_hours": {"sun": [["09:00", "10:00"]]}}
    if datetime.fromisoformat(ticket["created_at"]).weekday() == 6:
        hours["business_hours"] = {"wed": [["09:00", "10:00"]]}
    saved = await tickets.put(CALENDAR, params={"apply_to_open_tickets": "true"}, json=hours, headers=boss)
    assert saved.status_code == 200, saved.text
    assert saved.json()["open_tickets_updated"] == 1
    moved = await read_ticket(tickets, staff, ticket)
    assert minutes_after_creation(moved, "due_at") > 120
    assert datetime.fromisoformat(moved["first_response_due_at"]).strftime("%H:%M") == "10:00"
    assert (await read_ticket(tickets, staff, round_the_clock))["due_at"] == round_the_clock["due_at"]
    # A ticket created now counts in the calendar from the start.
    later = await create_ticket(tickets, staff, priority="medium")
    assert later["first_response_due_at"] == moved["first_response_due_at"]
    assert minutes_after_creation(later, "due_at") > 120


async def test_each_create_follows_the_rules_as_they_are_at_that_moment(tickets, infra):
    """Creates reuse the policy and calendar that earlier creates of the tenant and priority read,
    but only while those rows are unchanged: the create right after any change (a new, changed,
    deleted or re-created policy, a new calendar) follows it. No number is skipped and every
    event carries its ticket's number."""
    tenant = unique_tenant()
    staff, boss = agent(infra, tenant), admin(infra, tenant)
    created = [await create_ticket(tickets, staff, priority="urgent")]
    assert created[-1]["due_at"] is None

    async def create_after(change) -> dict:
        response = await change
        assert response.status_code in (200, 204), response.text
        created.append(await create_ticket(tickets, staff, priority="urgent"))
        return created[-1]

    def targets(ticket):
        return minutes_after_creation(ticket, "first_response_due_at"), minutes_after_creation(
            ticket, "due_at"
        )

    ticket = await create_after(tickets.put(f"{POLICIES}/urgent", json=URGENT, headers=boss))
    assert targets(ticket) == (15, 240)
    created.append(await create_ticket(tickets, staff, priority="urgent"))
    assert targets(created[-1]) == (15, 240)
    slower = {**URGENT, "resolution_minutes": 480}
    assert targets(await create_after(tickets.put(f"{POLICIES}/urgent", json=slower, headers=boss))) == (
        15,
        480,
    )

    # Business hours only, open on a far-away weekday: deadlines move to then once a calendar says so.
    business = {**slower, "business_hours_only": True}
    assert targets(await create_after(tickets.put(f"{POLICIES}/urgent", json=business, headers=boss))) == (
        15,
        480,
    )
    far_day = "wed" if datetime.now().weekday() in (6, 0) else "sun"
    hours = {"time_zone": "UTC", "business_hours": {far_day: [["09:00", "10:00"]]}}
    ticket = await create_after(tickets.put(CALENDAR, json=hours, headers=boss))
    # 15 minutes into the first open hour; 480 minutes are eight whole open days (one hour each).
    assert datetime.fromisoformat(ticket["first_response_due_at"]).strftime("%H:%M") == "09:15"
    assert datetime.fromisoformat(ticket["due_at"]).strftime("%H:%M") == "10:00"
    hours["business_hours"][far_day] = [["09:00", "11:00"]]  # now four days of two hours
    ticket = await create_after(tickets.put(CALENDAR, json=hours, headers=boss))
    assert datetime.fromisoformat(ticket["due_at"]).strftime("%H:%M") == "11:00"

    assert targets(await create_after(tickets.delete(f"{POLICIES}/urgent", headers=boss))) == (None, None)
    assert targets(await create_after(tickets.put(f"{POLICIES}/urgent", json=URGENT, headers=boss))) == (
        15,
        240,
    )

    assert [ticket["number"] for ticket in created] == list(range(1, len(created) + 1))
    events = await admin_fetch(
        infra,
        "SELECT aggregate_id, (payload->'data'->>'number')::int AS number FROM tickets.outbox"
        " WHERE payload->>'tenant' = $1 AND payload->>'type' = 'helpdesk.tickets.ticket.created.v1'",
        tenant,
    )
    assert {row["aggregate_id"]: row["number"] for row in events} == {t["id"]: t["number"] for t in created}


async def test_apply_to_open_tickets_must_be_a_boolean(tickets, infra):
    response = await tickets.put(
        f"{POLICIES}/urgent",
        params={"apply_to_open_tickets": "maybe"},
        json=URGENT,
        headers=admin(infra, unique_tenant()),
    )
    assert response.status_code == 422
    assert "apply_to_open_tickets" in response.json()["detail"]


async def test_retargeted_deadlines_keep_the_time_the_clock_was_paused(tickets, infra):
    tenant = unique_tenant()
    staff, boss = agent(infra, tenant), admin(infra, tenant)
    pausing = {**URGENT, "pause_while_pending": True}
    await tickets.put(f"{POLICIES}/urgent", json=pausing, headers=boss)
    ticket = await create_ticket(tickets, staff, priority="urgent")
    paused = (await patch_ticket(tickets, staff, ticket, status="pending")).json()
    await asyncio.sleep(0.3)
    resumed = (await patch_ticket(tickets, staff, paused, status="open")).json()
    credit = datetime.fromisoformat(resumed["due_at"]) - datetime.fromisoformat(ticket["due_at"])
    assert credit >= timedelta(seconds=0.3)

    slower = {**pausing, "resolution_minutes": 480}
    await tickets.put(
        f"{POLICIES}/urgent", params={"apply_to_open_tickets": "true"}, json=slower, headers=boss
    )
    moved = await read_ticket(tickets, staff, ticket)
    expected = datetime.fromisoformat(ticket["created_at"]) + timedelta(minutes=480) + credit
    assert abs(datetime.fromisoformat(moved["due_at"]) - expected) < timedelta(milliseconds=1)
