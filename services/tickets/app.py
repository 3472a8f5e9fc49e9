"""Tickets service entrypoint: `uvicorn --factory services.tickets.app:create_app`."""

from fastapi import FastAPI

from libs.common.dead_letters import dead_letters_router
from libs.common.service_app import ServiceDefinition, create_service_app
from services.tickets import models
from services.tickets.attachments.endpoints import close_blob_store
from services.tickets.attachments.endpoints import router as attachments_router
from services.tickets.attachments.sweeper import run_blob_sweeper
from services.tickets.consumers import subscriptions
from services.tickets.endpoints import router, settings_router
from services.tickets.events import EVENTS, STREAM
from services.tickets.settings import Settings
from services.tickets.sla.endpoints import router as sla_router
from services.tickets.sla.scheduler import run_sla_scheduler


def create_app(settings: Settings | None = None) -> FastAPI:
    return create_service_app(
        ServiceDefinition(
            name="tickets",
            description="Tickets: the ticket domain of the helpdesk.",
            settings=settings or Settings(),
            # Fixed paths first: the tickets router's `/{ticket_id}` routes would shadow them
            # (dead-letters included: it answered 422 "ticket_id is not a UUID" after `router`).
            routers=[
                sla_router,
                settings_router,
                attachments_router,
                dead_letters_router(
                    "/api/v1/tickets", models.dead_letters, inbox=models.inbox, subscriptions=subscriptions
                ),
                router,
            ],
            produces_stream=STREAM,
            outbox=models.outbox,
            inbox=models.inbox,
            dead_letters=models.dead_letters,
            background_jobs=[run_sla_scheduler, run_blob_sweeper, close_blob_store],
            subscriptions=subscriptions,
            events=EVENTS,
        )
    )
