"""SLA deadlines against a real database session: new tickets, pause/resume, re-prioritising.

Each test works in its own tenant inside a transaction that is rolled back (services never commit).
"""

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from libs.common.db import async_url, create_session_factory, set_tenant
from services.tickets.sla import service
from services.tickets.sla.schemas import CalendarWrite, SlaPolicyWrite
from tests.conftest import unique_tenant

SEOUL = ZoneInfo("Asia/Seoul")
CREATED = datetime(2025, 3, 4, 1, 0, tzinfo=UTC)  # Tuesday 10:00 KST
WEEKDAYS = {day: [["09:00", "18:00"]] for day in ("mon", "tue", "wed", "thu", "fri")}


@pytest.fixture(scope="module")
async def session_factory(infra):
    engine = create_async_engine(async_url(infra.database_url_for("tickets")), pool_size=2)
    yield create_session_factory(engine)
    await engine.dispose()


@pytest.fixture
async def tenant_session(session_factory):
    """(tenant, session) scoped to a fresh tenant; everything is rolled back afterwards."""
    tenant = unique_tenant("sla")
    async with session_factory() as session:
        await session.begin()
        await set_tenant(session, tenant)
        yield tenant, session
        await session.rollback()


async def policy(session, tenant, priority="high", first=60, resolution=240, **options):
    data = SlaPolicyWrite(first_response_minutes=first, resolution_minutes=resolution, **options)
    await service.put_policy(session, tenant, priority, data)


async def new_ticket_deadlines(session, tenant, priority):
    return service.new_ticket_deadlines(await service.policy_and_calendar(session, tenant, priority), CREATED)


def ticket(**overrides):
    row = {
        "id": "00000000-0000-0000-0000-000000000001",
        "priority": "high",
        "status": "open",
        "status_category": "open",
        "created_at": CREATED,
        "first_response_due_at": CREATED + timedelta(minutes=60),
        "due_at": CREATED + timedelta(minutes=240),
        "first_responded_at": None,
        "sla_paused_at": None,
        "sla_paused_minutes": 0.0,
        "first_response_breached_at": None,
        "resolution_breached_at": None,
    }
    row.update(overrides)
    return row


async def test_new_ticket_without_a_policy_has_no_deadlines(tenant_session):
    tenant, session = tenant_session
    await policy(session, tenant, "urgent")
    assert await new_ticket_deadlines(session, tenant, "low") == {
        "first_response_due_at": None,
        "due_at": None,
    }


async def test_new_ticket_deadlines_round_the_clock_ignore_the_calendar(tenant_session):
    tenant, session = tenant_session
    await policy(session, tenant, first=30, resolution=24 * 60)
    await service.put_calendar(
        session, tenant, CalendarWrite(time_zone="Asia/Seoul", business_hours=WEEKDAYS)
    )
    deadlines = await new_ticket_deadlines(session, tenant, "high")
    assert deadlines == {
        "first_response_due_at": CREATED + timedelta(minutes=30),
        "due_at": CREATED + timedelta(days=1),
    }


async def test_new_ticket_deadlines_in_business_hours_skip_evenings_and_holidays(tenant_session):
    tenant, session = tenant_session
    await policy(session, tenant, first=60, resolution=16 * 60, business_hours_only=True)
    # Without a calendar row, business-hours policies count round the clock.
    assert (await new_ticket_deadlines(session, tenant, "high"))["due_at"] == CREATED + timedelta(hours=16)
    await service.put_calendar(
        session,
        tenant,
        CalendarWrite(time_zone="Asia/Seoul", business_hours=WEEKDAYS, holidays=["2025-03-05"]),
    )
    deadlines = await new_ticket_deadlines(session, tenant, "high")
    assert deadlines["first_response_due_at"] == datetime(2025, 3, 4, 11, 0, tzinfo=SEOUL)
    # Tue 10-18 (8 h), Wed is a holiday, Thu 09-17 (8 h).
    assert deadlines["due_at"] == datetime(2025, 3, 6, 17, 0, tzinfo=SEOUL)


