"""SLA retargets: open tickets moved to new targets in the background, batch by batch, after a
policy or calendar change too large for the admin's request."""

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from libs.common.db import set_tenant
from services.tickets import service as tickets_service
from services.tickets.app import create_app
from services.tickets.settings import Settings
from services.tickets.sla import endpoints as sla_endpoints
from services.tickets.sla import repository as sla_repository
from services.tickets.sla import scheduler as scheduler_module
from services.tickets.sla.scheduler import run_retargets
from services.tickets.sla.service import retarget_retry_delay
from tests.conftest import app_client, settings_for, unique_tenant, wait_until
from tests.tickets.helpers import (
    admin_fetch,
    assert_problem,
    count_statements,
    create_ticket,
    minutes_after_creation,
    outbox_types,
    patch_ticket,
    read_ticket,
    statements_run,
    updates_refused,
)
from tests.tickets.test_sla_api import POLICIES, URGENT, admin, agent

RETARGETS = "/api/v1/tickets/sla/retargets"


@pytest.fixture
def scheduler_not_woken(monkeypatch):
    """The app's scheduler is not woken by a queued retarget (it idles with its hour-long
    interval), so the test drives the retarget itself."""
    monkeypatch.setattr(sla_endpoints, "wake_scheduler", lambda app: None)


def _many_settings(infra) -> Settings:
    # An hour between the scheduler's passes; requests move at most 2 open tickets, the
    # background 2 per batch.
    return settings_for(
        infra,
        Settings,
        "tickets",
        sla_scan_interval_s=3600,
        sla_retarget_max_tickets=2,
        sla_scan_batch_size=2,
    )


async def _due_at_history(infra, ticket_ids: list[str]) -> dict[str, list[str]]:
    rows = await admin_fetch(
        infra,
        "SELECT ticket_id::text, actor_id FROM tickets.ticket_history"
        " WHERE field = 'due_at' AND ticket_id::text = ANY($1::text[]) ORDER BY created_at",
        ticket_ids,
    )
    history: dict[str, list[str]] = {ticket_id: [] for ticket_id in ticket_ids}
    for row in rows:
        history[row["ticket_id"]].append(row["actor_id"])
    return history


async def _assert_moved_once_by_the_admin(infra, tickets: list[dict]) -> None:
    history = await _due_at_history(infra, [ticket["id"] for ticket in tickets])
    assert history == {ticket["id"]: ["admin-1"] for ticket in tickets}


async def _queue_retarget(
    client, infra, tenant: str, tickets: int, new_targets: dict, priority: str = "urgent"
) -> tuple[list, str]:
    """`tickets` open tickets of `priority`, then a change of its policy too large for the
    request: (the tickets, the URL of the queued retarget)."""
    staff, boss = agent(infra, tenant), admin(infra, tenant)
    await client.put(f"{POLICIES}/{priority}", json=URGENT, headers=boss)
    concerned = [await create_ticket(client, staff, priority=priority) for _ in range(tickets)]
    saved = await client.put(
        f"{POLICIES}/{priority}", params={"apply_to_open_tickets": "true"}, json=new_targets, headers=boss
    )
    return concerned, f"{RETARGETS}/{saved.json()['retarget']['id']}"


async def _wait_done(client, infra, tenant: str, progress: str) -> None:
    async def done() -> bool:
        return (await client.get(progress, headers=admin(infra, tenant))).json()["status"] == "done"

    await wait_until(done, timeout=20)


