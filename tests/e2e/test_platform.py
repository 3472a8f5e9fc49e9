"""End to end through the gateway: log in, create a ticket, see analytics count it."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import asyncpg
import httpx
import pytest

from libs.common.db import plain_dsn
from libs.common.launcher import free_port
from libs.common.stack import STACK
from tests.conftest import wait_until
from tests.e2e.conftest import DEMO_PASSWORD, helpdesk_env, start_helpdesk_up

pytestmark = pytest.mark.e2e


async def login(client: httpx.AsyncClient, email: str, password: str = DEMO_PASSWORD) -> dict[str, str]:
    response = await client.post("/api/v1/auth/token", data={"username": email, "password": password})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "bearer" and body["expires_in"] > 0
    return {"Authorization": f"Bearer {body['access_token']}"}


async def test_stack_json_describes_every_process(running_stack):
    description = running_stack.description
    assert description["gateway"] == running_stack.url("gateway")
    assert set(description["services"]) == {"tickets", "summarization", "notifications", "analytics"}
    assert description["demo"]["tenant"] == "demo"
    assert description["bench"] == {
        "tenant": "bench",
        "users": {"agent": {"email": "agent@bench.test", "password": DEMO_PASSWORD}},
    }
    async with httpx.AsyncClient() as client:
        for spec in STACK:
            url = running_stack.url(spec.name)
            assert (await client.get(f"{url}/healthz")).status_code == 200
            assert (await client.get(f"{url}/readyz")).status_code == 200
            assert "helpdesk_http_request_duration_seconds" in (await client.get(f"{url}/metrics")).text


async def test_demo_tenant_is_seeded_with_tickets(running_stack):
    async with httpx.AsyncClient(base_url=running_stack.gateway) as client:
        headers = await login(client, "agent@demo.test")
        page = (await client.get("/api/v1/tickets", params={"limit": 200}, headers=headers)).json()
    subjects = [t["subject"] for t in page["items"]]
    assert len(subjects) >= 50
    assert any("엘리베이터" in s for s in subjects) and any("Elevator" in s for s in subjects)


async def test_the_benchmarks_agent_creates_tickets_outside_the_demo_tenant(running_stack):
    async with httpx.AsyncClient(base_url=running_stack.gateway, timeout=10) as client:
        bench, demo = await login(client, "agent@bench.test"), await login(client, "agent@demo.test")
        demo_before = (await client.get("/api/v1/tickets", params={"limit": 200}, headers=demo)).json()
        created = await client.post("/api/v1/tickets", json={"subject": "bench load"}, headers=bench)
        assert created.status_code == 201, created.text
        ticket = created.json()["id"]
        assert (await client.get(f"/api/v1/tickets/{ticket}", headers=bench)).status_code == 200
        assert (await client.get(f"/api/v1/tickets/{ticket}", headers=demo)).status_code == 404
        demo_after = (await client.get("/api/v1/tickets", params={"limit": 200}, headers=demo)).json()
    assert demo_after["items"] == demo_before["items"]


async def test_ticket_created_through_the_gateway_is_counted_by_analytics(running_stack):
    async with httpx.AsyncClient(base_url=running_stack.gateway, timeout=10) as client:
        headers = await login(client, "agent@demo.test")
        before = (await client.get("/api/v1/analytics/overview", headers=headers)).json()["tickets_created"]
        created = await client.post(
            "/api/v1/tickets",
            json={"subject": "지하 주차장 누수", "description": "B2 water leak", "priority": "high"},
            headers=headers,
        )
        assert created.status_code == 201, created.text
        assert created.headers["x-request-id"]
        read = await client.get(f"/api/v1/tickets/{created.json()['id']}", headers=headers)
        assert read.json()["subject"] == "지하 주차장 누수"
        # A cached copy revalidated through the gateway: 304, no body.
        cached = headers | {"If-None-Match": read.headers["etag"], "Accept-Encoding": "gzip"}
        revalidated = await client.get(f"/api/v1/tickets/{created.json()['id']}", headers=cached)
        assert revalidated.status_code == 304 and revalidated.content == b""
        assert revalidated.headers["etag"] == read.headers["etag"]

        async def counted() -> bool:
            overview = (await client.get("/api/v1/analytics/overview", headers=headers)).json()
            return overview["tickets_created"] == before + 1

        await wait_until(counted, timeout=20)


async def test_summarization_and_notifications_receive_ticket_events(running_stack, infra):
    async with httpx.AsyncClient(base_url=running_stack.gateway, timeout=10) as client:
        headers = await login(client, "requester@demo.test")
        created = await client.post("/api/v1/tickets", json={"subject": "Heating broken"}, headers=headers)
    ticket_id = created.json()["id"]

    async def recorded_by(schema: str):
        conn = await asyncpg.connect(plain_dsn(infra.admin_url))
        try:
            return await conn.fetchval(
                f"SELECT count(*) FROM {schema}.received_events WHERE aggregate_id = $1", ticket_id
            )
        finally:
            await conn.close()

    for schema in ("summarization", "notifications"):
        await wait_until(lambda schema=schema: recorded_by(schema), timeout=20)
        assert await recorded_by(schema) == 1


async def test_requester_cannot_read_dashboards_and_tenants_are_isolated(running_stack, infra):
    async with httpx.AsyncClient(base_url=running_stack.gateway, timeout=10) as client:
        requester = await login(client, "requester@demo.test")
        assert (await client.get("/api/v1/analytics/overview", headers=requester)).status_code == 403
        agent = await login(client, "agent@demo.test")
        ticket = (await client.post("/api/v1/tickets", json={"subject": "demo only"}, headers=agent)).json()

    env = {"HELPDESK_HOME": str(running_stack.home), "DATABASE_URL": infra.admin_url}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "libs.cli.main",
            "users",
            "create",
            "--tenant",
            "other-co",
            "--email",
            "boss@other.test",
            "--password",
            "other-password-1",
            "--role",
            "admin",
        ],
        check=True,
        env={**os.environ, **env},
        capture_output=True,
    )
    async with httpx.AsyncClient(base_url=running_stack.gateway, timeout=10) as client:
        other = await login(client, "boss@other.test", "other-password-1")
        response = await client.get(f"/api/v1/tickets/{ticket['id']}", headers=other)
        assert response.status_code == 404
        spoofed = await client.get(
            f"/api/v1/tickets/{ticket['id']}",
            headers=other | {"X-Tenant-Id": "demo", "X-User-Roles": "admin"},
        )
        assert spoofed.status_code == 404


def test_helpdesk_up_names_a_port_that_is_taken(infra, tmp_path):
    import socket

    ports = {spec.name: free_port() for spec in STACK}
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", ports["analytics"]))
        blocker.listen()
        process = start_helpdesk_up(infra, tmp_path / "home", ports)
        output, _ = process.communicate(timeout=60)
    assert process.returncode != 0
    assert str(ports["analytics"]) in output and "analytics" in output


# "0": no concurrency limit, all ten creates provably at the database's lock; "1": one per worker
# at the lock, the others waiting their turn in the service when SIGTERM comes.
@pytest.mark.parametrize("limit", ["0", "1"])
async def test_sigterm_with_requests_in_flight_answers_them_all_and_exits_0(infra, tmp_path, limit):
    """Hold the tenant's ticket-number sequence so creates are provably in flight, then SIGTERM."""
    from libs.common.launcher import Secrets, Stack, service_environment, start_service, wait_ready
    from libs.common.stack import SERVICES
    from tests.conftest import auth_headers, unique_tenant

    spec = SERVICES["tickets"]
    ports = {name: free_port() for name in SERVICES}
    stack = Stack(database_url=infra.admin_url, nats_url=infra.nats_url, ports=ports)
    secrets = Secrets.load_or_create(infra.workdir / "secrets.json")
    env = service_environment(stack, spec, secrets, {"HELPDESK_ENV": "test"}) | {
        "HELPDESK_LOG_LEVEL": "WARNING",
        "HELPDESK_MAX_CONCURRENT_REQUESTS": limit,
    }
    service = start_service(stack, spec, env, tmp_path)
    try:
        await asyncio.to_thread(wait_ready, service)
        tenant = unique_tenant("drain")
        headers = auth_headers(infra, tenant, ["agent"])
        async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
            assert (
                await client.post("/api/v1/tickets", json={"subject": "first"}, headers=headers)
            ).status_code == 201
            locker = await asyncpg.connect(plain_dsn(infra.admin_url))
            try:
                transaction = locker.transaction()
                await transaction.start()
                # A (no-op) ALTER SEQUENCE locks out nextval() of the tenant's ticket numbers.
                sequence = await locker.fetchval("SELECT tickets.ticket_number_sequence($1)::text", tenant)
                await locker.execute(f"ALTER SEQUENCE {sequence} NO CYCLE")
                requests = [
                    asyncio.create_task(
                        client.post("/api/v1/tickets", json={"subject": f"in flight {i}"}, headers=headers)
                    )
                    for i in range(10)
                ]

                async def all_waiting_on_the_lock() -> bool:
                    # pg_stat_activity is a per-transaction snapshot: clear it to see the present.
                    await locker.execute("SELECT pg_stat_clear_snapshot()")
                    waiting = await locker.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND application_name = 'helpdesk-tickets'"
                    )
                    return waiting == 10 if limit == "0" else waiting >= 1

                await wait_until(all_waiting_on_the_lock, timeout=15)
                if limit != "0":
                    await asyncio.sleep(1)  # the others reach the service and wait their turn
                service.process.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.5)
                assert service.process.poll() is None  # still draining
                await transaction.rollback()
            finally:
                await locker.close()
            responses = await asyncio.gather(*requests)
        assert [r.status_code for r in responses] == [201] * 10
        started = time.monotonic()
        exit_code = await asyncio.to_thread(service.process.wait, 30)
        assert exit_code == 0
        assert time.monotonic() - started < 30
    finally:
        if service.process.poll() is None:  # a failed assertion must not leave it running
            service.process.kill()