async def test_holidays_without_weekly_hours_count_every_other_day_round_the_clock(tenant_session):
    tenant, session = tenant_session
    await policy(session, tenant, first=60, resolution=24 * 60, business_hours_only=True)
    await service.put_calendar(
        session, tenant, CalendarWrite(time_zone="Asia/Seoul", holidays=["2025-03-05"])
    )
    deadlines = await new_ticket_deadlines(session, tenant, "high")
    # 14 h left of Tuesday, Wednesday skipped, 10 h of Thursday.
    assert deadlines["due_at"] == datetime(2025, 3, 6, 10, 0, tzinfo=SEOUL)


async def test_entering_pending_pauses_only_when_the_policy_says_so(tenant_session):
    tenant, session = tenant_session
    now = CREATED + timedelta(minutes=20)
    await policy(session, tenant, "high", pause_while_pending=True)
    await policy(session, tenant, "low", pause_while_pending=False)
    before = ticket()
    pending = {**before, "status": "pending", "status_category": "pending"}
    assert await service.deadline_changes(session, tenant, before, pending, now) == {"sla_paused_at": now}
    low = ticket(priority="low")
    assert (
        await service.deadline_changes(session, tenant, low, {**low, "status_category": "pending"}, now) == {}
    )
    # A move between two statuses of the pending category changes nothing.
    waiting = ticket(status="pending", status_category="pending", sla_paused_at=now)
    vendor = {**waiting, "status": "waiting-on-vendor"}
    assert await service.deadline_changes(session, tenant, waiting, vendor, now) == {}
    # Unrelated edits change nothing.
    assert await service.deadline_changes(session, tenant, before, {**before, "subject": "x"}, now) == {}


async def test_leaving_pending_pushes_open_deadlines_by_the_paused_time(tenant_session):
    tenant, session = tenant_session
    await policy(session, tenant, pause_while_pending=True)
    paused_at = CREATED + timedelta(minutes=20)
    now = paused_at + timedelta(minutes=90)
    before = ticket(status="pending", status_category="pending", sla_paused_at=paused_at)
    after = {**before, "status": "open", "status_category": "open"}
    assert await service.deadline_changes(session, tenant, before, after, now) == {
        "sla_paused_at": None,
        "sla_paused_minutes": 90.0,
        "first_response_due_at": CREATED + timedelta(minutes=60 + 90),
        "due_at": CREATED + timedelta(minutes=240 + 90),
    }
    # Already responded: the first-response target is history and stays put.
    responded = {**before, "first_responded_at": CREATED + timedelta(minutes=5)}
    changes = await service.deadline_changes(
        session, tenant, responded, {**responded, "status_category": "resolved"}, now
    )
    assert changes == {
        "sla_paused_at": None,
        "sla_paused_minutes": 90.0,
        "due_at": CREATED + timedelta(minutes=240 + 90),
    }


async def test_paused_time_outside_business_hours_is_not_credited(tenant_session):
    tenant, session = tenant_session
    await policy(
        session, tenant, first=60, resolution=600, business_hours_only=True, pause_while_pending=True
    )
    await service.put_calendar(
        session, tenant, CalendarWrite(time_zone="Asia/Seoul", business_hours=WEEKDAYS)
    )
    due = datetime(2025, 3, 11, 15, 0, tzinfo=SEOUL)
    paused_at = datetime(2025, 3, 7, 17, 0, tzinfo=SEOUL)  # Friday 17:00
    now = datetime(2025, 3, 10, 10, 0, tzinfo=SEOUL)  # Monday 10:00: two business hours later
    before = ticket(
        status_category="pending", sla_paused_at=paused_at, first_responded_at=CREATED, due_at=due
    )
    changes = await service.deadline_changes(
        session, tenant, before, {**before, "status_category": "in_progress"}, now
    )
    assert changes == {
        "sla_paused_at": None,
        "sla_paused_minutes": 120.0,
        "due_at": datetime(2025, 3, 11, 17, 0, tzinfo=SEOUL),
    }
    # Two more business hours from Tuesday 17:00 run into Wednesday.
    later = datetime(2025, 3, 10, 12, 0, tzinfo=SEOUL)
    changes = await service.deadline_changes(
        session, tenant, before, {**before, "status_category": "open"}, later
    )
    assert changes["due_at"] == datetime(2025, 3, 12, 10, 0, tzinfo=SEOUL)


