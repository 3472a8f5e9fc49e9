"""Token endpoint, login throttling and /me."""

from __future__ import annotations

import pytest

from gateway import identity
from tests.conftest import Infra, make_token, unique_tenant
from tests.gateway.conftest import Gateway

pytestmark = pytest.mark.asyncio(loop_scope="session")
PASSWORD = "correct horse battery staple"


async def create_user(
    gateway: Gateway, role: str = "agent", password: str = PASSWORD
) -> tuple[str, str, str]:
    tenant = unique_tenant("auth")
    email = f"{role}@{tenant}.test"
    async with gateway.app.state.session_factory() as session, session.begin():
        user_id = await identity.create_user(
            session, tenant=tenant, email=email, password=password, role=role
        )
    return tenant, email, str(user_id)


async def login(client, email: str, password: str):
    return await client.post("/api/v1/auth/token", data={"username": email, "password": password})


async def test_token_issued_for_correct_password_and_accepted_by_me(gateway: Gateway, client_ip: str) -> None:
    tenant, email, user_id = await create_user(gateway, role="admin")
    async with gateway.client_from(client_ip) as client:
        response = await login(client, email.upper(), PASSWORD)  # emails are case-insensitive
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["token_type"] == "bearer"
        assert body["expires_in"] == gateway.settings.token_ttl_s
        assert response.headers["cache-control"] == "no-store"

        me = await client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.status_code == 200
    assert me.json() == {"tenant": tenant, "user_id": user_id, "roles": ["admin"]}


async def test_wrong_password_and_unknown_user_get_identical_401(gateway: Gateway, client_ip: str) -> None:
    _, email, _ = await create_user(gateway)
    async with gateway.client_from(client_ip) as client:
        wrong_password = await login(client, email, "not the password")
        unknown_user = await login(client, "nobody@nowhere.test", PASSWORD)
    assert wrong_password.status_code == unknown_user.status_code == 401
    assert wrong_password.headers["content-type"] == "application/problem+json"
    assert wrong_password.content == unknown_user.content
    assert wrong_password.json()["detail"] == "invalid email or password"


async def test_login_throttled_per_email_even_with_correct_password(gateway: Gateway, client_ip: str) -> None:
    _, email, _ = await create_user(gateway)
    async with gateway.client_from(client_ip) as client:
        for _ in range(gateway.settings.login_max_failures):
            assert (await login(client, email, "guess")).status_code == 401
        throttled = await login(client, email, PASSWORD)
    assert throttled.status_code == 429
    assert throttled.headers["content-type"] == "application/problem+json"
    assert 0 < int(throttled.headers["retry-after"]) <= gateway.settings.login_failure_window_s

    # The email stays locked whatever address the next attempt comes from.
    async with gateway.client_from("192.0.2.77") as other_client:
        assert (await login(other_client, email, PASSWORD)).status_code == 429


async def test_login_throttled_per_client_address(gateway: Gateway, client_ip: str) -> None:
    _, email, _ = await create_user(gateway)
    async with gateway.client_from(client_ip) as client:
        # One mistyping colleague behind the same address locks out nobody else...
        for _ in range(gateway.settings.login_max_failures):
            assert (await login(client, f"typo@{client_ip}.test", "guess")).status_code == 401
        assert (await login(client, email, PASSWORD)).status_code == 200
        # ...but spraying many accounts from one address is stopped.
        for attempt in range(
            gateway.settings.login_max_failures_per_ip - gateway.settings.login_max_failures
        ):
            assert (await login(client, f"spray-{attempt}@{client_ip}.test", "guess")).status_code == 401
        assert (await login(client, email, PASSWORD)).status_code == 429


async def test_successful_login_resets_the_email_counter(gateway: Gateway, client_ip: str) -> None:
    _, email, _ = await create_user(gateway)
    async with gateway.client_from(client_ip) as client:
        for _ in range(gateway.settings.login_max_failures - 1):
            await login(client, email, "guess")
        assert (await login(client, email, PASSWORD)).status_code == 200
    async with gateway.client_from("192.0.2.78") as client:
        for _ in range(gateway.settings.login_max_failures - 1):
            await login(client, email, "guess")
        assert (await login(client, email, PASSWORD)).status_code == 200


async def test_token_request_without_form_fields_is_a_validation_problem(gateway: Gateway, client_ip) -> None:
    async with gateway.client_from(client_ip) as client:
        response = await client.post("/api/v1/auth/token", data={"username": "a@b.test"})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert any(error["field"] == "password" for error in response.json()["errors"])


async def test_a_nul_in_the_username_is_a_validation_problem(gateway: Gateway, client_ip) -> None:
    async with gateway.client_from(client_ip) as client:
        response = await client.post(
            "/api/v1/auth/token", data={"username": "a\x00b@x.test", "password": "x"}
        )
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert any(error["field"] == "username" for error in response.json()["errors"])


async def test_me_requires_a_valid_token(gateway: Gateway, infra: Infra) -> None:
    missing = await gateway.client.get("/api/v1/auth/me")
    assert missing.status_code == 401
    expired = make_token(infra, "acme", ["agent"], ttl_s=-3600)
    response = await gateway.client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {expired}"})
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
