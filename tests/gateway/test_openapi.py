"""The merged OpenAPI document and Swagger UI."""

from __future__ import annotations

import pytest

from tests.gateway.conftest import Gateway

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_merged_openapi_has_gateway_and_upstream_paths(gateway: Gateway) -> None:
    response = await gateway.client.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert "/api/v1/auth/token" in document["paths"]
    assert "/api/v1/auth/me" in document["paths"]
    assert "/api/v1/tickets/{rest}" in document["paths"]
    assert "/api/v1/tickets/big" in document["paths"]
    # Services' own operational endpoints are not part of the public API.
    assert not any(path.startswith(("/healthz", "/metrics", "/docs")) for path in document["paths"])
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert {"bearerAuth": []} in document["security"]
    assert document["paths"]["/api/v1/auth/token"]["post"]["security"] == []


async def test_schema_name_collisions_keep_both_definitions(gateway: Gateway) -> None:
    document = (await gateway.client.get("/openapi.json")).json()
    schemas = document["components"]["schemas"]
    assert "access_token" in schemas["TokenRead"]["properties"]
    assert "echo_only" in schemas["tickets__TokenRead"]["properties"]
    operation = document["paths"]["/api/v1/tickets/token-shaped"]["get"]
    schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/tickets__TokenRead"}


async def test_unreachable_upstreams_are_skipped(gateway: Gateway) -> None:
    document = (await gateway.client.get("/openapi.json")).json()
    assert not any(path.startswith("/api/v1/summaries") for path in document["paths"])


async def test_docs_serve_swagger_ui(gateway: Gateway) -> None:
    response = await gateway.client.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "swagger-ui" in response.text
    assert "/openapi.json" in response.text