async def test_priority_change_recomputes_from_creation_and_keeps_pause_credit(tenant_session):
    tenant, session = tenant_session
    await policy(session, tenant, "high", first=60, resolution=240)
    await policy(session, tenant, "low", first=480, resolution=2400)
    now = CREATED + timedelta(minutes=100)
    # Earlier pauses pushed both deadlines by 30 minutes.
    before = ticket(
        first_response_due_at=CREATED + timedelta(minutes=90),
        due_at=CREATED + timedelta(minutes=270),
        sla_paused_minutes=30.0,
    )
    changes = await service.deadline_changes(session, tenant, before, {**before, "priority": "low"}, now)
    assert changes == {
        "first_response_due_at": CREATED + timedelta(minutes=480 + 30),
        "due_at": CREATED + timedelta(minutes=2400 + 30),
    }
    # Back up to high: the earlier deadlines return.
    lowered = {**before, **changes, "priority": "low"}
    back = await service.deadline_changes(session, tenant, lowered, {**lowered, "priority": "high"}, now)
    assert back == {"first_response_due_at": before["first_response_due_at"], "due_at": before["due_at"]}


async def test_priority_change_to_a_priority_without_policy_drops_the_deadlines(tenant_session):
    tenant, session = tenant_session
    await policy(session, tenant, "high")
    before = ticket()
    changes = await service.deadline_changes(
        session, tenant, before, {**before, "priority": "medium"}, CREATED
    )
    assert changes == {"first_response_due_at": None, "due_at": None}
    # And from no policy to one: deadlines from creation.
    plain = ticket(priority="medium", first_response_due_at=None, due_at=None)
    changes = await service.deadline_changes(session, tenant, plain, {**plain, "priority": "high"}, CREATED)
    assert changes == {
        "first_response_due_at": CREATED + timedelta(minutes=60),
        "due_at": CREATED + timedelta(minutes=240),
    }


async def test_a_deadline_moved_into_the_future_clears_its_breach_mark(tenant_session):
    tenant, session = tenant_session
    await policy(session, tenant, "high", first=60, resolution=240)
    await policy(session, tenant, "low", first=60, resolution=2400)
    now = CREATED + timedelta(minutes=300)
    before = ticket(
        first_responded_at=CREATED + timedelta(minutes=10),
        first_response_breached_at=None,
        resolution_breached_at=CREATED + timedelta(minutes=241),
    )
    changes = await service.deadline_changes(session, tenant, before, {**before, "priority": "low"}, now)
    assert changes == {"due_at": CREATED + timedelta(minutes=2400), "resolution_breached_at": None}


async def test_priority_change_while_paused_then_resume_credits_both_pauses(tenant_session):
    tenant, session = tenant_session
    await policy(session, tenant, "high", first=60, resolution=240, pause_while_pending=True)
    await policy(session, tenant, "urgent", first=30, resolution=120, pause_while_pending=True)
    paused_at = CREATED + timedelta(minutes=50)
    # One earlier pause of 10 minutes, now paused again.
    before = ticket(
        status_category="pending",
        sla_paused_at=paused_at,
        first_response_due_at=CREATED + timedelta(minutes=70),
        due_at=CREATED + timedelta(minutes=250),
        sla_paused_minutes=10.0,
    )
    now = paused_at + timedelta(minutes=40)
    after = {**before, "priority": "urgent", "status_category": "open"}
    changes = await service.deadline_changes(session, tenant, before, after, now)
    assert changes == {
        "sla_paused_at": None,
        "sla_paused_minutes": 50.0,
        "first_response_due_at": CREATED + timedelta(minutes=30 + 10 + 40),
        "due_at": CREATED + timedelta(minutes=120 + 10 + 40),
    }
