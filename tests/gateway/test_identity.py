"""Tenants and users of the identity schema (what `helpdesk users create` calls)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from gateway import identity
from gateway.models import tenants, users
from tests.conftest import unique_tenant
from tests.gateway.conftest import Gateway

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_create_user_creates_the_tenant_and_hashes_the_password(gateway: Gateway) -> None:
    tenant = unique_tenant("idn")
    async with gateway.app.state.session_factory() as session, session.begin():
        user_id = await identity.create_user(
            session,
            tenant=tenant,
            email=f"Agent@{tenant}.test",
            password="s3cret-pw",
            role="agent",
            display_name="김민수",
        )
    async with gateway.app.state.session_factory() as session:
        user = (await session.execute(select(users).where(users.c.id == user_id))).mappings().one()
        tenant_row = (await session.execute(select(tenants).where(tenants.c.slug == tenant))).mappings().one()
        assert await identity.authenticate(session, f"agent@{tenant}.test", "s3cret-pw") is not None
        assert await identity.authenticate(session, f"agent@{tenant}.test", "wrong") is None
    assert user_id.version == 7
    assert user["tenant_id"] == tenant and user["roles"] == ["agent"] and user["display_name"] == "김민수"
    assert user["password_hash"].startswith("$argon2id$")
    assert tenant_row["name"] == tenant


async def test_email_is_unique_across_tenants_ignoring_case(gateway: Gateway) -> None:
    tenant = unique_tenant("idn")
    email = f"dup@{tenant}.test"
    async with gateway.app.state.session_factory() as session, session.begin():
        await identity.create_user(session, tenant=tenant, email=email, password="pw-12345", role="requester")
    async with gateway.app.state.session_factory() as session, session.begin():
        with pytest.raises(identity.EmailAlreadyRegisteredError):
            await identity.create_user(
                session, tenant=unique_tenant("other"), email=email.upper(), password="pw-12345", role="agent"
            )


@pytest.mark.parametrize(
    ("tenant", "email", "role", "password"),
    [
        ("Bad_Slug", "a@b.test", "agent", "pw"),
        ("ok", "not-an-email", "agent", "pw"),
        ("ok", "a@b.test", "superuser", "pw"),
        ("ok", "a@b.test", "agent", ""),
    ],
)
async def test_create_user_rejects_invalid_input(gateway: Gateway, tenant, email, role, password) -> None:
    async with gateway.app.state.session_factory() as session, session.begin():
        with pytest.raises(identity.IdentityError):
            await identity.create_user(session, tenant=tenant, email=email, password=password, role=role)


async def test_ensure_tenant_is_idempotent(gateway: Gateway) -> None:
    tenant = unique_tenant("idn")
    async with gateway.app.state.session_factory() as session, session.begin():
        assert await identity.ensure_tenant(session, tenant, "Acme Facilities") is True
        assert await identity.ensure_tenant(session, tenant, "Renamed") is False
        name = (await session.execute(select(tenants.c.name).where(tenants.c.slug == tenant))).scalar_one()
    assert name == "Acme Facilities"
