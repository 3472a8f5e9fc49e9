"""One OpenAPI document for the whole public API: the gateway's routes plus every service's."""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import structlog
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse

from gateway.proxy import Upstream

log = structlog.get_logger()

FETCH_TIMEOUT_S = 2.0
SCHEMA_REF_PREFIX = "#/components/schemas/"
SECURITY_SCHEMES = {
    "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
    "oauth2Password": {
        "type": "oauth2",
        "description": "Email and password of a user; the token endpoint is for dev/demo use.",
        "flows": {"password": {"tokenUrl": "/api/v1/auth/token", "scopes": {}}},
    },
}


def _rename_refs(node: Any, renames: dict[str, str]) -> Any:
    if not renames:
        return node
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(SCHEMA_REF_PREFIX):
            name = ref.removeprefix(SCHEMA_REF_PREFIX)
            if name in renames:
                node = {**node, "$ref": SCHEMA_REF_PREFIX + renames[name]}
        return {key: _rename_refs(value, renames) for key, value in node.items()}
    if isinstance(node, list):
        return [_rename_refs(item, renames) for item in node]
    return node


def _free_name(wanted: str, taken: dict[str, Any]) -> str:
    name, counter = wanted, 2
    while name in taken:
        name, counter = f"{wanted}_{counter}", counter + 1
    return name


def _belongs_to(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def merge_documents(own: dict[str, Any], upstream_documents: list[tuple[Upstream, dict[str, Any]]]) -> dict:
    """Merge services' paths and component schemas into the gateway's own document.

    A service schema whose name is taken by a different definition is renamed
    `<service>__<Name>` and every reference to it in that service's part is rewritten.
    """
    merged = copy.deepcopy(own)
    paths: dict[str, Any] = merged.setdefault("paths", {})
    components = merged.setdefault("components", {})
    schemas: dict[str, Any] = components.setdefault("schemas", {})
    tags = {tag["name"]: tag for tag in merged.get("tags", [])}
    operation_ids = {
        operation.get("operationId")
        for item in paths.values()
        for operation in item.values()
        if isinstance(operation, dict)
    }

    for upstream, document in upstream_documents:
        theirs: dict[str, Any] = document.get("components", {}).get("schemas", {})
        renames: dict[str, str] = {}
        # A schema equal to ours may still point at one we had to rename, so repeat until stable.
        changed = True
        while changed:
            changed = False
            for name, schema in theirs.items():
                if name in renames or name not in schemas:
                    continue
                if schemas[name] != _rename_refs(schema, renames):
                    renames[name] = _free_name(f"{upstream.name}__{name}", {**schemas, **theirs})
                    changed = True
        for name, schema in theirs.items():
            schemas.setdefault(renames.get(name, name), _rename_refs(schema, renames))

        for path, item in document.get("paths", {}).items():
            # Only what the gateway routes to this service is public (not its /healthz, /metrics...).
            if not _belongs_to(path, upstream.prefix) or path in paths:
                continue
            item = _rename_refs(item, renames)
            for operation in item.values():
                if not isinstance(operation, dict) or "operationId" not in operation:
                    continue
                if operation["operationId"] in operation_ids:
                    operation["operationId"] = f"{upstream.name}__{operation['operationId']}"
                operation_ids.add(operation["operationId"])
            paths[path] = item
        for tag in document.get("tags", []):
            tags.setdefault(tag["name"], tag)
        for name, scheme in document.get("components", {}).get("securitySchemes", {}).items():
            components.setdefault("securitySchemes", {}).setdefault(name, scheme)

    components.setdefault("securitySchemes", {}).update(SECURITY_SCHEMES)
    merged["security"] = [{"bearerAuth": []}, {"oauth2Password": []}]
    if tags:
        merged["tags"] = list(tags.values())
    return merged


class MergedDocument:
    """A document merged from every reachable service's `path`, built on demand and kept for a while."""

    def __init__(
        self,
        upstreams: list[Upstream],
        path: str,
        merge: Callable[[list[tuple[Upstream, dict[str, Any]]]], dict[str, Any]],
        cache_s: float,
    ) -> None:
        self.upstreams = upstreams
        self.path = path
        self.merge = merge
        self.cache_s = cache_s
        self._body: bytes | None = None
        self._expires_at = 0.0
        self._lock = asyncio.Lock()

    async def _fetch(self, client: httpx.AsyncClient, upstream: Upstream) -> dict[str, Any] | None:
        try:
            response = await client.get(upstream.url.rstrip("/") + self.path)
            response.raise_for_status()
            document = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            # A service that is down must not take the documentation of the others with it.
            log.warning(
                "upstream_document_unavailable", upstream=upstream.name, path=self.path, error=repr(exc)
            )
            return None
        return document if isinstance(document, dict) else None

    async def body(self) -> bytes:
        """The merged document as JSON bytes."""
        if self._body is not None and time.monotonic() < self._expires_at:
            return self._body
        async with self._lock:
            if self._body is not None and time.monotonic() < self._expires_at:
                return self._body
            async with httpx.AsyncClient(timeout=FETCH_TIMEOUT_S) as client:
                fetched = await asyncio.gather(*(self._fetch(client, u) for u in self.upstreams))
            documents = [(u, doc) for u, doc in zip(self.upstreams, fetched, strict=True) if doc is not None]
            self._body = json.dumps(self.merge(documents), ensure_ascii=False).encode()
            self._expires_at = time.monotonic() + self.cache_s
            return self._body


class MergedOpenAPI(MergedDocument):
    """The gateway's own OpenAPI document plus every service's public paths."""

    def __init__(self, app: FastAPI, upstreams: list[Upstream], cache_s: float) -> None:
        self.app = app
        super().__init__(
            upstreams, "/openapi.json", lambda documents: merge_documents(app.openapi(), documents), cache_s
        )


router = APIRouter(include_in_schema=False)


@router.get("/openapi.json")
async def merged_openapi(request: Request) -> Response:
    """The public API of the whole platform: gateway routes and every reachable service."""
    merged: MergedOpenAPI = request.app.state.openapi
    return Response(await merged.body(), media_type="application/json")


@router.get("/docs")
async def swagger_ui() -> HTMLResponse:
    """Swagger UI for the merged document."""
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="helpdesk API",
        swagger_ui_parameters={"persistAuthorization": True},
    )
