"""The shared log setup: one JSON object per line, with the context every line needs."""

import json
import logging
import os

import pytest
import structlog

from libs.common.logging import configure_logging


@pytest.fixture(autouse=True)
def restore_logging_config():
    """configure_logging sets process-wide state; later tests get it back as it was."""
    config, root = structlog.get_config(), logging.getLogger()
    handlers, level, context = root.handlers[:], root.level, structlog.contextvars.get_contextvars()
    yield
    structlog.configure(**config)
    root.handlers[:], root.level = handlers, level
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(**context)


def test_json_lines_carry_service_worker_level_time_and_bound_context(capsys):
    configure_logging("tickets", level="INFO", fmt="json")
    try:
        structlog.contextvars.bind_contextvars(request_id="req-42")
        structlog.get_logger().info("ticket_created", ticket_id="t-1", subject="엘리베이터 고장")
        structlog.get_logger().debug("not_shown_at_info")
        logging.getLogger("some.library").warning("from stdlib %s", "logging")
    finally:
        structlog.contextvars.unbind_contextvars("request_id")
    first, second = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert first["event"] == "ticket_created" and first["subject"] == "엘리베이터 고장"
    assert first["service"] == "tickets" and first["pid"] == os.getpid()
    assert first["level"] == "info" and first["request_id"] == "req-42"
    assert first["timestamp"].endswith("Z")
    # Libraries logging through the standard library come out in the same shape.
    assert second["event"] == "from stdlib logging" and second["level"] == "warning"
    assert second["service"] == "tickets"


WRITER = """
import structlog
from libs.common.logging import configure_logging
configure_logging("probe", "INFO", "json")
log = structlog.get_logger()
for n in range(200):
    log.error("boom", n=n, traceback="x" * 20_000)  # a long line, as a traceback makes
"""


def test_processes_sharing_stdout_never_split_each_others_lines(tmp_path):
    """A service's workers (and, in `helpdesk up`, every process) write to one inherited stdout:
    each line must leave in one write, or another process's line lands in the middle of it."""
    import subprocess
    import sys

    output = tmp_path / "shared.log"
    with output.open("ab") as shared:
        writers = [
            subprocess.Popen([sys.executable, "-c", WRITER], stdout=shared, cwd=os.getcwd()) for _ in range(3)
        ]
        assert [writer.wait(60) for writer in writers] == [0, 0, 0]
    lines = output.read_text().splitlines()
    assert len(lines) == 600
    assert all(json.loads(line)["event"] == "boom" for line in lines)
