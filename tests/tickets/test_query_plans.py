"""Query plans at 100k tickets: every documented filter and sort is served by an index, and a list
request runs a fixed number of SQL statements whatever its page size.

The data set comes from the benchmark's seeder (bench/seed_tickets.py) in this module's own
tenants. Plans are those of the real statements: `repository.list_tickets` runs them with the
service's parameters, as the service's role under row-level security, and `auto_explain` hands
each executed plan back as a NOTICE. Both plan kinds are checked, since asyncpg reuses prepared
statements and PostgreSQL switches to a generic plan after five executions.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from bench import seed_tickets
from libs.common.db import async_url, set_tenant
from services.tickets import repository
from services.tickets.app import create_app
from services.tickets.settings import Settings
from tests.conftest import Infra, app_client, auth_headers, settings_for, unique_tenant
from tests.tickets.helpers import count_statements, statements_run

pytestmark = pytest.mark.asyncio(loop_scope="session")

TICKETS = 100_000
COMMENTS = 20_000
SORT_FIELDS = ("created_at", "updated_at", "priority", "due_at")
PLAN_MODES = ("force_custom_plan", "force_generic_plan")


@dataclasses.dataclass
class Seeded:
    tenants: list[str]
    tenant: str  # the one the plans are checked in
    values: dict[str, Any]  # real values of that tenant for the filters
    now: datetime


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def seeded(infra: Infra) -> Seeded:
    tenants = [unique_tenant("plans"), unique_tenant("plans")]
    started = time.monotonic()
    result = await (
        seed_tickets.seed(
            infra.admin_url, tickets=TICKETS, comments=COMMENTS, tenants=tenants, requesters_per_tenant=2_000,
            log=lambda _line: None,
        )
    )  # fmt: skip
    print(f"\nseeded {result.tickets} tickets in {time.monotonic() - started:.1f} s {result.phases}")
    tenant = tenants[0]

    async def values() -> dict[str, Any]:
        conn = await asyncpg.connect(infra.admin_url)
        try:
            row = await conn.fetchrow(
                "SELECT requester_id, assignee_id, room FROM tickets.tickets"
                " WHERE tenant_id = $1 AND assignee_id IS NOT NULL ORDER BY created_at DESC LIMIT 1",
                tenant,
            )
            parent = await conn.fetchval(
                "SELECT parent_id::text FROM tickets.tickets WHERE tenant_id = $1 AND parent_id IS NOT NULL"
                " LIMIT 1",
                tenant,
            )
            return {**dict(row), "parent_id": parent}
        finally:
            await conn.close()

    return Seeded(tenants, tenant, await values(), datetime.now(UTC))


def filter_cases(seeded: Seeded) -> dict[str, repository.TicketFilters]:
    """One case per documented filter of GET /api/v1/tickets (as the endpoint builds them)."""
    now, v = seeded.now, seeded.values
    cases = {
        "status": repository.TicketFilters(statuses=("waiting_on_vendor",)),
        "status (several)": repository.TicketFilters(statuses=("open", "in_progress")),
        "status_category": repository.TicketFilters(status_categories=("pending",)),
        "priority": repository.TicketFilters(priorities=("urgent",)),
        "category": repository.TicketFilters(categories=("elevator",)),
        "assignee": repository.TicketFilters(assignee_id=v["assignee_id"]),
        "assignee=none": repository.TicketFilters(unassigned=True),
        "group": repository.TicketFilters(group_id="hvac-team"),
        "requester": repository.TicketFilters(requester_id=v["requester_id"]),
        "tag": repository.TicketFilters(tags=("vip",)),
        "tags (all of)": repository.TicketFilters(tags=("leak", "water")),
        "building": repository.TicketFilters(building="Tower 2"),
        "floor": repository.TicketFilters(floor="7"),
        "room": repository.TicketFilters(room=v["room"]),
        "created_from": repository.TicketFilters(created_from=now - timedelta(days=30)),
        "created_to": repository.TicketFilters(created_to=now - timedelta(days=700)),
        "updated_from": repository.TicketFilters(updated_from=now - timedelta(days=7)),
        "updated_to": repository.TicketFilters(updated_to=now - timedelta(days=365)),
        "cf": repository.TicketFilters(custom_fields={"vendor": "오티스"}),
        "overdue": repository.TicketFilters(overdue_at=now),
        "due_before": repository.TicketFilters(due_before=now + timedelta(days=1)),
        "parent_id": repository.TicketFilters(parent_id=v["parent_id"]),
        "deleted": repository.TicketFilters(deleted=True),
        "q (Korean)": repository.TicketFilters(q="엘리베이터"),
        "q (English)": repository.TicketFilters(q="leak"),
    }
    assert {field.name for field in dataclasses.fields(repository.TicketFilters)} <= {
        field.name
        for case in cases.values()
        for field in dataclasses.fields(case)
        if getattr(case, field.name)
    }, "a TicketFilters field has no case here"
    return cases


@dataclasses.dataclass
class PlanProbe:
    """A session as the tickets role in one tenant; collects the plans auto_explain reports."""

    session: AsyncSession
    plans: list[str]

    async def plans_of(self, call) -> tuple[list[dict[str, Any]], list[str]]:
        self.plans.clear()
        rows = await call()
        # The plan is reported when the statement's portal is dropped, i.e. at the next statement.
        await self.session.execute(text("SELECT 1"))
        await asyncio.sleep(0)  # notices are delivered by callbacks
        return rows, [plan for plan in self.plans if "tickets.tickets" in plan]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def probe(infra: Infra, seeded: Seeded) -> AsyncIterator[PlanProbe]:
    engine = create_async_engine(async_url(infra.admin_url), pool_size=1)
    plans: list[str] = []
    try:
        async with AsyncSession(engine) as session:
            raw = (await (await session.connection()).get_raw_connection()).driver_connection
            raw.add_log_listener(lambda _conn, message: plans.append(message.message))
            # Superuser settings first, then become the service's role (row-level security applies).
            for statement in (
                "LOAD 'auto_explain'",
                "SET auto_explain.log_min_duration = 0",
                "SET auto_explain.log_level = 'notice'",
                "SET client_min_messages = 'notice'",
            ):
                await session.execute(text(statement))
            await session.commit()
            async with session.begin():
                await session.execute(text("SET LOCAL ROLE helpdesk_tickets"))
                await set_tenant(session, seeded.tenant)
                yield PlanProbe(session, plans)
    finally:
        await engine.dispose()


def _cursor_values(row: dict[str, Any], sort: repository.Sort) -> list[Any]:
    """The keyset values the endpoint decodes from a cursor made from `row`."""
    return [row[name] for name in repository.SORT_VALUE_NAMES[sort.field]] + [row["id"]]


async def _page(probe: PlanProbe, seeded: Seeded, filters, sort, mode: str, after=None, own=None):
    await probe.session.execute(text(f"SET LOCAL plan_cache_mode = {mode}"))
    return await probe.plans_of(
        lambda: repository.list_tickets(
            probe.session, seeded.tenant, filters, sort, limit=50, after=after, own_requester_id=own
        )
    )


def _check(failures: list[str], label: str, plans: list[str]) -> None:
    if not plans:
        failures.append(f"{label}: no plan reported")
    for plan in plans:
        if "Seq Scan on tickets" in plan:
            failures.append(f"{label}:\n{plan}")


async def test_every_filter_and_sort_uses_an_index(probe: PlanProbe, seeded: Seeded) -> None:
    failures: list[str] = []
    pages_with_rows = 0
    sorts = [repository.Sort(field, descending) for field in SORT_FIELDS for descending in (True, False)]
    for name, filters in filter_cases(seeded).items():
        case_sorts = sorts + ([repository.Sort("relevance", True)] if filters.q else [])
        for sort in case_sorts:
            # Generic plans for each filter's default sort; custom plans for every combination.
            modes = (
                PLAN_MODES
                if sort == repository.Sort() or (filters.q is None and name == "status")
                else PLAN_MODES[:1]
            )
            for mode in modes:
                label = f"{name}, sort={sort.field} {'desc' if sort.descending else 'asc'}, {mode}"
                rows, plans = await _page(probe, seeded, filters, sort, mode)
                _check(failures, label, plans)
                if rows:
                    pages_with_rows += 1
                    after = _cursor_values(rows[-1], sort)
                    _rows, plans = await _page(probe, seeded, filters, sort, mode, after=after)
                    _check(failures, label + ", with cursor", plans)
    # Requesters see only their own tickets: that shape too.
    for mode in PLAN_MODES:
        own = seeded.values["requester_id"]
        _rows, plans = await _page(
            probe, seeded, repository.TicketFilters(), repository.Sort(), mode, own=own
        )
        _check(failures, f"requester's own tickets, {mode}", plans)
    assert not failures, f"{len(failures)} plans scan tickets sequentially:\n\n" + "\n\n".join(failures[:5])
    # The cases must find data, or the cursor pages above were never planned.
    assert pages_with_rows > 100


async def test_duplicate_hints_use_an_index(infra: Infra, probe: PlanProbe, seeded: Seeded) -> None:
    """`/similar` with and without a building reads tickets through indexes. Without one, the
    candidates across the tenant come from the trigram index of open tickets, or (where the
    planner judges the tenant's open tickets few enough) from the open tickets themselves: never
    from the trigrams of every ticket, which made a hint 30-180 ms at 1M tickets."""
    conn = await asyncpg.connect(infra.admin_url)
    try:
        row = await conn.fetchrow(
            "SELECT id::text, subject, description, building, floor, room FROM tickets.tickets"
            " WHERE tenant_id = $1 AND status_category = 'open' ORDER BY created_at DESC LIMIT 1",
            seeded.tenant,
        )
    finally:
        await conn.close()
    located = dict(row)
    assert located["building"], "the seeder gives tickets a building"
    failures: list[str] = []
    for ticket in (located, {**located, "building": None, "floor": None, "room": None}):
        for mode in PLAN_MODES:
            await probe.session.execute(text(f"SET LOCAL plan_cache_mode = {mode}"))
            rows, plans = await probe.plans_of(
                lambda ticket=ticket: repository.similar_tickets(probe.session, seeded.tenant, ticket)
            )
            label = f"similar, building={ticket['building']}, {mode}"
            _check(failures, label, plans)
            open_only = ("_open_text_trgm", "ix_tickets_tenant_id_status_category_created_at_id")
            if ticket["building"] is None and not any(index in plan for index in open_only for plan in plans):
                failures.append(f"{label}: candidates not read from the open tickets\n" + "\n".join(plans))
            assert rows, label  # the seeder writes many reports of each kind of breakdown
    assert not failures, "\n\n".join(failures[:3])


# Filters an agent's queue is built from: their first page, newest first, must come out of an
# index in order and stop after the page, not collect every match and sort it (at 1M tickets
# that was 5-18 ms for `status_category=pending` or `assignee=none`, 300 ms for `updated_to`).
IN_INDEX_ORDER = (
    "status",
    "status_category",
    "priority",
    "category",
    "assignee",
    "assignee=none",
    "group",
    "requester",
    "created_from",
    "created_to",
    "updated_to",
    "deleted",
)


async def test_queue_filters_read_the_first_page_in_index_order(probe: PlanProbe, seeded: Seeded) -> None:
    cases = filter_cases(seeded)
    failures = []
    for name in IN_INDEX_ORDER:
        for mode in PLAN_MODES:
            rows, plans = await _page(probe, seeded, cases[name], repository.Sort(), mode)
            assert rows, f"{name}: the seeded data has no match, the plan proves nothing"
            assert plans, f"{name}: no plan reported"
            if any("Sort Key" in plan for plan in plans):
                failures.append(f"{name}, {mode}:\n{plans[0]}")
    assert not failures, f"{len(failures)} first pages are sorted after the scan:\n\n" + "\n\n".join(
        failures[:3]
    )


# -- statements per list request ----------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "",
        "&status=open&sort=updated_at",
        "&tag=leak&priority=high&sort=priority&order=asc",
        "&q=%EC%97%98%EB%A6%AC%EB%B2%A0%EC%9D%B4%ED%84%B0",  # q=엘리베이터
        "&cf.impact=building&sort=due_at",
    ],
)
async def test_statements_per_list_request_do_not_grow_with_page_size(
    infra: Infra, seeded: Seeded, query: str
) -> None:
    app = create_app(settings_for(infra, Settings, "tickets"))
    headers = auth_headers(infra, seeded.tenant, ["agent"], "agent-x")
    counts = {}
    async with app_client(app) as client:
        count_statements(app.state.engine)
        await client.get("/api/v1/tickets?limit=1", headers=headers)  # warm the pool and caches
        for limit in (1, 200):
            with statements_run() as statements:
                response = await client.get(f"/api/v1/tickets?limit={limit}{query}", headers=headers)
            assert response.status_code == 200, response.text
            assert len(response.json()["items"]) == limit
            counts[limit] = statements
    assert counts[1], "no statement was counted: the counting hooks are broken"
    assert len(counts[200]) == len(counts[1]), counts
    # BEGIN, the tenant scope, the page, COMMIT (+ custom plans for a search): anything more per
    # request is worth a look.
    assert len(counts[1]) <= (5 if "&q=" in query else 4), counts[1]
