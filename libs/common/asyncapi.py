"""The published event contract: JSON Schemas of the payloads and AsyncAPI 3.0 documents.

Each service describes the events it sends (its `events.EVENTS`: (aggregate, event) -> payload
model) with `build_asyncapi`; the gateway merges the services' documents with `merge_asyncapi`.
Channel ids, message and operation keys are `<service>.<aggregate>.<event>`, unique platform-wide.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel

from libs.common.events import STREAMS, CloudEvent

ASYNCAPI_VERSION = "3.0.0"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_REF_PREFIX = "#/components/schemas/"
ENVELOPE_SCHEMA = "CloudEvent"
HEADERS_SCHEMA = "NatsHeaders"
SERVER = "nats"
CONTENT_TYPE = "application/json"
TENANT_PARAMETER = {
    "description": (
        "Tenant slug (`[a-z0-9-]{1,40}`). Subscribe to one tenant (`tickets.acme.>`) "
        "or to one kind of event of every tenant (`tickets.*.ticket.created`)."
    ),
    "examples": ["acme", "demo"],
    "location": "$message.payload#/tenant",
}
NATS_HEADERS = {
    "type": "object",
    "properties": {
        "Nats-Msg-Id": {
            "type": "string",
            "format": "uuid",
            "description": "Equals the CloudEvent `id`; JetStream de-duplicates re-publishes on it.",
        }
    },
    "required": ["Nats-Msg-Id"],
}

EventCatalogue = Mapping[tuple[str, str], type[BaseModel]]


def event_type(service: str, aggregate: str, event: str) -> str:
    """The CloudEvents `type` of an event, e.g. `helpdesk.tickets.ticket.created.v1`."""
    return f"helpdesk.{service}.{aggregate}.{event}.v1"


def event_key(service: str, aggregate: str, event: str) -> str:
    """Id of the event's channel, message and schema files: `tickets.ticket.created`."""
    return f"{service}.{aggregate}.{event}"


def payload_json_schema(service: str, aggregate: str, event: str, model: type[BaseModel]) -> dict[str, Any]:
    """A self-contained JSON Schema (2020-12) of one payload, as published in docs/events."""
    schema = model.model_json_schema()
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "$comment": (
            f"`data` of CloudEvents type {event_type(service, aggregate, event)} on NATS subject "
            f"{service}.<tenant>.{aggregate}.{event}. Generated from the pydantic model; do not edit."
        ),
        **schema,
    }


def envelope_json_schema() -> dict[str, Any]:
    """JSON Schema of the CloudEvents envelope every event travels in."""
    return {"$schema": JSON_SCHEMA_DIALECT, **CloudEvent.model_json_schema()}


def published_json_schemas(catalogues: Mapping[str, EventCatalogue]) -> dict[str, dict[str, Any]]:
    """File name -> schema for every payload of every service, plus the envelope."""
    files = {"cloudevent.schema.json": envelope_json_schema()}
    for service, events in catalogues.items():
        for (aggregate, event), model in events.items():
            name = f"{event_type(service, aggregate, event)}.schema.json"
            files[name] = payload_json_schema(service, aggregate, event, model)
    return files


def _add_schema(schemas: dict[str, Any], name: str, schema: dict[str, Any]) -> None:
    if name in schemas and schemas[name] != schema:
        raise ValueError(f"two different JSON Schemas are both named {name!r}")
    schemas[name] = schema


def _component_schemas(model: type[BaseModel], schemas: dict[str, Any]) -> str:
    """Put the model's schema and its nested definitions into `schemas`; returns its name."""
    schema = model.model_json_schema(ref_template=SCHEMA_REF_PREFIX + "{model}")
    for name, definition in schema.pop("$defs", {}).items():
        _add_schema(schemas, name, definition)
    _add_schema(schemas, model.__name__, schema)
    return model.__name__


def server_host(nats_url: str) -> str:
    """`host:port` of the first URL in a NATS URL list, without credentials."""
    first = nats_url.split(",")[0].strip()
    parts = urlsplit(first if "://" in first else f"nats://{first}")
    host = parts.hostname or "localhost"
    return f"{host}:{parts.port or 4222}"


def _title(text: str) -> str:
    return text.replace("_", " ").capitalize()


def _summary(model: type[BaseModel]) -> str | None:
    doc = (model.__doc__ or "").strip()
    return doc.splitlines()[0].strip("` ") if doc else None


