"""JWT verification (and dev issuing) shared by the gateway and every service."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from typing import Annotated, Any

import jwt
from fastapi import Depends, Request

from libs.common.errors import ProblemError
from libs.common.settings import CommonSettings

ROLES = frozenset({"admin", "agent", "requester", "service"})
TENANT_PATTERN = re.compile(r"^[a-z0-9-]{1,40}$")
# "none" can never be allowed, whatever the settings say.
SUPPORTED_ALGORITHMS = frozenset({"HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384"})
REQUIRED_CLAIMS = ["exp", "iat", "sub", "tenant", "iss", "aud"]


@dataclass(frozen=True)
class Identity:
    tenant: str
    user_id: str
    roles: frozenset[str]
    expires_at: float = 0.0

    def has_any(self, *roles: str) -> bool:
        return bool(self.roles.intersection(roles))


def _unauthorized(detail: str) -> ProblemError:
    return ProblemError(
        401,
        "Unauthorized",
        detail,
        type_="https://helpdesk.dev/problems/unauthorized",
        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )


class TokenVerifier:
    """Verifies bearer tokens against the configured keys, issuer and audience."""

    def __init__(self, settings: CommonSettings) -> None:
        unsupported = set(settings.jwt_algorithms) - SUPPORTED_ALGORITHMS
        if unsupported:
            raise ValueError(f"unsupported JWT algorithms: {sorted(unsupported)}")
        self.algorithms = list(settings.jwt_algorithms)
        self.secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
        self.public_key = settings.jwt_public_key
        self.jwks = jwt.PyJWKClient(settings.jwt_jwks_url, cache_keys=True) if settings.jwt_jwks_url else None
        self.issuer = settings.jwt_issuer
        self.audience = settings.jwt_audience
        self.leeway = settings.jwt_leeway_s
        self.max_bytes = settings.jwt_max_token_bytes
        # Decoding a JWT costs more than the rest of a cached request path; a client sends the
        # same token every time. Only verified tokens are kept, until they expire and at most
        # a minute (so a key removed from the JWKS stops being honoured soon).
        self._verified: dict[str, Identity] = {}
        self._verified_until: dict[str, float] = {}
        self.cache_max_entries = 10_000
        self.cache_max_age_s = 60.0

    def _key_for(self, token: str, algorithm: str) -> Any:
        # The key follows the algorithm family, so an HS256 token "signed" with our public key
        # is checked against the secret and fails (no algorithm confusion).
        if algorithm.startswith("HS"):
            if not self.secret:
                raise _unauthorized("HMAC tokens are not accepted")
            return self.secret
        if self.jwks is not None:
            return self.jwks.get_signing_key_from_jwt(token).key
        if self.public_key:
            return self.public_key
        raise _unauthorized("asymmetric tokens are not accepted")

    def verify(self, token: str) -> Identity:
        """Decode and validate a token; any failure is a 401 problem."""
        now = time.time()
        cached = self._verified.get(token)
        if cached is not None and self._verified_until[token] > now:
            return cached
        identity = self._decode(token)
        if len(self._verified) >= self.cache_max_entries:
            self._verified.clear()
            self._verified_until.clear()
        self._verified[token] = identity
        self._verified_until[token] = min(identity.expires_at, now + self.cache_max_age_s)
        return identity

    def _decode(self, token: str) -> Identity:
        if len(token) > self.max_bytes:
            raise _unauthorized("token too large")
        try:
            header = jwt.get_unverified_header(token)
            algorithm = header.get("alg")
            if algorithm not in self.algorithms:
                raise _unauthorized("token algorithm not allowed")
            claims = jwt.decode(
                token,
                key=self._key_for(token, algorithm),
                algorithms=[algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": REQUIRED_CLAIMS},
            )
        except ProblemError:
            raise
        except jwt.ExpiredSignatureError:
            raise _unauthorized("token expired") from None
        except (jwt.PyJWTError, ValueError, TypeError):
            raise _unauthorized("invalid token") from None
        tenant, roles = claims.get("tenant"), claims.get("roles", [])
        if not isinstance(tenant, str) or not TENANT_PATTERN.match(tenant):
            raise _unauthorized("invalid tenant claim")
        if not isinstance(roles, list) or not all(isinstance(r, str) and r in ROLES for r in roles):
            raise _unauthorized("invalid roles claim")
        if not isinstance(claims["sub"], str) or not claims["sub"]:
            raise _unauthorized("invalid subject claim")
        return Identity(
            tenant=tenant, user_id=claims["sub"], roles=frozenset(roles), expires_at=float(claims["exp"])
        )

    async def verify_async(self, token: str) -> Identity:
        # JWKS lookups may touch the network; keep them off the event loop.
        if self.jwks is not None and token not in self._verified:
            return await asyncio.to_thread(self.verify, token)
        return self.verify(token)


def issue_token(
    settings: CommonSettings, *, user_id: str, tenant: str, roles: list[str], ttl_s: int = 3600
) -> str:
    """Sign an HS256 token (dev/demo issuing and service clients)."""
    if settings.jwt_secret is None:
        raise RuntimeError("token issuing needs HELPDESK_JWT_SECRET")
    now = int(time.time())
    claims = {
        "sub": user_id,
        "tenant": tenant,
        "roles": roles,
        "iat": now,
        "exp": now + ttl_s,
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
    }
    return jwt.encode(claims, settings.jwt_secret.get_secret_value(), algorithm="HS256")


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ProblemError(
            401, "Unauthorized", "missing bearer token", headers={"WWW-Authenticate": "Bearer"}
        )
    return token.strip()


async def get_identity(request: Request) -> Identity:
    """The caller's verified identity; tenant and user come only from the token."""
    identity = await request.app.state.token_verifier.verify_async(bearer_token(request))
    request.state.identity = identity
    return identity


IdentityDep = Annotated[Identity, Depends(get_identity)]


def require_roles(*roles: str):
    """Dependency factory: 403 unless the caller has one of ``roles``."""

    async def check(identity: IdentityDep) -> Identity:
        if not identity.has_any(*roles):
            raise ProblemError(403, "Forbidden", f"requires one of the roles: {', '.join(roles)}")
        return identity

    return Depends(check)
