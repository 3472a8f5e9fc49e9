"""Tenants, users, password checks and login throttling of the identity schema.

Functions take the caller's session and never commit: the endpoint's request transaction (or
the CLI) owns it.
"""

from __future__ import annotations

import asyncio
import math
import secrets
from uuid import UUID

from pwdlib import PasswordHash
from sqlalchemy import RowMapping, delete, func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.models import login_failures, tenants, users
from libs.common.auth import ROLES, TENANT_PATTERN
from libs.common.ids import new_id

MAX_PASSWORD_CHARS = 1024
MAX_EMAIL_CHARS = 320

password_hash = PasswordHash.recommended()
_dummy_hash: str | None = None


class IdentityError(ValueError):
    """Invalid input for a tenant or user (bad slug, unknown role, empty password...)."""


class EmailAlreadyRegisteredError(IdentityError):
    def __init__(self, email: str) -> None:
        super().__init__(f"a user with the email {email!r} already exists")
        self.email = email


def normalize_email(email: str) -> str:
    return email.strip().lower()


async def hash_password(password: str) -> str:
    # Argon2 takes ~100 ms of CPU; a worker thread keeps the event loop serving other requests.
    return await asyncio.to_thread(password_hash.hash, password)


async def _verify_password(password: str, hashed: str) -> tuple[bool, str | None]:
    return await asyncio.to_thread(password_hash.verify_and_update, password, hashed)


async def _dummy_password_hash() -> str:
    global _dummy_hash
    if _dummy_hash is None:
        _dummy_hash = await hash_password(secrets.token_urlsafe(16))
    return _dummy_hash


async def ensure_tenant(session: AsyncSession, slug: str, name: str | None = None) -> bool:
    """Create the tenant unless it exists; returns True when it was created."""
    if not TENANT_PATTERN.match(slug):
        raise IdentityError(f"invalid tenant slug {slug!r}: use 1-40 characters of a-z, 0-9 and '-'")
    result = await session.execute(
        insert(tenants)
        .values(slug=slug, name=name or slug)
        .on_conflict_do_nothing(index_elements=[tenants.c.slug])
        .returning(tenants.c.slug)
    )
    return result.scalar_one_or_none() is not None


async def create_user(
    session: AsyncSession,
    *,
    tenant: str,
    email: str,
    password: str,
    role: str,
    display_name: str | None = None,
) -> UUID:
    """Create a user (and the tenant if it is new); raises EmailAlreadyRegisteredError on a taken email."""
    email = email.strip()
    if "@" not in email or len(email) > MAX_EMAIL_CHARS:
        raise IdentityError(f"invalid email address {email!r}")
    if role not in ROLES:
        raise IdentityError(f"unknown role {role!r}: use one of {', '.join(sorted(ROLES))}")
    if not password or len(password) > MAX_PASSWORD_CHARS:
        raise IdentityError(f"the password must have 1 to {MAX_PASSWORD_CHARS} characters")
    await ensure_tenant(session, tenant)
    user_id = new_id()
    result = await session.execute(
        insert(users)
        .values(
            id=user_id,
            tenant_id=tenant,
            email=email,
            password_hash=await hash_password(password),
            roles=[role],
            display_name=display_name,
        )
        .on_conflict_do_nothing(index_elements=[func.lower(users.c.email)])
        .returning(users.c.id)
    )
    if result.scalar_one_or_none() is None:
        raise EmailAlreadyRegisteredError(email)
    return user_id


async def get_user_by_email(session: AsyncSession, email: str) -> RowMapping | None:
    result = await session.execute(select(users).where(func.lower(users.c.email) == normalize_email(email)))
    return result.mappings().one_or_none()


async def authenticate(session: AsyncSession, email: str, password: str) -> RowMapping | None:
    """The user row when the password matches, else None.

    An unknown email costs the same argon2 verification as a wrong password, so response
    times do not reveal which emails exist.
    """
    if len(password) > MAX_PASSWORD_CHARS or len(email) > MAX_EMAIL_CHARS:
        await _verify_password("", await _dummy_password_hash())
        return None
    user = await get_user_by_email(session, email)
    if user is None:
        await _verify_password(password, await _dummy_password_hash())
        return None
    valid, upgraded_hash = await _verify_password(password, user["password_hash"])
    if not valid:
        return None
    if upgraded_hash is not None:  # hashing parameters changed since this hash was made
        await session.execute(
            users.update().where(users.c.id == user["id"]).values(password_hash=upgraded_hash)
        )
    return user


def _throttle_keys(email: str, client_ip: str | None) -> list[tuple[str, str]]:
    keys = [("email", normalize_email(email)[:MAX_EMAIL_CHARS])]
    if client_ip:
        keys.append(("ip", client_ip))
    return keys


_RETRY_AFTER = text(
    """
    SELECT max(extract(epoch FROM window_started_at + make_interval(secs => :window_s) - now()))
    FROM identity.login_failures
    WHERE (scope, key) IN (SELECT * FROM unnest(CAST(:scopes AS text[]), CAST(:keys AS text[])))
      AND failures >= CASE scope WHEN 'ip' THEN CAST(:max_failures_per_ip AS int)
                                     ELSE CAST(:max_failures AS int) END
      AND window_started_at > now() - make_interval(secs => :window_s)
    """
)

_RECORD_FAILURE = text(
    """
    INSERT INTO identity.login_failures AS f (scope, key, failures, window_started_at)
    SELECT scope, key, 1, now() FROM unnest(CAST(:scopes AS text[]), CAST(:keys AS text[])) AS k(scope, key)
    ON CONFLICT (scope, key) DO UPDATE SET
        failures = CASE WHEN f.window_started_at <= now() - make_interval(secs => :window_s)
                        THEN 1 ELSE f.failures + 1 END,
        window_started_at = CASE WHEN f.window_started_at <= now() - make_interval(secs => :window_s)
                                 THEN now() ELSE f.window_started_at END
    """
)


async def login_retry_after(
    session: AsyncSession,
    email: str,
    client_ip: str | None,
    *,
    max_failures: int,
    max_failures_per_ip: int,
    window_s: int,
) -> int | None:
    """Seconds until the next login attempt is allowed for this email or IP; None when not throttled.

    An address gets more failures than an account: many people may share it (an office behind
    one NAT), and one of them mistyping must not lock the others out."""
    scopes, keys = zip(*_throttle_keys(email, client_ip), strict=True)
    result = await session.execute(
        _RETRY_AFTER,
        {
            "scopes": list(scopes),
            "keys": list(keys),
            "max_failures": max_failures,
            "max_failures_per_ip": max_failures_per_ip,
            "window_s": float(window_s),
        },
    )
    remaining = result.scalar_one_or_none()
    if remaining is None:
        return None
    return max(1, math.ceil(remaining))


async def record_login_failure(
    session: AsyncSession, email: str, client_ip: str | None, *, window_s: int
) -> None:
    """Count one failed login for the email and the IP; a counter whose window ended starts over."""
    scopes, keys = zip(*_throttle_keys(email, client_ip), strict=True)
    await session.execute(
        _RECORD_FAILURE, {"scopes": list(scopes), "keys": list(keys), "window_s": float(window_s)}
    )


async def clear_login_failures(session: AsyncSession, email: str) -> None:
    """Forget the email's failures after a successful login (the IP counter keeps running)."""
    await session.execute(
        delete(login_failures).where(
            login_failures.c.scope == "email", login_failures.c.key == normalize_email(email)
        )
    )