async def test_many_open_tickets_move_in_the_background_batch_by_batch(infra, scheduler_not_woken):
    app = create_app(_many_settings(infra))
    tenant = unique_tenant()
    staff, boss = agent(infra, tenant), admin(infra, tenant)
    async with app_client(app) as client:
        await client.put(f"{POLICIES}/urgent", json=URGENT, headers=boss)
        concerned = [await create_ticket(client, staff, priority="urgent") for _ in range(5)]
        done = await create_ticket(client, staff, priority="urgent")
        await patch_ticket(client, staff, done, status="resolved")
        slower = {**URGENT, "resolution_minutes": 480}
        saved = await client.put(
            f"{POLICIES}/urgent", params={"apply_to_open_tickets": "true"}, json=slower, headers=boss
        )
        assert saved.status_code == 200, saved.text
        body = saved.json()
        assert body["resolution_minutes"] == 480 and body["open_tickets_updated"] == 0
        retarget = body["retarget"]
        assert retarget["status"] == "queued" and retarget["priorities"] == ["urgent"]
        assert (retarget["open_tickets"], retarget["tickets_updated"]) == (5, 0)
        assert retarget["requested_by"] == "admin-1" and retarget["finished_at"] is None
        # The policy is saved at once (new tickets get it); open ones wait for the background.
        assert minutes_after_creation(await create_ticket(client, staff, priority="urgent"), "due_at") == 480
        for ticket in concerned:
            assert (await read_ticket(client, staff, ticket))["due_at"] == ticket["due_at"]

        progress = f"{RETARGETS}/{retarget['id']}"
        assert (await client.get(progress, headers=boss)).json() == retarget
        assert (await client.get(progress, headers=staff)).status_code == 403
        listing = await client.get(RETARGETS, headers=boss)
        assert [item["id"] for item in listing.json()["items"]] == [retarget["id"]]

        # 6 open tickets (the one created since is already on the new targets) in batches of 2,
        # then a batch that finds none left.
        assert await run_retargets(app.state.session_factory, batch_size=2) == 4
        finished = (await client.get(progress, headers=boss)).json()
        assert finished["status"] == "done" and finished["finished_at"] is not None
        assert finished["tickets_updated"] == 5
        for ticket in concerned:
            moved = await read_ticket(client, staff, ticket)
            assert minutes_after_creation(moved, "due_at") == 480
            assert (await outbox_types(infra, ticket["id"]))[-1] == "helpdesk.tickets.ticket.updated.v1"
        assert (await read_ticket(client, staff, done))["due_at"] == done["due_at"]
        await _assert_moved_once_by_the_admin(infra, concerned)
        assert await run_retargets(app.state.session_factory, batch_size=2) == 0  # nothing left


async def test_moving_12_open_tickets_runs_the_statements_of_moving_3(infra):
    """A policy change moves its open tickets with one update, one history and one outbox
    statement for all of them, however many there are."""
    app = create_app(settings_for(infra, Settings, "tickets"))
    counts = []
    async with app_client(app) as client:
        count_statements(app.state.engine)
        for size in (3, 12):
            tenant = unique_tenant()
            staff, boss = agent(infra, tenant), admin(infra, tenant)
            await client.put(f"{POLICIES}/urgent", json=URGENT, headers=boss)
            concerned = [await create_ticket(client, staff, priority="urgent") for _ in range(size)]
            slower = {**URGENT, "resolution_minutes": 480}
            with statements_run() as statements:
                saved = await client.put(
                    f"{POLICIES}/urgent", params={"apply_to_open_tickets": "true"}, json=slower, headers=boss
                )
            assert saved.status_code == 200, saved.text
            assert saved.json()["open_tickets_updated"] == size
            for ticket in concerned:
                assert minutes_after_creation(await read_ticket(client, staff, ticket), "due_at") == 480
            await _assert_moved_once_by_the_admin(infra, concerned)
            counts.append(len(statements))
    assert counts[0] == counts[1], counts


async def test_a_failed_retarget_batch_leaves_nothing_half_done(infra, scheduler_not_woken):
    app = create_app(_many_settings(infra))
    tenant = unique_tenant()
    staff, boss = agent(infra, tenant), admin(infra, tenant)
    async with app_client(app) as client:
        slower = {**URGENT, "resolution_minutes": 600}
        concerned, progress = await _queue_retarget(client, infra, tenant, 3, slower, priority="high")

        # A batch whose transaction dies after its work (a crash, a lost connection): rolled back
        # with the mark of how far it got, so the next pass does it again, once.
        factory = app.state.session_factory
        with pytest.raises(RuntimeError):
            async with factory() as session, session.begin():
                await set_tenant(session, tenant)
                assert await tickets_service.continue_retarget(session, tenant, batch_size=2)
                raise RuntimeError("crash before commit")
        assert (await client.get(progress, headers=boss)).json()["status"] == "queued"
        for ticket in concerned:
            assert (await read_ticket(client, staff, ticket))["due_at"] == ticket["due_at"]

        # Two replicas at once: each batch is claimed by one of them.
        await asyncio.gather(run_retargets(factory, batch_size=2), run_retargets(factory, batch_size=2))
        assert (await client.get(progress, headers=boss)).json()["tickets_updated"] == 3
        await _assert_moved_once_by_the_admin(infra, concerned)