def build_asyncapi(
    service: str,
    events: EventCatalogue,
    *,
    nats_url: str = "nats://localhost:4222",
    description: str = "",
    version: str = "1.0.0",
) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the events one service sends.

    Every event gets a channel with the parameterised address `<service>.{tenant}.<aggregate>.<event>`,
    a message whose payload is the CloudEvents envelope with `data` = the payload model's JSON
    Schema (nested definitions in `components.schemas`), and a `send` operation.
    """
    stream = next((name for name, prefix in STREAMS.items() if prefix == service), None)
    schemas: dict[str, Any] = {ENVELOPE_SCHEMA: CloudEvent.model_json_schema(), HEADERS_SCHEMA: NATS_HEADERS}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for (aggregate, event), model in events.items():
        key = event_key(service, aggregate, event)
        type_ = event_type(service, aggregate, event)
        payload_name = _component_schemas(model, schemas)
        envelope_name = f"{payload_name}Event"
        _add_schema(
            schemas,
            envelope_name,
            {
                "title": envelope_name,
                "description": f"CloudEvents 1.0 envelope of `{type_}`.",
                "allOf": [
                    {"$ref": SCHEMA_REF_PREFIX + ENVELOPE_SCHEMA},
                    {
                        "type": "object",
                        "properties": {
                            "type": {"const": type_},
                            "source": {"const": f"/helpdesk/{service}"},
                            "datacontenttype": {"const": CONTENT_TYPE},
                            "data": {"$ref": SCHEMA_REF_PREFIX + payload_name},
                        },
                        "required": ["data"],
                    },
                ],
            },
        )
        message: dict[str, Any] = {
            "name": key,
            "title": f"{_title(aggregate)} {event.replace('_', ' ')}",
            "contentType": CONTENT_TYPE,
            "headers": {"$ref": SCHEMA_REF_PREFIX + HEADERS_SCHEMA},
            "payload": {"$ref": SCHEMA_REF_PREFIX + envelope_name},
            "correlationId": {"location": "$message.payload#/correlationid"},
            "x-cloudevents-type": type_,
        }
        if summary := _summary(model):
            message["summary"] = summary
        messages[key] = message
        channels[key] = {
            "address": f"{service}.{{tenant}}.{aggregate}.{event}",
            "title": message["title"],
            "description": f"Stream `{stream}`." if stream else "",
            "messages": {key: {"$ref": f"#/components/messages/{key}"}},
            "parameters": {"tenant": {"$ref": "#/components/parameters/tenant"}},
            "servers": [{"$ref": f"#/servers/{SERVER}"}],
        }
        operations[f"{key}.send"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{key}"},
            "summary": f"{service} publishes `{type_}` through its transactional outbox.",
            "messages": [{"$ref": f"#/channels/{key}/messages/{key}"}],
        }
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {"title": f"helpdesk {service} events", "version": version, "description": description},
        "defaultContentType": CONTENT_TYPE,
        "servers": {
            SERVER: {
                "host": server_host(nats_url),
                "protocol": "nats",
                "description": (
                    "NATS JetStream. Streams: "
                    + ", ".join(f"`{name}` (`{prefix}.>`)" for name, prefix in STREAMS.items())
                    + ". Consume with a durable pull consumer and explicit ack; de-duplicate on the "
                    "CloudEvent `id`."
                ),
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"schemas": schemas, "messages": messages, "parameters": {"tenant": TENANT_PARAMETER}},
    }


def _rename_refs(node: Any, renames: Mapping[str, str]) -> Any:
    """Rewrite `$ref`s that point at a renamed object (or inside it)."""
    if not renames:
        return node
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            for old, new in renames.items():
                if ref == old or ref.startswith(old + "/"):
                    node = {**node, "$ref": new + ref[len(old) :]}
                    break
        return {key: _rename_refs(value, renames) for key, value in node.items()}
    if isinstance(node, list):
        return [_rename_refs(item, renames) for item in node]
    return node


def _sections(document: Mapping[str, Any]) -> list[tuple[str, ...]]:
    paths = [(top,) for top in ("servers", "channels", "operations") if isinstance(document.get(top), dict)]
    components = document.get("components", {})
    return paths + [("components", name) for name, section in components.items() if isinstance(section, dict)]


def _items(document: Mapping[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    node: Any = document
    for key in path:
        node = node.get(key, {}) if isinstance(node, dict) else {}
    return node if isinstance(node, dict) else {}


def _pointer(path: tuple[str, ...], name: str) -> str:
    return "#/" + "/".join((*path, name.replace("~", "~0").replace("/", "~1")))


def merge_asyncapi(
    documents: Iterable[tuple[str, Mapping[str, Any]]],
    *,
    title: str = "helpdesk events",
    description: str = "",
    version: str = "1.0.0",
) -> dict[str, Any]:
    """One AsyncAPI document from the services' documents ((service name, document) pairs).

    Equal definitions are shared; an object whose key is taken by a different definition is
    renamed `<service>__<key>` and every reference to it in that service's part is rewritten.
    """
    merged: dict[str, Any] = {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {"title": title, "version": version, "description": description},
        "defaultContentType": CONTENT_TYPE,
        "servers": {},
        "channels": {},
        "operations": {},
        "components": {"schemas": {}, "messages": {}, "parameters": {}},
    }
    for service, document in documents:
        sections = _sections(document)
        new_names: dict[tuple[tuple[str, ...], str], str] = {}
        renames: dict[str, str] = {}  # old pointer -> new pointer
        # Renaming one object changes the references inside others, so repeat until stable.
        changed = True
        while changed:
            changed = False
            for path in sections:
                ours, theirs = _items(merged, path), _items(document, path)
                for name, item in theirs.items():
                    if (path, name) in new_names or name not in ours:
                        continue
                    if ours[name] != _rename_refs(item, renames):
                        new_name, counter = f"{service}__{name}", 2
                        while new_name in ours or new_name in theirs:
                            new_name, counter = f"{service}__{name}_{counter}", counter + 1
                        new_names[path, name] = new_name
                        renames[_pointer(path, name)] = _pointer(path, new_name)
                        changed = True
        for path in sections:
            ours = merged
            for key in path:
                ours = ours.setdefault(key, {})
            for name, item in _items(document, path).items():
                ours.setdefault(new_names.get((path, name), name), _rename_refs(item, renames))
    return merged


def iter_refs(node: Any) -> Iterable[str]:
    """Every `$ref` value in a document."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            yield ref
        for value in node.values():
            yield from iter_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from iter_refs(item)


def resolve_pointer(document: Mapping[str, Any], ref: str) -> Any:
    """The object a local `$ref` (`#/a/b`) points at; KeyError if there is none."""
    if not ref.startswith("#/"):
        raise KeyError(ref)
    node: Any = document
    for token in ref[2:].split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        node = node[int(token)] if isinstance(node, list) else node[token]
    return node
