"""The dev/demo token endpoint and the caller's identity."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Form, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from gateway import identity
from gateway.settings import Settings
from libs.common.auth import IdentityDep, issue_token
from libs.common.db import SessionDep
from libs.common.errors import PROBLEM_BASE, problem_response

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])


class TokenRead(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int


class IdentityRead(BaseModel):
    tenant: str
    user_id: str
    roles: list[str]


_PROBLEM = {"content": {"application/problem+json": {}}}


def invalid_credentials() -> JSONResponse:
    # One body for "no such user" and "wrong password": the answer must not reveal which emails exist.
    return problem_response(
        401,
        "Unauthorized",
        "invalid email or password",
        type_=PROBLEM_BASE + "invalid-credentials",
        headers={"WWW-Authenticate": "Bearer"},
    )


@router.post(
    "/token",
    response_model=TokenRead,
    responses={401: _PROBLEM, 429: _PROBLEM},
    openapi_extra={"security": []},
)
async def issue_access_token(
    request: Request,
    session: SessionDep,
    username: Annotated[
        # No NUL: PostgreSQL text cannot hold it, so the lookup would fail in the driver.
        str, Form(max_length=identity.MAX_EMAIL_CHARS, pattern=r"^[^\x00]*$", description="The user's email")
    ],
    password: Annotated[str, Form(max_length=identity.MAX_PASSWORD_CHARS)],
    grant_type: Annotated[str | None, Form(pattern="^password$")] = None,
) -> JSONResponse:
    """Exchange email and password (OAuth2 password form) for a bearer token.

    After too many failed attempts for the same email or from the same address, every attempt
    (even with the right password) is refused with 429 until the window ends (`Retry-After`).
    """
    settings: Settings = request.app.state.settings
    if settings.jwt_secret is None or "HS256" not in settings.jwt_algorithms:
        return problem_response(
            501,
            "Not Implemented",
            "token issuing is disabled: tokens come from the external identity provider",
        )
    client_ip = request.client.host if request.client else None
    retry_after = await identity.login_retry_after(
        session,
        username,
        client_ip,
        max_failures=settings.login_max_failures,
        max_failures_per_ip=settings.login_max_failures_per_ip,
        window_s=settings.login_failure_window_s,
    )
    if retry_after is not None:
        return problem_response(
            429,
            "Too Many Requests",
            "too many failed login attempts; try again later",
            headers={"Retry-After": str(retry_after)},
        )
    user = await identity.authenticate(session, username, password)
    if user is None:
        await identity.record_login_failure(
            session, username, client_ip, window_s=settings.login_failure_window_s
        )
        return invalid_credentials()
    await identity.clear_login_failures(session, username)
    token = issue_token(
        settings,
        user_id=str(user["id"]),
        tenant=user["tenant_id"],
        roles=list(user["roles"]),
        ttl_s=settings.token_ttl_s,
    )
    return JSONResponse(
        {"access_token": token, "token_type": "bearer", "expires_in": settings.token_ttl_s},
        headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
    )


@router.get("/me", response_model=IdentityRead, responses={401: _PROBLEM})
async def who_am_i(caller: IdentityDep) -> IdentityRead:
    """The identity the gateway verified from the bearer token."""
    return IdentityRead(tenant=caller.tenant, user_id=caller.user_id, roles=sorted(caller.roles))