async def test_a_deleted_policy_with_many_open_tickets_answers_202_with_the_retarget(
    infra, scheduler_not_woken
):
    app = create_app(_many_settings(infra))
    tenant = unique_tenant()
    staff, boss = agent(infra, tenant), admin(infra, tenant)
    async with app_client(app) as client:
        await client.put(f"{POLICIES}/low", json=URGENT, headers=boss)
        concerned = [await create_ticket(client, staff, priority="low") for _ in range(3)]
        deleted = await client.delete(f"{POLICIES}/low", params={"apply_to_open_tickets": "1"}, headers=boss)
        assert deleted.status_code == 202, deleted.text
        retarget = deleted.json()
        assert retarget["status"] == "queued" and retarget["open_tickets"] == 3
        assert deleted.headers["location"] == f"{RETARGETS}/{retarget['id']}"
        assert (await client.get(POLICIES, headers=boss)).json()["items"] == []
        await run_retargets(app.state.session_factory, batch_size=2)
        for ticket in concerned:
            cleared = await read_ticket(client, staff, ticket)
            assert cleared["due_at"] is None and cleared["first_response_due_at"] is None


async def test_retargets_are_the_tenants_own(infra):
    app = create_app(_many_settings(infra))
    tenant, other = unique_tenant(), unique_tenant()
    async with app_client(app) as client:
        boss = admin(infra, tenant)
        _, progress = await _queue_retarget(client, infra, tenant, 3, URGENT, priority="medium")
        assert (await client.get(progress, headers=admin(infra, other))).status_code == 404
        listing = await client.get(RETARGETS, headers=admin(infra, other))
        assert listing.json()["items"] == []
        malformed = await client.get(f"{RETARGETS}/not-a-uuid", headers=boss)
        assert malformed.status_code == 422
        assert malformed.headers["content-type"] == "application/problem+json"


async def test_the_running_sla_scheduler_finishes_a_waiting_retarget(infra):
    settings = _many_settings(infra).model_copy(update={"sla_scan_interval_s": 0.2})
    tenant = unique_tenant()
    async with app_client(create_app(settings)) as client:
        faster = {**URGENT, "first_response_minutes": 45}
        concerned, progress = await _queue_retarget(client, infra, tenant, 3, faster)
        await _wait_done(client, infra, tenant, progress)
        for ticket in concerned:
            moved = await read_ticket(client, agent(infra, tenant), ticket)
            assert minutes_after_creation(moved, "first_response_due_at") == 45


async def test_a_large_retarget_goes_on_pass_after_pass_without_waiting_for_the_interval(
    infra, monkeypatch, scheduler_not_woken
):
    # An hour between scans; each pass gives retargets a slice of time (a batch or so here), then
    # scans for breaches, and starts the next pass at once while a retarget is left.
    settings = _many_settings(infra).model_copy(update={"sla_scan_batch_size": 1})
    tenant = unique_tenant()
    async with app_client(create_app(settings)) as client:
        slower = {**URGENT, "resolution_minutes": 300}
        concerned, progress = await _queue_retarget(client, infra, tenant, 6, slower)
    monkeypatch.setattr(scheduler_module, "RETARGET_SLICE_S", 0.001)
    async with app_client(create_app(settings)) as client:  # its scheduler's first pass starts now
        await _wait_done(client, infra, tenant, progress)
        for ticket in concerned:
            moved = await read_ticket(client, agent(infra, tenant), ticket)
            assert minutes_after_creation(moved, "due_at") == 300


