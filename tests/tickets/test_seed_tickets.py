"""The scale benchmark's seeder writes consistent data, and its request plan covers every filter."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import parse_qsl, urlsplit

import asyncpg

from bench import seed_tickets, tickets_scale
from services.tickets import endpoints
from tests.conftest import Infra, unique_tenant


async def test_seeded_tickets_are_consistent_and_numbering_continues(infra: Infra) -> None:
    tenants = [unique_tenant("seed"), unique_tenant("seed")]
    kwargs = {"tenants": tenants, "requesters_per_tenant": 50, "rebuild": False, "log": lambda _line: None}
    first = await seed_tickets.seed(infra.admin_url, tickets=3_000, **kwargs)
    second = await seed_tickets.seed(infra.admin_url, tickets=400, comments=0, rng_seed=2, **kwargs)
    assert first.comments == 6_000

    conn = await asyncpg.connect(infra.admin_url)
    try:
        stats = await conn.fetchrow(
            """SELECT count(*) AS tickets, count(DISTINCT status_category) AS categories,
                      count(DISTINCT requester_id) AS requesters,
                      count(*) FILTER (WHERE subject ~ '[가-힣]') AS korean,
                      count(*) FILTER (WHERE subject ~ '^[ -~]+$') AS english,
                      count(*) FILTER (WHERE due_at < now() AND status_category NOT IN ('resolved', 'closed'))
                        AS overdue,
                      count(*) FILTER (WHERE due_at > now()) AS due_later,
                      min(created_at) AS oldest, max(created_at) AS newest
               FROM tickets.tickets WHERE tenant_id = any($1::text[])""",
            tenants,
        )
        assert stats["tickets"] == 3_400
        assert stats["categories"] == 5
        assert stats["requesters"] > 90
        assert stats["korean"] > 1_000 and stats["english"] > 700
        assert stats["overdue"] > 0 and stats["due_later"] > 0
        assert (stats["newest"] - stats["oldest"]).days > 2 * 365
        assert stats["newest"] <= datetime.now(UTC)

        for tenant in tenants:
            numbers = await conn.fetchrow(
                "SELECT count(*) AS n, count(DISTINCT number) AS distinct_numbers, max(number) AS top"
                " FROM tickets.tickets WHERE tenant_id = $1",
                tenant,
            )
            # Numbers are 1..n without gaps, and the tenant's sequence ends at the largest one.
            assert numbers["n"] == numbers["distinct_numbers"] == numbers["top"]
            last = await conn.fetchval(
                "SELECT pg_sequence_last_value(tickets.ticket_number_sequence($1))", tenant
            )
            assert last == numbers["top"] == second.numbers[tenant]
            assert await conn.fetchval("SELECT 1 FROM tickets.tenants WHERE tenant_id = $1", tenant)

        comments = await conn.fetchrow(
            """SELECT count(*) AS n, count(DISTINCT visibility) AS kinds,
                      count(*) FILTER (WHERE c.created_at < t.created_at) AS before_ticket,
                      count(*) FILTER (WHERE c.tenant_id <> t.tenant_id) AS other_tenant
               FROM tickets.comments c JOIN tickets.tickets t ON t.id = c.ticket_id
               WHERE c.tenant_id = any($1::text[])""",
            tenants,
        )
        assert comments["n"] == 6_000
        assert comments["kinds"] == 2
        assert comments["before_ticket"] == 0 and comments["other_tenant"] == 0
        # Within one seeding, newer tickets have higher numbers (a real deployment's order).
        inversions = await conn.fetchval(
            """SELECT count(*) FROM (
                 SELECT created_at < lag(created_at) OVER (ORDER BY number) AS inverted
                 FROM tickets.tickets WHERE tenant_id = $1 AND number <= $2) s WHERE inverted""",
            tenants[0],
            first.numbers[tenants[0]],
        )
        assert inversions == 0
    finally:
        await conn.close()


def test_the_list_phase_covers_every_documented_filter_and_sort() -> None:
    samples = {
        "tenants": {
            "t": {"ids": ["x"], "requesters": ["r"], "assignees": ["a"], "rooms": ["301"], "parents": ["p"]}
        }
    }
    plan = tickets_scale.build_plan(tickets_scale.Phase.LIST, samples, datetime.now(UTC), count=500)
    used = {key for request in plan for key, _ in parse_qsl(urlsplit(request["path"]).query)}
    parameters = {field.alias or name for name, field in endpoints.TicketListQuery.model_fields.items()}
    documented = {
        "status",
        "status_category",
        "priority",
        "category",
        "assignee",
        "group",
        "requester",
        "tag",
    }
    documented |= {"building", "floor", "room", "created_from", "created_to", "updated_from", "updated_to"}
    documented |= {"overdue", "due_before", "parent_id", "deleted", "sort", "order"}
    assert documented <= parameters
    assert documented | {"cf.vendor"} <= used
    sorts = {
        (
            dict(parse_qsl(urlsplit(r["path"]).query)).get("sort"),
            dict(parse_qsl(urlsplit(r["path"]).query)).get("order"),
        )
        for r in plan
    }
    for field in ("created_at", "updated_at", "priority", "due_at"):
        assert {(field, "asc"), (field, "desc")} <= sorts
