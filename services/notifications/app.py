"""Notifications service entrypoint: `uvicorn --factory services.notifications.app:create_app`."""

from fastapi import FastAPI

from libs.common.dead_letters import dead_letters_router
from libs.common.service_app import ServiceDefinition, create_service_app
from services.notifications import models
from services.notifications.consumers import subscriptions
from services.notifications.events import STREAM
from services.notifications.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    return create_service_app(
        ServiceDefinition(
            name="notifications",
            description="Notifications: email, webhooks and the live stream.",
            settings=settings or Settings(),
            routers=[
                dead_letters_router(
                    "/api/v1/notifications",
                    models.dead_letters,
                    inbox=models.inbox,
                    subscriptions=subscriptions,
                )
            ],
            produces_stream=STREAM,
            outbox=models.outbox,
            inbox=models.inbox,
            dead_letters=models.dead_letters,
            subscriptions=subscriptions,
        )
    )
