"""The reverse proxy against a real upstream: authentication, identity headers, failures."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.proxy import VerifiedTokenCache
from gateway.settings import Settings
from libs.common.auth import TokenVerifier
from libs.common.errors import ProblemError
from tests.conftest import Infra, auth_headers, make_token, settings_for, token_claims
from tests.gateway.conftest import UPSTREAM_TIMEOUT_S, EchoUpstream, Gateway

pytestmark = pytest.mark.asyncio(loop_scope="session")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_token(header: dict, claims: dict, signature: bytes = b"") -> str:
    return ".".join(
        [b64url(json.dumps(header).encode()), b64url(json.dumps(claims).encode()), b64url(signature)]
    )


def valid_claims(**overrides) -> dict:
    return token_claims(**overrides)


def hs256_signed_with_rsa_public_key() -> str:
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header, claims = {"alg": "HS256", "typ": "JWT"}, valid_claims()
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    signature = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def attack_tokens(infra: Infra) -> dict[str, str]:
    claims = valid_claims()
    without_exp = {k: v for k, v in claims.items() if k != "exp"}
    return {
        "alg none": unsigned_token({"alg": "none", "typ": "JWT"}, claims),
        "alg None": unsigned_token({"alg": "None", "typ": "JWT"}, claims),
        "forged signature": jwt.encode(
            claims, "an-attacker-secret-of-sufficient-length!!", algorithm="HS256"
        ),
        "hs256 with rsa public key": hs256_signed_with_rsa_public_key(),
        "expired": make_token(infra, "acme", ["agent"], ttl_s=-3600),
        "missing exp": jwt.encode(without_exp, infra.jwt_secret, algorithm="HS256"),
        "wrong issuer": make_token(infra, "acme", ["agent"], iss="someone-else"),
        "wrong audience": make_token(infra, "acme", ["agent"], aud="another-api"),
        "bad tenant claim": make_token(infra, "ACME; DROP", ["agent"]),
        "unknown role": make_token(infra, "acme", ["root"]),
        "16 KB token": make_token(infra, "acme", ["agent"], padding="x" * 16 * 1024),
        "garbage": "not-a-jwt",
    }


ATTACKS = [
    "alg none",
    "alg None",
    "forged signature",
    "hs256 with rsa public key",
    "expired",
    "missing exp",
    "wrong issuer",
    "wrong audience",
    "bad tenant claim",
    "unknown role",
    "16 KB token",
    "garbage",
]


@pytest.mark.parametrize("attack", ATTACKS)
async def test_bad_tokens_are_401_problems_and_never_reach_the_service(
    gateway: Gateway, echo_upstream: EchoUpstream, infra: Infra, attack: str
) -> None:
    token = attack_tokens(infra)[attack]
    hits_before = echo_upstream.hits
    response = await gateway.client.get("/api/v1/tickets/1", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 401
    assert echo_upstream.hits == hits_before


@pytest.mark.parametrize("authorization", [None, "Bearer", "Bearer   ", "Basic dXNlcjpwdw==", "bearer"])
async def test_missing_bearer_token_is_401(
    gateway: Gateway, echo_upstream: EchoUpstream, authorization
) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    hits_before = echo_upstream.hits
    response = await gateway.client.post("/api/v1/tickets", headers=headers, json={"subject": "x"})
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert echo_upstream.hits == hits_before


async def test_spoofed_identity_headers_are_replaced_by_the_verified_identity(
    gateway: Gateway, infra: Infra
) -> None:
    token = make_token(infra, "acme", ["requester", "agent"], user_id="user-7")
    response = await gateway.client.get(
        "/api/v1/tickets/42",
        params={"q": "엘리베이터", "limit": "5"},
        headers={
            "Authorization": f"Bearer {token}",
            "X-Tenant-Id": "evil-corp",
            "x-user-id": "mallory",
            "X-USER-ROLES": "admin",
        },
    )
    assert response.status_code == 200, response.text
    echoed = response.json()
    received = [(name, value) for name, value in echoed["headers"]]
    identity = {
        name: value for name, value in received if name in ("x-tenant-id", "x-user-id", "x-user-roles")
    }
    assert sorted(name for name, _ in received if name.startswith("x-user") or name == "x-tenant-id") == [
        "x-tenant-id",
        "x-user-id",
        "x-user-roles",
    ]
    assert identity == {"x-tenant-id": "acme", "x-user-id": "user-7", "x-user-roles": "agent,requester"}
    assert ("authorization", f"Bearer {token}") in received
    assert echoed["path"] == "/api/v1/tickets/42"
    assert "limit=5" in echoed["query"]


async def test_request_body_and_method_are_forwarded(gateway: Gateway, infra: Infra) -> None:
    body = json.dumps({"subject": "엘리베이터가 3층에 멈췄어요", "description": "x" * 5000}).encode()
    response = await gateway.client.patch(
        "/api/v1/tickets/7", content=body, headers=auth_headers(infra, "acme", ["agent"])
    )
    assert response.status_code == 200
    assert response.json()["method"] == "PATCH"
    assert response.json()["body_length"] == len(body)


async def test_request_id_is_generated_returned_and_sent_upstream(gateway: Gateway, infra: Infra) -> None:
    response = await gateway.client.get("/api/v1/tickets/1", headers=auth_headers(infra, "acme", ["agent"]))
    request_id = response.headers["x-request-id"]
    assert request_id
    assert ["x-request-id", request_id] in response.json()["headers"]
    assert response.headers.get_list("x-request-id") == [request_id]


@pytest.mark.parametrize(
    ("peer", "received", "sent"),
    [
        ("203.0.113.7", None, "203.0.113.7"),
        ("192.0.2.1", "198.51.100.9", "198.51.100.9, 192.0.2.1"),
        # Behind a trusted proxy the server took the client from the end of the list already.
        ("203.0.113.7", "198.51.100.9, 203.0.113.7", "198.51.100.9, 203.0.113.7"),
    ],
)
async def test_the_client_address_is_forwarded_once(
    gateway: Gateway, infra: Infra, peer: str, received: str | None, sent: str
) -> None:
    headers = auth_headers(infra, "acme", ["agent"])
    if received:
        headers["X-Forwarded-For"] = received
    async with gateway.client_from(peer) as client:
        response = await client.get("/api/v1/tickets/1", headers=headers)
    forwarded = [value for name, value in response.json()["headers"] if name == "x-forwarded-for"]
    assert forwarded == [sent]


async def test_client_request_id_is_passed_through(gateway: Gateway, infra: Infra) -> None:
    headers = {**auth_headers(infra, "acme", ["agent"]), "X-Request-ID": "trace-abc.123"}
    response = await gateway.client.get("/api/v1/tickets/1", headers=headers)
    assert response.headers["x-request-id"] == "trace-abc.123"
    received = [value for name, value in response.json()["headers"] if name == "x-request-id"]
    assert received == ["trace-abc.123"]


async def test_streamed_response_arrives_complete(gateway: Gateway, infra: Infra) -> None:
    headers = auth_headers(infra, "acme", ["agent"])
    async with gateway.client.stream("GET", "/api/v1/tickets/stream", headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        body = b"".join([chunk async for chunk in response.aiter_raw()])
    assert body == b"".join(f"data: {i}\n\n".encode() for i in range(5))


async def test_upstream_down_is_503_problem(gateway: Gateway, infra: Infra) -> None:
    response = await gateway.client.get("/api/v1/summaries/1", headers=auth_headers(infra, "acme", ["agent"]))
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert "summarization" in response.json()["detail"]


async def test_slow_upstream_is_504_problem(gateway: Gateway, infra: Infra) -> None:
    started = time.monotonic()
    response = await gateway.client.get(
        "/api/v1/tickets/slow",
        params={"sleep": UPSTREAM_TIMEOUT_S + 1.5},
        headers=auth_headers(infra, "acme", ["agent"]),
    )
    assert response.status_code == 504
    assert response.headers["content-type"] == "application/problem+json"
    assert time.monotonic() - started < UPSTREAM_TIMEOUT_S + 1.0


async def test_unknown_path_is_404_problem(gateway: Gateway, infra: Infra) -> None:
    for path in ("/api/v1/unknown", "/api/v1/ticketsx", "/nothing"):
        response = await gateway.client.get(path, headers=auth_headers(infra, "acme", ["agent"]))
        assert response.status_code == 404, path
        assert response.headers["content-type"] == "application/problem+json"


async def test_dot_segments_are_refused(gateway: Gateway, infra: Infra, echo_upstream: EchoUpstream) -> None:
    hits_before = echo_upstream.hits
    response = await gateway.client.get(
        "/api/v1/tickets/%2E%2E/%2E%2E/metrics", headers=auth_headers(infra, "acme", ["agent"])
    )
    assert response.status_code in (400, 404)
    assert echo_upstream.hits == hits_before


async def test_verified_token_cache_never_outlives_the_token(infra: Infra) -> None:
    settings = settings_for(infra, Settings, "gateway", jwt_leeway_s=0)
    cache = VerifiedTokenCache(TokenVerifier(settings))
    token = make_token(infra, "acme", ["agent"], user_id="u-9", ttl_s=1)
    expected = (("x-tenant-id", "acme"), ("x-user-id", "u-9"), ("x-user-roles", "agent"))
    assert (await cache.identity_headers(token))[1] == expected
    assert (await cache.identity_headers(token))[1] == expected
    await asyncio.sleep(2.1)
    with pytest.raises(ProblemError) as raised:
        await cache.identity_headers(token)
    assert raised.value.status == 401
