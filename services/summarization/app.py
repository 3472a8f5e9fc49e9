"""Summarization service entrypoint: `uvicorn --factory services.summarization.app:create_app`."""

from fastapi import FastAPI

from libs.common.dead_letters import dead_letters_router
from libs.common.service_app import ServiceDefinition, create_service_app
from services.summarization import models
from services.summarization.consumers import subscriptions
from services.summarization.events import EVENTS, STREAM
from services.summarization.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    return create_service_app(
        ServiceDefinition(
            name="summarization",
            description="Summarization: AI summaries and categorisation of tickets.",
            settings=settings or Settings(),
            routers=[
                dead_letters_router(
                    "/api/v1/summaries", models.dead_letters, inbox=models.inbox, subscriptions=subscriptions
                )
            ],
            produces_stream=STREAM,
            outbox=models.outbox,
            inbox=models.inbox,
            dead_letters=models.dead_letters,
            subscriptions=subscriptions,
            events=EVENTS,
        )
    )
