"""`helpdesk`: run the platform locally, migrate, manage users, run benchmarks."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

from libs.common import migrations
from libs.common.launcher import (
    NatsServer,
    PortInUseError,
    PostgresServer,
    Secrets,
    Stack,
    launcher_running,
    require_free_port,
    service_environment,
    start_service,
    stop_leftovers,
    wait_ready,
)
from libs.common.settings import CommonSettings
from libs.common.stack import DEFAULT_NATS_PORT, DEFAULT_PG_PORT, STACK


def home() -> Path:
    return Path(os.environ.get("HELPDESK_HOME", ".helpdesk")).resolve()


def pg_port() -> int:
    return int(os.environ.get("HELPDESK_PG_PORT", DEFAULT_PG_PORT))


def nats_port() -> int:
    return int(os.environ.get("HELPDESK_NATS_PORT", DEFAULT_NATS_PORT))


def service_ports() -> dict[str, int]:
    return {spec.name: int(os.environ.get(spec.port_env, spec.port)) for spec in STACK}


def admin_database_url(secrets_: Secrets) -> str:
    """`DATABASE_URL` when set (external PostgreSQL), else the embedded server's superuser."""
    return (
        os.environ.get("DATABASE_URL")
        or PostgresServer(home() / "pg", pg_port(), secrets_.pg_password).admin_url
    )


def role_passwords(secrets_: Secrets) -> dict[str, tuple[str, str]]:
    """schema -> (role, password); `HELPDESK_<NAME>_DB_PASSWORD` overrides the generated one.

    In production every password must come from the environment: a generated one would reset
    a running service's role and lock it out.
    """
    production = os.environ.get("HELPDESK_ENV") == "production"
    result = {}
    for spec in STACK:
        variable = f"HELPDESK_{spec.name.upper()}_DB_PASSWORD"
        password = os.environ.get(variable)
        if not password and production:
            raise SystemExit(f"helpdesk migrate: {variable} must be set in production")
        result[spec.schema] = (spec.role, password or secrets_.role_passwords[spec.role])
    return result


def migrate(admin_url: str, secrets_: Secrets) -> None:
    """Create schemas and roles, run every service's migrations, then grant on the new tables."""
    roles = role_passwords(secrets_)
    asyncio.run(migrations.provision_roles(admin_url, roles))
    for spec in STACK:
        migrations.upgrade(admin_url, spec.migrations, spec.schema)
    asyncio.run(migrations.provision_roles(admin_url, roles))


async def _create_user(admin_url: str, tenant: str, email: str, password: str, role: str) -> str:
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    from gateway.identity import create_user
    from libs.common.db import async_url

    engine = create_async_engine(async_url(admin_url))
    try:
        async with AsyncSession(engine) as session, session.begin():
            user_id = await create_user(session, tenant=tenant, email=email, password=password, role=role)
        return str(user_id)
    finally:
        await engine.dispose()


async def _user_exists(admin_url: str, email: str) -> bool:
    import asyncpg

    from libs.common.db import plain_dsn

    conn = await asyncpg.connect(plain_dsn(admin_url))
    try:
        return bool(await conn.fetchval("SELECT 1 FROM identity.users WHERE lower(email) = lower($1)", email))
    finally:
        await conn.close()


def demo_passwords(secrets_: Secrets) -> dict[str, str]:
    """HELPDESK_DEMO_PASSWORD for all three, else the one generated once with the other secrets."""
    password = os.environ.get("HELPDESK_DEMO_PASSWORD") or secrets_.demo_password
    return {role: password for role in ("admin", "agent", "requester")}


def seed_demo(stack: Stack, admin_url: str, secrets_: Secrets) -> dict:
    from libs.cli.demo import DEMO_TENANT, DEMO_USERS, seed_demo_tickets

    passwords = demo_passwords(secrets_)
    users = {role: {"email": email, "password": passwords[role]} for role, email in DEMO_USERS.items()}
    if asyncio.run(_user_exists(admin_url, DEMO_USERS["admin"])):
        print("demo tenant already seeded")
    else:
        for role, email in DEMO_USERS.items():
            asyncio.run(_create_user(admin_url, DEMO_TENANT, email, passwords[role], role))
        created = seed_demo_tickets(stack.url("gateway"), passwords)
        print(f"seeded tenant '{DEMO_TENANT}' with {len(DEMO_USERS)} users and {created} tickets")
    return {"tenant": DEMO_TENANT, "users": users}


def seed_bench_agent(admin_url: str, secrets_: Secrets) -> dict:
    """The benchmark's agent in tenant `bench` (created once, with the demo password)."""
    from libs.cli.demo import BENCH_AGENT, BENCH_TENANT

    password = demo_passwords(secrets_)["agent"]
    if not asyncio.run(_user_exists(admin_url, BENCH_AGENT)):
        asyncio.run(_create_user(admin_url, BENCH_TENANT, BENCH_AGENT, password, "agent"))
    return {"tenant": BENCH_TENANT, "users": {"agent": {"email": BENCH_AGENT, "password": password}}}


