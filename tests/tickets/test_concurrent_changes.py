"""Changes that race each other: a status removed while a ticket moves into it, parent links
made from both ends at once. Each race is staged: one side's transaction is held open while
the other side's request runs, so the test does not depend on timing luck."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from uuid import UUID

import pytest

from libs.common.auth import Identity
from libs.common.db import set_tenant
from services.tickets import repository, service
from services.tickets.app import create_app
from services.tickets.schemas import TicketUpdate
from services.tickets.settings import Settings
from tests.conftest import app_client, auth_headers, settings_for, unique_tenant
from tests.tickets.helpers import (
    TICKETS,
    admin_fetch,
    assert_problem,
    create_ticket,
    patch_ticket,
    read_ticket,
)

STATUSES = f"{TICKETS}/statuses"


@pytest.fixture(scope="module")
async def app(infra):
    app = create_app(settings_for(infra, Settings, "tickets"))
    async with app_client(app) as client:
        app.state.test_client = client
        yield app


@contextlib.asynccontextmanager
async def open_transaction(app, tenant: str) -> AsyncIterator:
    """A tenant-scoped transaction of the service, committed when the block ends."""
    async with app.state.session_factory() as session, session.begin():
        await set_tenant(session, tenant)
        yield session


async def _still_waiting(task: asyncio.Task) -> bool:
    await asyncio.sleep(0.5)
    return not task.done()


async def _add_status(client, admin, key: str) -> None:
    body = {"key": key, "name": key, "category": "in_progress"}
    assert (await client.post(STATUSES, json=body, headers=admin)).status_code == 201


async def test_a_status_cannot_be_removed_while_a_ticket_moves_into_it(app, infra):
    client, tenant = app.state.test_client, unique_tenant()
    agent = auth_headers(infra, tenant, ["agent"], "agent-1")
    admin = auth_headers(infra, tenant, ["admin"], "admin-1")
    await _add_status(client, admin, "on_site")
    ticket = await create_ticket(client, agent)
    identity = Identity(tenant=tenant, user_id="agent-1", roles=frozenset({"agent"}))
    async with open_transaction(app, tenant) as session:
        move, version = TicketUpdate(status="on_site"), frozenset({ticket["version"]})
        await service.update_ticket(session, identity, UUID(ticket["id"]), move, version)
        removal = asyncio.create_task(client.delete(f"{STATUSES}/on_site", headers=admin))
        assert await _still_waiting(removal)  # it waits for the move to commit
    assert_problem(await removal, 409, detail="in use")
    assert (await read_ticket(client, agent, ticket))["status"] == "on_site"


async def test_a_ticket_cannot_move_into_a_status_being_removed(app, infra):
    client, tenant = app.state.test_client, unique_tenant()
    agent = auth_headers(infra, tenant, ["agent"], "agent-1")
    admin = auth_headers(infra, tenant, ["admin"], "admin-1")
    await _add_status(client, admin, "on_site")
    ticket = await create_ticket(client, agent)
    async with open_transaction(app, tenant) as session:
        assert await repository.lock_status(session, tenant, "on_site", for_removal=True)
        assert await repository.delete_status(session, tenant, "on_site")
        move = asyncio.create_task(patch_ticket(client, agent, ticket, status="on_site"))
        assert await _still_waiting(move)  # it waits for the removal to commit
    assert_problem(await move, 422, fields=("status",), detail="unknown status")
    assert (await read_ticket(client, agent, ticket))["status"] == "open"


async def test_a_ticket_left_in_a_removed_status_moves_like_its_category(app, infra):
    # Tickets written before the removal was locked against moves (or restored from a backup)
    # may hold a status that no longer exists: they move as their category does, never a 500.
    client, tenant = app.state.test_client, unique_tenant()
    agent = auth_headers(infra, tenant, ["agent"], "agent-1")
    admin = auth_headers(infra, tenant, ["admin"], "admin-1")
    await _add_status(client, admin, "on_site")
    ticket = (await patch_ticket(client, agent, await create_ticket(client, agent), status="on_site")).json()
    await admin_fetch(infra, "DELETE FROM tickets.statuses WHERE tenant_id = $1 AND key = 'on_site'", tenant)
    refused = await patch_ticket(client, agent, ticket, status="on_site_again")
    assert_problem(refused, 422, fields=("status",))
    closed = await patch_ticket(client, agent, ticket, status="closed")
    assert closed.status_code == 200, closed.text
    reopened = await patch_ticket(client, agent, closed.json(), status="pending")
    assert_problem(reopened, 409)
    assert reopened.json()["allowed_next_statuses"] == ["open"]


async def test_parent_links_made_from_both_ends_at_once_cannot_form_a_cycle(app, infra):
    client, tenant = app.state.test_client, unique_tenant()
    agent = auth_headers(infra, tenant, ["agent"], "agent-1")
    x, y = await create_ticket(client, agent), await create_ticket(client, agent)
    identity = Identity(tenant=tenant, user_id="agent-1", roles=frozenset({"agent"}))
    async with open_transaction(app, tenant) as session:
        update = TicketUpdate(parent_id=y["id"])
        await service.update_ticket(session, identity, UUID(x["id"]), update, frozenset({1}))
        other_end = asyncio.create_task(patch_ticket(client, agent, y, parent_id=x["id"]))
        assert await _still_waiting(other_end)
    assert_problem(await other_end, 422, fields=("parent_id",), detail="cycle")
    assert (await read_ticket(client, agent, x))["parent_id"] == y["id"]
    assert (await read_ticket(client, agent, y))["parent_id"] is None


async def test_a_ticket_under_a_deleted_ticket_can_still_be_a_parent(app, infra):
    client, tenant = app.state.test_client, unique_tenant()
    agent = auth_headers(infra, tenant, ["agent"], "agent-1")
    admin = auth_headers(infra, tenant, ["admin"], "admin-1")
    top = await create_ticket(client, agent)
    middle = await create_ticket(client, agent, parent_id=top["id"])
    bottom = await create_ticket(client, agent, parent_id=middle["id"])
    assert (await client.delete(f"{TICKETS}/{middle['id']}", headers=admin)).status_code == 204
    child = await create_ticket(client, agent, parent_id=bottom["id"])
    assert child["parent_id"] == bottom["id"]
    other = await create_ticket(client, agent)
    linked = await patch_ticket(client, agent, other, parent_id=bottom["id"])
    assert linked.status_code == 200, linked.text
    # The deleted ticket itself cannot become a parent.
    refused = await patch_ticket(client, agent, linked.json(), parent_id=middle["id"])
    assert_problem(refused, 422, fields=("parent_id",), detail="not found")


async def test_a_merged_ticket_stays_closed_and_takes_no_comments(app, infra):
    client, tenant = app.state.test_client, unique_tenant()
    agent = auth_headers(infra, tenant, ["agent"], "agent-1")
    source, target = await create_ticket(client, agent), await create_ticket(client, agent)
    merged = await client.post(
        f"{TICKETS}/{source['id']}/merge", json={"into_ticket_id": target["id"]}, headers=agent
    )
    assert merged.status_code == 200, merged.text
    reopened = await patch_ticket(client, agent, merged.json(), status="open")
    problem = assert_problem(reopened, 409, detail="was merged into")
    assert problem["merged_into_id"] == target["id"]
    comment = await client.post(f"{TICKETS}/{source['id']}/comments", json={"body": "hello?"}, headers=agent)
    assert_problem(comment, 409, detail="was merged into")
    bulk = await client.post(
        f"{TICKETS}/bulk", json={"ids": [target["id"], source["id"]], "status": "open"}, headers=agent
    )
    assert_problem(bulk, 409, detail="was merged into")
    # Other fields stay editable (e.g. tags for reporting).
    tagged = await patch_ticket(client, agent, merged.json(), tags=["duplicate"])
    assert tagged.status_code == 200, tagged.text
