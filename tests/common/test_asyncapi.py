"""The event contract: AsyncAPI documents, payload JSON Schemas and their committed copy."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from libs.cli import event_schemas
from libs.common.asyncapi import (
    SCHEMA_REF_PREFIX,
    build_asyncapi,
    iter_refs,
    merge_asyncapi,
    resolve_pointer,
    server_host,
)
from libs.common.events import CloudEvent, build_event
from libs.common.service_app import ServiceDefinition, create_service_app
from libs.common.settings import CommonSettings
from services.summarization.events import EVENTS as SUMMARIZATION_EVENTS
from services.summarization.events import SummaryCompleted
from services.tickets.events import EVENTS as TICKETS_EVENTS

CATALOGUES = {"tickets": TICKETS_EVENTS, "summarization": SUMMARIZATION_EVENTS}
REPOSITORY = Path(__file__).resolve().parents[2]
COMPONENT_KEY = re.compile(r"^[\w\d.\-_]+$")  # AsyncAPI 3.0 components keys
PARAMETER_FIELDS = {"description", "enum", "default", "examples", "location"}
MESSAGE_FIELDS = {
    "headers", "payload", "correlationId", "contentType", "name", "title", "summary",
    "description", "tags", "externalDocs", "bindings", "examples", "traits",
}  # fmt: skip


def inline_refs(document: dict[str, Any], node: Any, seen: tuple[str, ...] = ()) -> Any:
    """`node` with every local $ref replaced by what it points at (recursion is an error here)."""
    if isinstance(node, dict):
        if "$ref" in node:
            ref = node["$ref"]
            assert ref not in seen, f"recursive schema {ref}"
            return inline_refs(document, resolve_pointer(document, ref), (*seen, ref))
        return {key: inline_refs(document, value, seen) for key, value in node.items()}
    if isinstance(node, list):
        return [inline_refs(document, item, seen) for item in node]
    return node


def standalone(model: type[BaseModel]) -> Any:
    schema = model.model_json_schema()
    return inline_refs(schema, {key: value for key, value in schema.items() if key != "$defs"})


def assert_is_asyncapi_3(document: dict[str, Any]) -> None:
    """The structural rules of AsyncAPI 3.0 this code relies on (the spec has no Python validator here)."""
    assert document["asyncapi"] == "3.0.0"
    assert document["info"]["title"] and document["info"]["version"]
    for server in document.get("servers", {}).values():
        assert server["protocol"] == "nats" and re.fullmatch(r"[^/:@]+:\d+", server["host"])
    for section in document["components"].values():
        assert all(COMPONENT_KEY.match(key) for key in section)
    for parameter in document["components"]["parameters"].values():
        assert set(parameter) <= PARAMETER_FIELDS
    for message in document["components"]["messages"].values():
        assert set(message) - MESSAGE_FIELDS <= {key for key in message if key.startswith("x-")}
    for channel_id, channel in document["channels"].items():
        placeholders = set(re.findall(r"{(\w+)}", channel["address"]))
        assert placeholders == set(channel.get("parameters", {})), channel_id
        for message in channel["messages"].values():
            assert message["$ref"].startswith("#/components/messages/")
    for operation in document["operations"].values():
        assert operation["action"] in ("send", "receive")
        channel_ref = operation["channel"]["$ref"]
        assert channel_ref.startswith("#/channels/")
        for message in operation["messages"]:
            # A v3 operation may only name messages of its own channel.
            assert message["$ref"].startswith(channel_ref + "/messages/")
    for ref in iter_refs(document):
        resolve_pointer(document, ref)  # KeyError when it dangles


@pytest.mark.parametrize("service", sorted(CATALOGUES))
def test_every_event_has_a_channel_message_and_send_operation(service: str) -> None:
    events = CATALOGUES[service]
    document = build_asyncapi(service, events)
    assert_is_asyncapi_3(document)
    assert len(document["channels"]) == len(events) == len(document["operations"])
    for (aggregate, event), model in events.items():
        key = f"{service}.{aggregate}.{event}"
        channel = document["channels"][key]
        assert channel["address"] == f"{service}.{{tenant}}.{aggregate}.{event}"
        operation = document["operations"][f"{key}.send"]
        assert operation["action"] == "send"
        message = inline_refs(document, operation["messages"][0])
        envelope = message["payload"]
        base, specific = envelope["allOf"]
        assert base == inline_refs(document, {"$ref": SCHEMA_REF_PREFIX + "CloudEvent"})
        assert specific["properties"]["type"]["const"] == f"helpdesk.{service}.{aggregate}.{event}.v1"
        assert specific["properties"]["source"]["const"] == f"/helpdesk/{service}"
        # The payload is exactly the pydantic model's JSON Schema, refs resolved.
        assert specific["properties"]["data"] == standalone(model)
        assert message["headers"]["required"] == ["Nats-Msg-Id"]


def test_envelope_constants_match_what_build_event_produces() -> None:
    payload = SummaryCompleted(
        ticket_id="0190f0f0-0000-7000-8000-000000000001",
        summary="엘리베이터가 3층에 멈춤",
        confidence=0.8,
        provider="extractive",
        model="textrank",
        created_at="2026-11-22T10:00:00Z",
    )
    subject, event = build_event(
        service="summarization",
        tenant="acme",
        aggregate="summary",
        event="completed",
        aggregate_id=str(payload.ticket_id),
        data=payload,
    )
    document = build_asyncapi("summarization", SUMMARIZATION_EVENTS)
    channel = document["channels"]["summarization.summary.completed"]
    assert channel["address"].replace("{tenant}", "acme") == subject
    envelope = document["components"]["schemas"]["SummaryCompletedEvent"]["allOf"][1]["properties"]
    assert event.type == envelope["type"]["const"]
    assert event.source == envelope["source"]["const"]
    assert event.datacontenttype == envelope["datacontenttype"]["const"]
    # Every field the envelope carries is described.
    described = document["components"]["schemas"]["CloudEvent"]["properties"]
    assert set(event.model_dump(exclude_none=True)) <= set(described)


def ticket_changed_model() -> type[BaseModel]:
    class Change(BaseModel):
        field: str

    class TicketChanged(BaseModel):
        change: Change

    return TicketChanged


def thing_changed_model() -> type[BaseModel]:
    class Change(BaseModel):  # same name as ticket_changed_model's, another shape
        amount: int

    class ThingChanged(BaseModel):
        change: Change

    return ThingChanged


def test_payload_schema_names_that_clash_are_rejected() -> None:
    with pytest.raises(ValueError, match="Change"):
        build_asyncapi(
            "tickets",
            {("ticket", "changed"): ticket_changed_model(), ("thing", "changed"): thing_changed_model()},
        )


def test_server_host_drops_credentials_and_extra_urls() -> None:
    assert server_host("nats://svc:secret@broker.internal:4333,nats://other:4222") == "broker.internal:4333"
    assert server_host("tls://nats.example") == "nats.example:4222"
    assert server_host("127.0.0.1:54222") == "127.0.0.1:54222"


def test_merge_keeps_every_service_and_shares_equal_definitions() -> None:
    documents = [(service, build_asyncapi(service, events)) for service, events in CATALOGUES.items()]
    merged = merge_asyncapi(documents)
    assert_is_asyncapi_3(merged)
    assert set(merged["channels"]) == {
        f"{service}.{aggregate}.{event}"
        for service, events in CATALOGUES.items()
        for aggregate, event in events
    }
    # The envelope, headers, tenant parameter and server are the same everywhere: kept once.
    assert not any("__" in key for section in merged["components"].values() for key in section)
    assert list(merged["servers"]) == ["nats"]


def test_merge_renames_a_clashing_definition_and_rewrites_its_references() -> None:
    merged = merge_asyncapi(
        [
            ("tickets", build_asyncapi("tickets", {("ticket", "changed"): ticket_changed_model()})),
            ("notifications", build_asyncapi("notifications", {("thing", "changed"): thing_changed_model()})),
        ]
    )
    assert_is_asyncapi_3(merged)
    schemas = merged["components"]["schemas"]
    assert "field" in schemas["Change"]["properties"]
    assert "amount" in schemas["notifications__Change"]["properties"]
    assert schemas["ThingChanged"]["properties"]["change"] == {
        "$ref": SCHEMA_REF_PREFIX + "notifications__Change"
    }
    assert schemas["TicketChanged"]["properties"]["change"] == {"$ref": SCHEMA_REF_PREFIX + "Change"}
    message = inline_refs(merged, {"$ref": "#/components/messages/notifications.thing.changed"})
    data = message["payload"]["allOf"][1]["properties"]["data"]
    assert data == standalone(thing_changed_model())


def test_committed_schemas_equal_the_generated_ones() -> None:
    """After a payload change run `helpdesk events schemas` and commit docs/events."""
    assert event_schemas.differences(REPOSITORY / "docs" / "events") == []
    files = event_schemas.generated_files()
    assert "helpdesk.summarization.summary.completed.v1.schema.json" in files
    assert {f"helpdesk.tickets.{a}.{e}.v1.schema.json" for a, e in TICKETS_EVENTS} <= set(files)


def test_a_stale_committed_schema_is_reported(tmp_path: Path) -> None:
    event_schemas.write(tmp_path)
    assert event_schemas.differences(tmp_path) == []
    name = "helpdesk.summarization.summary.completed.v1.schema.json"
    (tmp_path / name).write_text((tmp_path / name).read_text().replace('"ticket_id"', '"ticket"'))
    (tmp_path / "helpdesk.tickets.ticket.gone.v1.schema.json").write_text("{}")
    assert event_schemas.differences(tmp_path) == [name, "helpdesk.tickets.ticket.gone.v1.schema.json"]
    assert event_schemas.write(tmp_path) == [name, "helpdesk.tickets.ticket.gone.v1.schema.json"]
    assert event_schemas.differences(tmp_path) == []


async def test_a_service_serves_its_own_asyncapi() -> None:
    settings = CommonSettings(nats_url="nats://user:pw@broker.internal:4333", env="test")
    app = create_service_app(
        ServiceDefinition(name="summarization", settings=settings, routers=[], events=SUMMARIZATION_EVENTS)
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/asyncapi.json")
        openapi = (await client.get("/openapi.json")).json()
    assert response.status_code == 200
    document = response.json()
    assert_is_asyncapi_3(document)
    assert document == build_asyncapi(
        "summarization", SUMMARIZATION_EVENTS, nats_url=settings.nats_url, description=""
    )
    assert document["servers"]["nats"]["host"] == "broker.internal:4333"
    assert "pw" not in response.text
    assert "/asyncapi.json" not in openapi["paths"]


def test_cloud_event_schema_is_the_envelope_model() -> None:
    document = build_asyncapi("tickets", TICKETS_EVENTS)
    assert document["components"]["schemas"]["CloudEvent"] == CloudEvent.model_json_schema()
