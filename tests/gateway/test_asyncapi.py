"""The gateway's merged AsyncAPI document, from real service apps on real ports."""

from __future__ import annotations

import pytest

from gateway.app import create_app
from libs.common.asyncapi import iter_refs, resolve_pointer
from services.summarization.app import create_app as create_summarization_app
from services.summarization.events import EVENTS as SUMMARIZATION_EVENTS
from services.summarization.settings import Settings as SummarizationSettings
from services.tickets.app import create_app as create_tickets_app
from services.tickets.events import EVENTS as TICKETS_EVENTS
from services.tickets.settings import Settings as TicketsSettings
from tests.conftest import app_client, settings_for
from tests.gateway.conftest import Gateway, gateway_settings, serving

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_merged_asyncapi_has_every_reachable_services_events(infra) -> None:
    tickets = create_tickets_app(settings_for(infra, TicketsSettings, "tickets"))
    summarization = create_summarization_app(settings_for(infra, SummarizationSettings, "summarization"))
    async with serving(tickets) as tickets_url, serving(summarization) as summarization_url:
        # notifications and analytics stay down (nothing listens on their ports).
        settings = gateway_settings(infra, tickets_url, summarization_url=summarization_url)
        async with app_client(create_app(settings)) as client:
            response = await client.get("/asyncapi.json")  # public: no token
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    document = response.json()
    assert document["asyncapi"] == "3.0.0"
    expected = {f"tickets.{a}.{e}" for a, e in TICKETS_EVENTS} | {
        f"summarization.{a}.{e}" for a, e in SUMMARIZATION_EVENTS
    }
    assert set(document["channels"]) == expected
    channel = document["channels"]["summarization.summary.completed"]
    assert channel["address"] == "summarization.{tenant}.summary.completed"
    assert document["operations"]["tickets.ticket.created.send"]["action"] == "send"
    host = infra.nats_url.removeprefix("nats://")
    assert document["servers"]["nats"] == {**document["servers"]["nats"], "host": host, "protocol": "nats"}
    for ref in iter_refs(document):
        resolve_pointer(document, ref)
    properties = document["components"]["schemas"]["SummaryCompleted"]["properties"]
    assert {"ticket_id", "summary", "key_points", "suggested_priority", "confidence"} <= set(properties)


async def test_merged_asyncapi_tolerates_services_that_are_down(gateway: Gateway) -> None:
    # The shared gateway's "tickets" is an echo app without /asyncapi.json; the others are down.
    response = await gateway.client.get("/asyncapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["asyncapi"] == "3.0.0"
    assert document["channels"] == {} and document["operations"] == {}


async def test_asyncapi_is_not_part_of_the_openapi_document(gateway: Gateway) -> None:
    document = (await gateway.client.get("/openapi.json")).json()
    assert "/asyncapi.json" not in document["paths"]
