"""Tickets service entrypoint: `uvicorn --factory services.tickets.app:create_app`."""

from fastapi import FastAPI

from libs.common.dead_letters import dead_letters_router
from libs.common.service_app import ServiceDefinition, create_service_app
from services.tickets import models
from services.tickets.endpoints import router, settings_router
from services.tickets.events import STREAM
from services.tickets.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    return create_service_app(
        ServiceDefinition(
            name="tickets",
            description="Tickets: the ticket domain of the helpdesk.",
            settings=settings or Settings(),
            # Fixed paths first: /api/v1/tickets/{ticket_id} would take /api/v1/tickets/dead-letters.
            routers=[settings_router, dead_letters_router("/api/v1/tickets", models.dead_letters), router],
            produces_stream=STREAM,
            outbox=models.outbox,
            inbox=models.inbox,
            dead_letters=models.dead_letters,
        )
    )
