"""The launcher's embedded PostgreSQL: the platform's processes reach it over a Unix socket."""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import quote

import asyncpg
import pytest

from libs.common.db import plain_dsn
from libs.common.launcher import (
    NatsServer,
    PostgresServer,
    Stack,
    accepts_connections,
    free_port,
    service_database_url,
)
from tests.conftest import Infra


@pytest.mark.asyncio(loop_scope="session")
async def test_services_reach_the_embedded_postgres_over_its_unix_socket(infra: Infra) -> None:
    role = "helpdesk_tickets"
    url = service_database_url(infra.admin_url, role, infra.secrets.role_passwords[role])
    connection = await asyncpg.connect(plain_dsn(url))
    try:
        assert await connection.fetchval("SELECT inet_server_addr()") is None  # NULL: not over TCP
        assert await connection.fetchval("SELECT current_user") == role
    finally:
        await connection.close()

    # The port still answers, for psql and other tools.
    password = quote(infra.secrets.pg_password, safe="")
    tcp = f"postgresql://postgres:{password}@127.0.0.1:{infra.postgres.port}/helpdesk?sslmode=disable"
    connection = await asyncpg.connect(tcp)
    try:
        assert await connection.fetchval("SELECT host(inet_server_addr())") == "127.0.0.1"
    finally:
        await connection.close()


def test_a_data_directory_too_deep_for_a_socket_path_keeps_to_tcp(tmp_path: Path) -> None:
    server = PostgresServer(tmp_path / ("d" * 110) / "pg", 55999, "pw")
    assert server.socket_dir is None
    assert "@127.0.0.1:55999/helpdesk" in server.admin_url


def test_a_port_probe_never_mistakes_itself_for_a_server() -> None:
    port = free_port()
    # The hazard: with nothing listening, a socket holding the port "connects" to itself.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as itself:
        itself.bind(("127.0.0.1", port))
        assert itself.connect_ex(("127.0.0.1", port)) == 0
    assert not accepts_connections(port)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert accepts_connections(server.getsockname()[1])


def test_the_stack_notices_when_its_embedded_nats_dies(tmp_path: Path) -> None:
    nats = NatsServer(tmp_path / "nats", free_port())
    nats.start()
    stack = Stack(database_url="", nats_url=nats.url, ports={}, nats=nats)
    try:
        assert stack.exited() is None
        assert nats.process is not None
        nats.process.kill()
        nats.process.wait(10)
        assert stack.exited() == "NATS exited with code -9"  # `helpdesk up` prints it and exits 1
    finally:
        stack.stop()