async def test_a_queued_retarget_starts_at_once_not_at_the_next_interval(infra):
    settings = _many_settings(infra)  # an hour between the scheduler's passes
    tenant = unique_tenant()
    async with app_client(create_app(settings)) as client:
        slower = {**URGENT, "resolution_minutes": 360}
        concerned, progress = await _queue_retarget(client, infra, tenant, 3, slower)
        await _wait_done(client, infra, tenant, progress)  # woken by the request that queued it
        for ticket in concerned:
            moved = await read_ticket(client, agent(infra, tenant), ticket)
            assert minutes_after_creation(moved, "due_at") == 360


def test_a_failing_retarget_waits_longer_after_each_failure_up_to_an_hour():
    delays = [retarget_retry_delay(failures) for failures in range(1, 7)]
    assert delays == [timedelta(minutes=minutes) for minutes in (1, 5, 15, 60, 60, 60)]


async def test_a_failing_batch_is_undone_and_put_off_while_later_retargets_go_on(infra, scheduler_not_woken):
    app = create_app(_many_settings(infra))
    tenant = unique_tenant()
    staff, boss = agent(infra, tenant), admin(infra, tenant)
    async with app_client(app) as client:
        factory = app.state.session_factory
        slower = {**URGENT, "resolution_minutes": 500}
        concerned, progress = await _queue_retarget(client, infra, tenant, 3, slower)
        # The first batch is the two oldest tickets; the second of them cannot be updated.
        async with updates_refused(infra, concerned[1]["id"]):
            before = datetime.now(UTC)
            assert await run_retargets(factory, batch_size=2) == 1
            failing = (await client.get(progress, headers=boss)).json()
            assert failing["status"] == "failing" and failing["failures"] == 1
            assert failing["tickets_updated"] == 0 and failing["finished_at"] is None
            retry_at = datetime.fromisoformat(failing["next_attempt_at"])
            assert before + timedelta(minutes=1) <= retry_at <= datetime.now(UTC) + timedelta(minutes=1)
            # The oldest ticket's change in that batch was undone with the rest.
            for ticket in concerned:
                assert (await read_ticket(client, staff, ticket))["due_at"] == ticket["due_at"]
            assert await _due_at_history(infra, [concerned[0]["id"]]) == {concerned[0]["id"]: []}

            # Put off: not retried before its time, and its tenant is not listed as having work
            # (the scheduler would otherwise start pass after pass at once).
            assert await run_retargets(factory, batch_size=2) == 0
            async with factory() as session, session.begin():
                assert tenant not in await sla_repository.tenants_with_retargets(session)

            # A later retarget of the same tenant does not wait behind it.
            others, later = await _queue_retarget(client, infra, tenant, 3, slower, priority="high")
            await run_retargets(factory, batch_size=2)
            assert (await client.get(later, headers=boss)).json()["status"] == "done"
            for ticket in others:
                assert minutes_after_creation(await read_ticket(client, staff, ticket), "due_at") == 500

            # Its time comes and the cause is still there: a second failure, a longer delay.
            await admin_fetch(
                infra,
                "UPDATE tickets.sla_retargets SET next_attempt_at = now() WHERE id::text = $1",
                failing["id"],
            )
            assert await run_retargets(factory, batch_size=2) == 1
            again = (await client.get(progress, headers=boss)).json()
            assert (again["status"], again["failures"]) == ("failing", 2)
            assert datetime.fromisoformat(again["next_attempt_at"]) >= datetime.now(UTC) + timedelta(
                minutes=4
            )

        # The cause gone and the time come, it finishes; success resets the count.
        await admin_fetch(
            infra,
            "UPDATE tickets.sla_retargets SET next_attempt_at = now() WHERE id::text = $1",
            failing["id"],
        )
        await run_retargets(factory, batch_size=2)
        done = (await client.get(progress, headers=boss)).json()
        assert (done["status"], done["failures"], done["next_attempt_at"]) == ("done", 0, None)
        assert done["tickets_updated"] == 3
        await _assert_moved_once_by_the_admin(infra, concerned)


