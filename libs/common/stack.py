"""The catalogue of processes that make up the platform (names, schemas, ports, entrypoints)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ProcessSpec:
    name: str
    schema: str
    app_factory: str  # uvicorn --factory target
    migrations: str  # folder relative to the repository root
    port: int
    # Local default; `HELPDESK_<NAME>_WORKERS` overrides. The tickets service carries the hot
    # request path and is CPU-bound on one core, so it gets a second process on a laptop.
    workers: int = 1

    @property
    def role(self) -> str:
        return f"helpdesk_{self.name}"

    @property
    def port_env(self) -> str:
        return f"HELPDESK_{self.name.upper()}_PORT"

    @property
    def workers_env(self) -> str:
        return f"HELPDESK_{self.name.upper()}_WORKERS"


STACK: tuple[ProcessSpec, ...] = (
    ProcessSpec("gateway", "identity", "gateway.app:create_app", "gateway/migrations", 8080),
    ProcessSpec(
        "tickets",
        "tickets",
        "services.tickets.app:create_app",
        "services/tickets/migrations",
        8101,
        workers=2,
    ),
    ProcessSpec(
        "summarization",
        "summarization",
        "services.summarization.app:create_app",
        "services/summarization/migrations",
        8102,
    ),
    ProcessSpec(
        "notifications",
        "notifications",
        "services.notifications.app:create_app",
        "services/notifications/migrations",
        8103,
    ),
    ProcessSpec(
        "analytics", "analytics", "services.analytics.app:create_app", "services/analytics/migrations", 8104
    ),
)
SERVICES = {spec.name: spec for spec in STACK}
DEFAULT_PG_PORT = 55432
DEFAULT_NATS_PORT = 54222
