"""Analytics service entrypoint: `uvicorn --factory services.analytics.app:create_app`."""

from fastapi import FastAPI

from libs.common.dead_letters import dead_letters_router
from libs.common.service_app import ServiceDefinition, create_service_app
from services.analytics import models
from services.analytics.consumers import subscriptions
from services.analytics.endpoints import router
from services.analytics.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    return create_service_app(
        ServiceDefinition(
            name="analytics",
            description="Analytics: aggregates and dashboards built from events.",
            settings=settings or Settings(),
            routers=[
                router,
                dead_letters_router(
                    "/api/v1/analytics", models.dead_letters, inbox=models.inbox, subscriptions=subscriptions
                ),
            ],
            inbox=models.inbox,
            dead_letters=models.dead_letters,
            subscriptions=subscriptions,
        )
    )