async def test_an_admin_cancels_a_retarget_and_tickets_moved_so_far_keep_their_deadlines(
    infra, scheduler_not_woken
):
    app = create_app(_many_settings(infra))
    tenant = unique_tenant()
    staff, boss = agent(infra, tenant), admin(infra, tenant)
    async with app_client(app) as client:
        factory = app.state.session_factory
        slower = {**URGENT, "resolution_minutes": 420}
        concerned, progress = await _queue_retarget(client, infra, tenant, 3, slower)
        async with factory() as session, session.begin():  # one batch: the two oldest
            await set_tenant(session, tenant)
            assert await tickets_service.continue_retarget(session, tenant, batch_size=2)

        assert_problem(await client.post(f"{progress}/cancel", headers=staff), 403)
        assert_problem(await client.post(f"{progress}/cancel", headers=admin(infra, unique_tenant())), 404)
        assert_problem(await client.post(f"{RETARGETS}/not-a-uuid/cancel", headers=boss), 422)
        cancelled = await client.post(f"{progress}/cancel", headers=boss)
        assert cancelled.status_code == 200, cancelled.text
        view = cancelled.json()
        assert (view["status"], view["cancelled_by"], view["tickets_updated"]) == ("cancelled", "admin-1", 2)
        assert view["finished_at"] == view["cancelled_at"] is not None
        assert (await client.get(progress, headers=boss)).json() == view
        # Cancelling again answers the same; nothing is left to move.
        assert (await client.post(f"{progress}/cancel", headers=boss)).json() == view
        assert await run_retargets(factory, batch_size=2) == 0
        moved = [await read_ticket(client, staff, ticket) for ticket in concerned]
        assert [minutes_after_creation(ticket, "due_at") for ticket in moved] == [420, 420, 240]

        # A retarget that is done cannot be cancelled.
        _, finished = await _queue_retarget(client, infra, tenant, 3, slower, priority="low")
        await run_retargets(factory, batch_size=2)
        assert_problem(await client.post(f"{finished}/cancel", headers=boss), 409, detail="already done")


async def test_cancelling_waits_for_the_batch_being_moved(infra, scheduler_not_woken):
    app = create_app(_many_settings(infra))
    tenant = unique_tenant()
    boss = admin(infra, tenant)
    async with app_client(app) as client:
        factory = app.state.session_factory
        _, progress = await _queue_retarget(client, infra, tenant, 3, {**URGENT, "resolution_minutes": 90})
        async with factory() as session, session.begin():
            await set_tenant(session, tenant)
            assert await tickets_service.continue_retarget(session, tenant, batch_size=2)
            cancelling = asyncio.create_task(client.post(f"{progress}/cancel", headers=boss))
            await asyncio.sleep(0.5)
            assert not cancelling.done()  # the batch's transaction holds the retarget
        cancelled = (await cancelling).json()
        # The answer counts the batch committed before the cancel took effect.
        assert (cancelled["status"], cancelled["tickets_updated"]) == ("cancelled", 2)


async def test_retargets_list_newest_first_page_by_page(infra, scheduler_not_woken):
    app = create_app(_many_settings(infra))
    tenant = unique_tenant()
    boss = admin(infra, tenant)
    async with app_client(app) as client:
        queued = []
        for priority in ("low", "medium", "high"):
            _, progress = await _queue_retarget(client, infra, tenant, 3, URGENT, priority=priority)
            queued.append(progress.rsplit("/", 1)[1])
        first = (await client.get(RETARGETS, params={"limit": 2}, headers=boss)).json()
        assert [item["id"] for item in first["items"]] == queued[:0:-1]
        second = (
            await client.get(RETARGETS, params={"limit": 2, "cursor": first["next_cursor"]}, headers=boss)
        ).json()
        assert [item["id"] for item in second["items"]] == queued[:1] and second["next_cursor"] is None
        assert_problem(await client.get(RETARGETS, params={"cursor": "nonsense"}, headers=boss), 400)
        assert_problem(
            await client.get(RETARGETS, params={"limit": 201}, headers=boss), 422, fields=("limit",)
        )
