"""The whole mesh for real: `helpdesk up` as a subprocess on the session's PostgreSQL and NATS."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from libs.common.launcher import free_port
from libs.common.stack import STACK

DEMO_PASSWORD = "demo-password-for-e2e"


@dataclass
class RunningStack:
    process: subprocess.Popen
    home: Path
    description: dict
    ports: dict[str, int]

    @property
    def gateway(self) -> str:
        return self.description["gateway"]

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"


def helpdesk_env(infra, home: Path, ports: dict[str, int]) -> dict[str, str]:
    env = {
        **os.environ,
        "HELPDESK_HOME": str(home),
        "DATABASE_URL": infra.admin_url,
        "NATS_URL": infra.nats_url,
        "HELPDESK_DEMO_PASSWORD": DEMO_PASSWORD,
        "HELPDESK_ENV": "test",
        "HELPDESK_LOG_FORMAT": "json",
    }
    env.update({spec.port_env: str(ports[spec.name]) for spec in STACK})
    return env


def start_helpdesk_up(infra, home: Path, ports: dict[str, int], *args: str) -> subprocess.Popen:
    home.mkdir(parents=True, exist_ok=True)
    # Same role passwords as the in-process tests, so `helpdesk up` re-provisioning changes nothing.
    shutil.copy(infra.workdir / "secrets.json", home / "secrets.json")
    return subprocess.Popen(
        [sys.executable, "-m", "libs.cli.main", "up", "--quiet", *args],
        env=helpdesk_env(infra, home, ports),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


# Module scope: the stack's tickets/analytics/... processes consume the same durables as the
# in-process apps of later modules; left running, they would take those modules' events with
# production back-off (this made the summary dead-letter test time out on CI).
@pytest.fixture(scope="module")
def running_stack(infra) -> Iterator[RunningStack]:
    home = infra.workdir / "e2e-home"
    ports = {spec.name: free_port() for spec in STACK}
    process = start_helpdesk_up(infra, home, ports)
    stack_file = home / "stack.json"
    deadline = time.monotonic() + 180
    while not stack_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            output = process.stdout.read() if process.stdout else ""
            pytest.fail(f"helpdesk up did not come up (exit {process.returncode}):\n{output[-4000:]}")
        time.sleep(0.3)
    stack = RunningStack(process, home, json.loads(stack_file.read_text()), ports)
    yield stack
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("helpdesk up did not stop within 60 s of SIGTERM")
    assert code == 0, f"helpdesk up exited with {code}"
    for name, port in ports.items():
        from libs.common.launcher import port_is_free

        assert port_is_free(port), f"{name} still listening on {port} after shutdown"
