"""Creating tickets: every field, who may set what, tenant categories, SLA deadlines, numbers."""

import asyncio
import dataclasses

import asyncpg

from libs.common.db import plain_dsn
from services.tickets import repository
from services.tickets import service as ticket_service
from services.tickets.app import create_app
from services.tickets.settings import Settings
from tests.conftest import app_client, auth_headers, settings_for, unique_tenant
from tests.tickets.helpers import (
    TICKETS,
    admin_fetch,
    count_statements,
    create_ticket,
    outbox_types,
    statements_run,
    tenant_state,
)


async def test_an_agent_creates_a_maintenance_ticket_with_every_field(tickets, infra):
    agent = auth_headers(infra, unique_tenant(), ["agent"], "agent-1")
    body = {
        "subject": "B동 3층 301호 누수",
        "description": "천장에서 물이 떨어집니다",
        "priority": "high",
        "category": "plumbing",
        "type": "incident",
        "source": "phone",
        "location": "화장실 앞 복도",
        "building": "B동",
        "floor": "3",
        "room": "301",
        "requester_id": "resident-17",
        "requester_name": "김민수",
        "requester_email": "minsu@example.com",
        "assignee_id": "agent-3",
        "group_id": "facilities",
        "tags": ["leak", "urgent-fix", "leak"],
        "custom_fields": {"unit": "301", "insurance": {"claim": True, "ref": "A-9"}},
        "watchers": ["manager-1"],
    }
    ticket = await create_ticket(tickets, agent, **body)
    for field, value in body.items():
        expected = ["leak", "urgent-fix"] if field == "tags" else value
        assert ticket[field] == expected, field
    assert ticket["status"] == "open" and ticket["status_category"] == "open"
    assert ticket["summary"] is None and ticket["deleted_at"] is None
    assert await outbox_types(infra, ticket["id"]) == ["helpdesk.tickets.ticket.created.v1"]


async def test_unknown_source_codes_from_imports_are_kept(tickets, infra):
    agent = auth_headers(infra, unique_tenant(), ["agent"], "agent-1")
    ticket = await create_ticket(tickets, agent, source="freshdesk-7")
    assert ticket["source"] == "freshdesk-7"
    bad = await tickets.post("/api/v1/tickets", json={"subject": "x", "source": "Not A Code!"}, headers=agent)
    assert bad.status_code == 422


async def test_requesters_are_always_the_requester_and_cannot_assign(tickets, infra):
    requester = auth_headers(infra, unique_tenant(), ["requester"], "req-1")
    own = await create_ticket(tickets, requester, location="lobby")
    assert own["requester_id"] == "req-1"
    for field, value in [("requester_id", "someone-else"), ("assignee_id", "agent-1"), ("watchers", ["x"])]:
        response = await tickets.post(
            "/api/v1/tickets", json={"subject": "x", field: value}, headers=requester
        )
        assert response.status_code == 403, field
        assert field in response.json()["detail"]


async def test_a_tenant_with_categories_accepts_only_those(tickets, infra):
    tenant = unique_tenant()
    agent = auth_headers(infra, tenant, ["agent"], "agent-1")
    admin = auth_headers(infra, tenant, ["admin"], "admin-1")
    assert (await create_ticket(tickets, agent, category="anything"))["category"] == "anything"

    for key, name in [("elevator", "엘리베이터"), ("plumbing", "배관")]:
        created = await tickets.post(
            "/api/v1/tickets/categories", json={"key": key, "name": name}, headers=admin
        )
        assert created.status_code == 201
    duplicate = await tickets.post(
        "/api/v1/tickets/categories", json={"key": "elevator", "name": "x"}, headers=admin
    )
    assert duplicate.status_code == 409
    listed = (await tickets.get("/api/v1/tickets/categories", headers=agent)).json()["items"]
    assert listed == [{"key": "elevator", "name": "엘리베이터"}, {"key": "plumbing", "name": "배관"}]

    before = await create_ticket(tickets, agent, category="elevator")
    for _ in range(3):
        refused = await tickets.post(
            "/api/v1/tickets", json={"subject": "x", "category": "hvac"}, headers=agent
        )
        assert refused.status_code == 422 and "elevator" in refused.json()["detail"]
    after = await create_ticket(tickets, agent, category="plumbing")
    assert after["category"] == "plumbing"
    # A refused category takes no ticket number: the numbers a team sees stay dense.
    assert after["number"] == before["number"] + 1
    assert (
        await tickets.post("/api/v1/tickets/categories", json={"key": "x", "name": "x"}, headers=agent)
    ).status_code == 403
    assert (await tickets.delete("/api/v1/tickets/categories/plumbing", headers=admin)).status_code == 204


