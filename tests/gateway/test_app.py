"""Edge behaviour of the assembled app: health, gzip, CORS."""

from __future__ import annotations

import pytest

from tests.conftest import Infra, auth_headers
from tests.gateway.conftest import ALLOWED_ORIGIN, Gateway

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_health_and_readiness_check_only_the_database(gateway: Gateway) -> None:
    assert (await gateway.client.get("/healthz")).json() == {"status": "ok"}
    ready = await gateway.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": True}


async def test_head_is_answered_wherever_get_is(gateway: Gateway, infra: Infra) -> None:
    for path, headers in [("/healthz", {}), ("/api/v1/tickets/1", auth_headers(infra, "acme", ["agent"]))]:
        got, head = (
            await gateway.client.get(path, headers=headers),
            await gateway.client.head(path, headers=headers),
        )
        assert head.status_code == got.status_code == 200
        assert head.content == b"" and head.headers["content-length"] == got.headers["content-length"]


async def test_metrics_are_exposed(gateway: Gateway, infra: Infra) -> None:
    await gateway.client.get("/api/v1/tickets/1", headers=auth_headers(infra, "acme", ["agent"]))
    await gateway.client.get("/api/v1/tickets", headers=auth_headers(infra, "acme", ["agent"]))
    response = await gateway.client.get("/metrics")
    assert response.status_code == 200
    assert 'service="gateway"' in response.text
    # Proxied requests are one series per prefix, not one per path.
    assert 'route="/api/v1/tickets/{path:path}"' in response.text
    assert 'route="/api/v1/tickets",' in response.text
    assert 'route="/api/v1/tickets/1"' not in response.text


async def test_large_responses_are_gzipped_when_accepted(gateway: Gateway, infra: Infra) -> None:
    headers = auth_headers(infra, "acme", ["agent"])
    gzipped = await gateway.client.get("/api/v1/tickets/big", headers={**headers, "Accept-Encoding": "gzip"})
    assert gzipped.status_code == 200
    assert gzipped.headers["content-encoding"] == "gzip"
    assert int(gzipped.headers["content-length"]) < len(gzipped.content) / 5
    assert len(gzipped.json()["items"]) == 500

    plain = await gateway.client.get(
        "/api/v1/tickets/big", headers={**headers, "Accept-Encoding": "identity"}
    )
    assert "content-encoding" not in plain.headers
    assert plain.json() == gzipped.json()


async def test_small_responses_are_not_gzipped(gateway: Gateway) -> None:
    response = await gateway.client.get("/healthz", headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in response.headers


async def test_cors_preflight_allowed_for_listed_origin(gateway: Gateway) -> None:
    response = await gateway.client.options(
        "/api/v1/tickets",
        headers={
            "Origin": ALLOWED_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "POST" in response.headers["access-control-allow-methods"]


async def test_cors_preflight_refused_for_other_origins(gateway: Gateway) -> None:
    response = await gateway.client.options(
        "/api/v1/tickets",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert response.status_code == 400
    assert "access-control-allow-origin" not in response.headers


async def test_cors_headers_on_proxied_responses(gateway: Gateway, infra: Infra) -> None:
    response = await gateway.client.get(
        "/api/v1/tickets/1", headers={**auth_headers(infra, "acme", ["agent"]), "Origin": ALLOWED_ORIGIN}
    )
    assert response.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "x-request-id" in response.headers["access-control-expose-headers"].lower()
