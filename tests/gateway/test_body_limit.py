"""Request body size limit."""

from __future__ import annotations

import pytest

from tests.conftest import Infra, auth_headers
from tests.gateway.conftest import MAX_BODY_BYTES, EchoUpstream, Gateway

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def chunks(total: int, size: int = 8192):
    sent = 0
    while sent < total:
        part = min(size, total - sent)
        sent += part
        yield b"x" * part


async def test_declared_length_over_the_limit_is_413(
    gateway: Gateway, infra: Infra, echo_upstream: EchoUpstream
) -> None:
    hits_before = echo_upstream.hits
    response = await gateway.client.post(
        "/api/v1/tickets", content=b"x" * (MAX_BODY_BYTES + 1), headers=auth_headers(infra, "acme", ["agent"])
    )
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    assert echo_upstream.hits == hits_before


async def test_chunked_body_over_the_limit_is_413(gateway: Gateway, infra: Infra) -> None:
    response = await gateway.client.post(
        "/api/v1/tickets/upload",
        content=chunks(MAX_BODY_BYTES * 2),
        headers=auth_headers(infra, "acme", ["agent"]),
    )
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"


async def test_chunked_body_over_the_limit_is_413_on_gateway_routes(gateway: Gateway) -> None:
    response = await gateway.client.post(
        "/api/v1/auth/token",
        content=chunks(MAX_BODY_BYTES * 2),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 413


async def test_chunked_body_under_the_limit_is_streamed_upstream(gateway: Gateway, infra: Infra) -> None:
    response = await gateway.client.put(
        "/api/v1/tickets/upload",
        content=chunks(MAX_BODY_BYTES - 10),
        headers=auth_headers(infra, "acme", ["agent"]),
    )
    assert response.status_code == 200, response.text
    assert response.json()["method"] == "PUT"
    assert response.json()["body_length"] == MAX_BODY_BYTES - 10


async def test_attachment_uploads_have_their_own_larger_limit(gateway: Gateway, infra: Infra) -> None:
    headers = auth_headers(infra, "acme", ["agent"])
    upload = "/api/v1/tickets/0190f0f0-0000-7000-8000-000000000001/attachments"
    over_default = MAX_BODY_BYTES * 2
    accepted = await gateway.client.post(upload, content=chunks(over_default), headers=headers)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["body_length"] == over_default
    elsewhere = await gateway.client.post(
        "/api/v1/tickets/x/comments", content=chunks(over_default), headers=headers
    )
    assert elsewhere.status_code == 413
    too_big = await gateway.client.post(
        upload, content=b"x" * (gateway.settings.upload_max_body_bytes + 1), headers=headers
    )
    assert too_big.status_code == 413
    assert str(gateway.settings.upload_max_body_bytes) in too_big.json()["detail"]