async def test_sla_policy_sets_deadlines_at_creation(tickets, infra):
    tenant = unique_tenant()
    agent = auth_headers(infra, tenant, ["agent"], "agent-1")
    await admin_fetch(
        infra,
        "INSERT INTO tickets.sla_policies (tenant_id, priority, first_response_minutes, resolution_minutes) "
        "VALUES ($1, 'urgent', 30, 240)",
        tenant,
    )
    from datetime import datetime, timedelta

    urgent = await create_ticket(tickets, agent, priority="urgent")
    created = datetime.fromisoformat(urgent["created_at"])
    assert datetime.fromisoformat(urgent["first_response_due_at"]) == created + timedelta(minutes=30)
    assert datetime.fromisoformat(urgent["due_at"]) == created + timedelta(minutes=240)
    low = await create_ticket(tickets, agent, priority="low")
    assert low["due_at"] is None and low["first_response_due_at"] is None


async def test_a_create_whose_number_takes_too_long_is_a_503_that_wrote_nothing(infra):
    """A database error while the number is taken is answered like any other (here a statement
    timeout: 503, retry), and the number it waited for is not used up."""
    tenant = unique_tenant()
    app = create_app(settings_for(infra, Settings, "tickets", db_statement_timeout_ms=300))
    async with app_client(app) as client:
        agent = auth_headers(infra, tenant, ["agent"], "agent-1")
        await create_ticket(client, agent, subject="first")
        before = await tenant_state(infra, tenant)
        blocker = await asyncpg.connect(plain_dsn(infra.admin_url))
        try:
            async with blocker.transaction():  # ALTER SEQUENCE (a no-op one) locks out nextval()
                sequence = await blocker.fetchval("SELECT tickets.ticket_number_sequence($1)::text", tenant)
                await blocker.execute(f"ALTER SEQUENCE {sequence} NO CYCLE")
                response = await client.post(TICKETS, json={"subject": "second"}, headers=agent)
        finally:
            await blocker.close()
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"]
        assert await tenant_state(infra, tenant) == before
        assert (await create_ticket(client, agent, subject="third"))["number"] == 2


async def test_a_create_like_an_earlier_one_runs_only_its_insert_in_the_transaction(infra):
    """The SLA policy and calendar a create reads are kept for the next create of the tenant and
    priority; the INSERT itself checks they still hold. So a create runs BEGIN (with the tenant
    scope), the INSERT (ticket, number and event together) and COMMIT: three round trips."""
    app = create_app(settings_for(infra, Settings, "tickets"))
    agent = auth_headers(infra, unique_tenant(), ["agent"], "agent-1")
    async with app_client(app) as client:
        count_statements(app.state.engine)
        with statements_run() as first_statements:
            first = await create_ticket(client, agent, subject="first", priority="high", category="hvac")
        with statements_run() as statements:
            second = await create_ticket(client, agent, subject="second", priority="high", category="other")
    assert any("tickets.sla_policies" in statement for statement in first_statements)  # rules read
    assert len(statements) == 3, statements
    assert statements[0].startswith("BEGIN;") and statements[2].startswith("COMMIT")
    assert "INSERT INTO tickets.tickets" in statements[1] or "inserted_ticket" in statements[1], statements
    assert second["number"] == first["number"] + 1


async def test_rules_that_keep_changing_end_the_create_in_a_503_that_wrote_nothing(
    tickets, infra, monkeypatch
):
    """Were the SLA rules a create reads changed before its INSERT every time (an admin saving
    them at that very moment), the INSERT writes nothing each time; after a few reads the create
    gives up: 503 with Retry-After, nothing written, no number used. Here each read hands back
    a version no row has, so the database's own check refuses every try."""
    tenant = unique_tenant()
    agent = auth_headers(infra, tenant, ["agent"], "agent-1")
    first = await create_ticket(tickets, agent, priority="low")
    before = await tenant_state(infra, tenant)
    read = repository.new_ticket_rules
    reads = []

    async def outdated_rules(*args):
        reads.append(args)
        return dataclasses.replace(await read(*args), calendar_version="0")

    monkeypatch.setattr(repository, "new_ticket_rules", outdated_rules)
    monkeypatch.delitem(ticket_service._KNOWN_RULES, (tenant, "low"))
    response = await tickets.post(TICKETS, json={"subject": "second", "priority": "low"}, headers=agent)
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "1"
    assert len(reads) == 3
    assert await tenant_state(infra, tenant) == before

    monkeypatch.undo()
    assert (await create_ticket(tickets, agent, priority="low"))["number"] == first["number"] + 1


async def test_the_first_tickets_of_a_new_tenant_made_at_once_are_numbered_1_to_n(tickets, infra):
    """The tenant's number sequence is made by its first create; creates racing it wait, then
    number on from it. The tenant is registered once for the SLA scans."""
    tenant = unique_tenant()
    agent = auth_headers(infra, tenant, ["agent"], "agent-1")
    created = await asyncio.gather(*(create_ticket(tickets, agent, subject=f"race {i}") for i in range(20)))
    assert sorted(ticket["number"] for ticket in created) == list(range(1, 21))
    registered = await admin_fetch(infra, "SELECT count(*) FROM tickets.tenants WHERE tenant_id = $1", tenant)
    assert registered[0][0] == 1
    # Owned by the migration role: the service role may not make objects in the schema.
    [owner] = await admin_fetch(
        infra,
        "SELECT pg_get_userbyid(relowner) = current_user FROM pg_class"
        " WHERE oid = tickets.ticket_number_sequence($1)",
        tenant,
    )
    assert owner[0]
