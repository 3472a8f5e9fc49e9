"""structlog setup: JSON to stdout, or a console renderer when attached to a terminal."""

from __future__ import annotations

import logging
import os
import sys

import structlog


def configure_logging(service: str, level: str = "INFO", fmt: str = "auto") -> None:
    """Route structlog and stdlib logging through one renderer, with contextvars bound per request/event."""
    use_console = fmt == "console" or (fmt == "auto" and sys.stdout.isatty())
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer = structlog.dev.ConsoleRenderer() if use_console else structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        # One write per line (print() writes the line and its newline apart): processes sharing
        # stdout (workers, `helpdesk up`) then never split each other's lines.
        logger_factory=structlog.WriteLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=shared,
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Access logs are replaced by our own request log line; nats reconnect chatter stays at WARNING.
    logging.getLogger("uvicorn.access").disabled = True
    # pid: which worker of a multi-worker service wrote the line.
    structlog.contextvars.bind_contextvars(service=service, pid=os.getpid())
