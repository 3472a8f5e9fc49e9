"""The CloudEvents 1.0 envelope, subject naming and the stream catalogue every service shares."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import structlog
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError
from pydantic import BaseModel, ConfigDict, Field

from libs.common.ids import new_id
from libs.common.settings import CommonSettings

log = structlog.get_logger()

# One stream per producing service (ARCHITECTURE.md "Events").
STREAMS: dict[str, str] = {
    "TICKETS": "tickets",
    "SUMMARIZATION": "summarization",
    "NOTIFICATIONS": "notifications",
}
_TOKEN = re.compile(r"^[a-z0-9_-]+$")


class CloudEvent(BaseModel):
    """Structured-mode CloudEvents 1.0 with our `tenant` and tracing extensions."""

    model_config = ConfigDict(extra="allow")

    specversion: str = "1.0"
    id: UUID
    source: str
    type: str
    subject: str
    time: datetime
    datacontenttype: str = "application/json"
    data: dict[str, Any] = Field(default_factory=dict)
    tenant: str
    correlationid: str | None = None
    traceparent: str | None = None


def nats_subject(service: str, tenant: str, aggregate: str, event: str) -> str:
    """`<service>.<tenant>.<aggregate>.<event>`, e.g. tickets.acme.ticket.created."""
    for token in (service, tenant, aggregate, event):
        if not _TOKEN.match(token):
            raise ValueError(f"invalid subject token: {token!r}")
    return f"{service}.{tenant}.{aggregate}.{event}"


def build_event(
    *,
    service: str,
    tenant: str,
    aggregate: str,
    event: str,
    aggregate_id: str,
    data: BaseModel,
    correlation_id: str | None = None,
) -> tuple[str, CloudEvent]:
    """Wrap a payload model in the envelope; returns (NATS subject, event)."""
    if correlation_id is None:
        correlation_id = structlog.contextvars.get_contextvars().get("request_id")
    envelope = CloudEvent(
        id=new_id(),
        source=f"/helpdesk/{service}",
        type=f"helpdesk.{service}.{aggregate}.{event}.v1",
        subject=str(aggregate_id),
        time=datetime.now(UTC),
        data=data.model_dump(mode="json"),
        tenant=tenant,
        correlationid=correlation_id,
    )
    return nats_subject(service, tenant, aggregate, event), envelope


def stream_config(name: str, settings: CommonSettings) -> StreamConfig:
    return StreamConfig(
        name=name,
        subjects=[f"{STREAMS[name]}.>"],
        storage=StorageType.FILE,
        num_replicas=settings.nats_stream_replicas,
        duplicate_window=float(settings.nats_duplicate_window_s),
        max_age=float(30 * 24 * 3600),
    )


async def ensure_stream(js: JetStreamContext, name: str, settings: CommonSettings) -> None:
    """Create the stream, or bring an existing one to the wanted config (idempotent)."""
    config = stream_config(name, settings)
    try:
        await js.stream_info(name)
    except NotFoundError:
        try:
            await js.add_stream(config)
            log.info("stream_created", stream=name)
            return
        except BadRequestError:
            pass  # another replica created it first
    await js.update_stream(config)