def test_a_stack_left_by_a_killed_launcher_is_stopped_by_the_next_up_and_down_stops_it(infra, tmp_path):
    """SIGKILL of `helpdesk up` leaves its processes running (each in its own session); the next
    `helpdesk up` from the same directory stops them before starting, and `helpdesk down` stops
    a running stack through its launcher."""
    from libs.common.launcher import port_is_free, process_running

    home, ports = tmp_path / "home", {spec.name: free_port() for spec in STACK}

    def came_up(process: subprocess.Popen) -> None:
        deadline = time.monotonic() + 180
        while not (home / "stack.json").exists():
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0][-3000:]
            time.sleep(0.3)

    first = start_helpdesk_up(infra, home, ports)
    came_up(first)
    processes = json.loads((home / "processes.json").read_text())["processes"]
    assert {entry["name"] for entry in processes} == {spec.name for spec in STACK}
    first.kill()
    first.wait(10)
    assert all(process_running(entry["pid"], entry["command"]) for entry in processes)  # orphans now
    (home / "stack.json").unlink()

    second = start_helpdesk_up(infra, home, ports)
    try:
        came_up(second)
        assert not any(process_running(entry["pid"], entry["command"]) for entry in processes)

        def helpdesk(command: str) -> subprocess.CompletedProcess:
            environment = helpdesk_env(infra, home, ports)
            argv = [sys.executable, "-m", "libs.cli.main", command]
            return subprocess.run(argv, env=environment, capture_output=True, text=True, timeout=200)

        again = helpdesk("up")
        assert again.returncode == 3 and "already runs" in again.stderr, again.stderr
        down = helpdesk("down")
        assert down.returncode == 0, down.stdout + down.stderr
        assert second.wait(10) == 0
    finally:
        if second.poll() is None:
            second.kill()
    assert all(port_is_free(port) for port in ports.values())
    assert not (home / "processes.json").exists()