PROCESSES_FILE = "processes.json"  # in the data directory while a stack runs (Stack.record)


def cmd_up(args: argparse.Namespace) -> int:
    data_dir = home()
    data_dir.mkdir(parents=True, exist_ok=True)
    secrets_path = data_dir / "secrets.json"
    secrets_ = Secrets.load_or_create(secrets_path)
    settings = CommonSettings()
    external_db, external_nats = bool(os.environ.get("DATABASE_URL")), bool(os.environ.get("NATS_URL"))
    ports = service_ports()
    processes_file = data_dir / PROCESSES_FILE
    if (launcher := launcher_running(processes_file)) is not None:
        print(
            f"helpdesk up: a stack from {data_dir} already runs (launcher pid {launcher});"
            " stop it with Ctrl-C where it runs, or `helpdesk down`",
            file=sys.stderr,
        )
        return 3
    if stopped := stop_leftovers(processes_file):
        print(f"stopped what a launcher that died had left running: {', '.join(stopped)}")
    try:
        # Check every port before starting anything, so a clash fails fast and names the port.
        if not external_db:
            require_free_port(pg_port(), "PostgreSQL")
        if not external_nats:
            require_free_port(nats_port(), "NATS")
        for name, port in ports.items():
            require_free_port(port, name)
    except PortInUseError as exc:
        print(f"helpdesk up: {exc}", file=sys.stderr)
        return 3

    stack = Stack(database_url="", nats_url="", ports=ports)
    stopping = threading.Event()

    def request_stop(signum, _frame) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    exit_code = 0
    try:
        if external_db:
            stack.database_url = os.environ["DATABASE_URL"]
        else:
            stack.postgres = PostgresServer(data_dir / "pg", pg_port(), secrets_.pg_password)
            stack.postgres.start()
            stack.record(processes_file)
            stack.database_url = stack.postgres.admin_url
        if external_nats:
            stack.nats_url = os.environ["NATS_URL"]
        else:
            stack.nats = NatsServer(data_dir / "nats", nats_port(), sync_interval=settings.nats_sync_interval)
            stack.nats.start()
            stack.record(processes_file)
            stack.nats_url = stack.nats.url
        print("running migrations ...")
        migrate(stack.database_url, secrets_)
        log_dir = data_dir / "logs"
        log_dir.mkdir(exist_ok=True)
        for spec in STACK:
            env = service_environment(stack, spec, secrets_, {"HELPDESK_ENV": settings.env})
            stack.services.append(start_service(stack, spec, env, log_dir if args.quiet else None))
            stack.record(processes_file)
        for service in stack.services:
            wait_ready(service)
        description = stack.describe()
        if args.demo:
            description["demo"] = seed_demo(stack, stack.database_url, secrets_)
            description["bench"] = seed_bench_agent(stack.database_url, secrets_)
        (data_dir / "stack.json").write_text(json.dumps(description, indent=2))
        print_banner(description, data_dir)
        while not stopping.is_set():
            if exited := stack.exited():
                print(f"helpdesk up: {exited}", file=sys.stderr)
                exit_code = 1
                stopping.set()
            stopping.wait(0.5)
    except PortInUseError as exc:
        print(f"helpdesk up: {exc}", file=sys.stderr)
        exit_code = 3
    except Exception as exc:
        print(f"helpdesk up: {exc}", file=sys.stderr)
        exit_code = 1
    finally:
        print("stopping ...")
        stack.stop()
        (data_dir / "stack.json").unlink(missing_ok=True)
        processes_file.unlink(missing_ok=True)
        print("stopped")
    return exit_code


def cmd_down(_: argparse.Namespace) -> int:
    """Stop the stack running from this data directory: ask its launcher, or, if the launcher
    died, stop what it had started itself."""
    data_dir = home()
    processes_file = data_dir / PROCESSES_FILE
    launcher = launcher_running(processes_file)
    if launcher is not None:
        os.kill(launcher, signal.SIGTERM)
        deadline = time.monotonic() + 180
        while launcher_running(processes_file) == launcher and time.monotonic() < deadline:
            time.sleep(0.2)
        if launcher_running(processes_file) == launcher:
            print(f"helpdesk down: the launcher (pid {launcher}) is still stopping", file=sys.stderr)
            return 1
        print(f"stopped the stack of launcher pid {launcher}")
        return 0
    stopped = stop_leftovers(processes_file)
    print(f"stopped: {', '.join(stopped)}" if stopped else f"no stack runs from {data_dir}")
    return 0


def print_banner(description: dict, data_dir: Path) -> None:
    print("\nhelpdesk is running")
    print(f"  gateway        {description['gateway']}   (API docs: {description['docs']})")
    for name, url in description["services"].items():
        print(f"  {name:<14} {url}")
    print(f"  PostgreSQL     {description['database_url']}")
    print(f"  NATS           {description['nats_url']}")
    if "demo" in description:
        print(f"\ndemo tenant '{description['demo']['tenant']}':")
        for role, user in description["demo"]["users"].items():
            print(f"  {role:<10} {user['email']:<22} password: {user['password']}")
    print(f"\nstack description: {data_dir / 'stack.json'}; press Ctrl-C to stop\n", flush=True)


def cmd_migrate(_: argparse.Namespace) -> int:
    secrets_ = Secrets.load_or_create(home() / "secrets.json")
    migrate(admin_database_url(secrets_), secrets_)
    print("migrations applied")
    return 0


def cmd_users_create(args: argparse.Namespace) -> int:
    secrets_ = Secrets.load_or_create(home() / "secrets.json")
    try:
        user_id = asyncio.run(
            _create_user(admin_database_url(secrets_), args.tenant, args.email, args.password, args.role)
        )
    except ValueError as exc:
        print(f"helpdesk users create: {exc}", file=sys.stderr)
        return 2
    print(f"created user {args.email} ({args.role}) in tenant {args.tenant}: {user_id}")
    return 0


def bench_arguments(args: argparse.Namespace) -> list[str]:
    """The benchmark's own command line. Options given after the scenario name arrive in
    `args.extra` (argparse's REMAINDER takes everything there) and come last, so they win."""
    if args.scenario == "tickets-api":
        seconds = 20.0 if args.seconds is None else args.seconds
        concurrency = 32 if args.concurrency is None else args.concurrency
        return ["--seconds", str(seconds), "--concurrency", str(concurrency), *args.extra]
    # tickets-scale: its own defaults (8 clients, 1M tickets) unless given; it starts its own servers.
    argv = ["--tickets", str(args.tickets)]
    if args.seconds is not None:
        argv += ["--seconds", str(args.seconds)]
    if args.concurrency is not None:
        argv += ["--concurrency", str(args.concurrency)]
    return argv + args.extra


def cmd_bench(args: argparse.Namespace) -> int:
    if args.scenario == "tickets-api":
        from bench.tickets_api import main as bench_main

        return bench_main(bench_arguments(args))
    from bench.tickets_scale import main as scale_main

    return scale_main(bench_arguments(args))


def cmd_events_schemas(args: argparse.Namespace) -> int:
    from libs.cli import event_schemas

    out_dir = Path(args.out)
    if args.check:
        stale = event_schemas.differences(out_dir)
        for name in stale:
            print(f"out of date: {out_dir / name}", file=sys.stderr)
        return 1 if stale else 0
    for name in event_schemas.write(out_dir):
        print(f"updated {out_dir / name}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="helpdesk", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="run the whole platform locally")
    up.add_argument(
        "--demo", action=argparse.BooleanOptionalAction, default=True, help="seed the demo tenant"
    )
    up.add_argument(
        "--quiet", action="store_true", help="send service logs to .helpdesk/logs/ instead of stdout"
    )
    up.set_defaults(func=cmd_up)

    commands.add_parser("down", help="stop the stack `helpdesk up` runs from this directory").set_defaults(
        func=cmd_down
    )

    commands.add_parser("migrate", help="create roles and schemas, run all migrations").set_defaults(
        func=cmd_migrate
    )

    users = commands.add_parser("users", help="manage users").add_subparsers(
        dest="users_command", required=True
    )
    create = users.add_parser("create", help="create a user (and the tenant if new)")
    create.add_argument("--tenant", required=True)
    create.add_argument("--email", required=True)
    create.add_argument("--password", required=True)
    create.add_argument("--role", required=True, choices=["admin", "agent", "requester", "service"])
    create.set_defaults(func=cmd_users_create)

    bench = commands.add_parser(
        "bench",
        help="run a benchmark (tickets-api: against the running stack; tickets-scale: on its own servers)",
    )
    bench.add_argument("scenario", choices=["tickets-api", "tickets-scale"])
    bench.add_argument("--seconds", type=float, default=None, help="measured seconds per phase (default 20)")
    bench.add_argument(
        "--concurrency", type=int, default=None, help="clients (tickets-api: 32, tickets-scale: 8)"
    )
    bench.add_argument("--tickets", type=int, default=1_000_000, help="tickets-scale: tickets to seed")
    bench.add_argument(
        "extra",
        nargs=argparse.REMAINDER,
        help="more options (python -m bench.tickets_api -h, python -m bench.tickets_scale -h)",
    )
    bench.set_defaults(func=cmd_bench)

    events = commands.add_parser("events", help="the published event contract").add_subparsers(
        dest="events_command", required=True
    )
    schemas = events.add_parser("schemas", help="write the payload JSON Schemas and AsyncAPI to docs/events")
    schemas.add_argument("--out", default="docs/events")
    schemas.add_argument("--check", action="store_true", help="only report files that are out of date")
    schemas.set_defaults(func=cmd_events_schemas)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
