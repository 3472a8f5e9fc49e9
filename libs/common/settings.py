"""Settings base shared by every service: environment variables prefixed ``HELPDESK_``."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Used only outside production so a laptop works without configuration; production refuses it.
DEV_JWT_SECRET = "helpdesk-dev-only-jwt-secret-change-me-0123456789"


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="HELPDESK_", env_file=".env", extra="ignore", populate_by_name=True
    )

    env: Literal["development", "test", "production"] = "development"
    service_name: str = "helpdesk"

    # The service's own login role; `helpdesk migrate` uses the admin URL instead.
    database_url: str = Field(
        default="postgresql+asyncpg://postgres@127.0.0.1:55432/helpdesk",
        validation_alias=AliasChoices("DATABASE_URL", "HELPDESK_DATABASE_URL"),
    )
    # Sized for ~32 concurrent requests per process: connections opened beyond the pool are
    # closed again after use, and that churn (connect + auth per request) is costly.
    db_pool_size: int = Field(default=20, ge=1, le=200)
    db_max_overflow: int = Field(default=20, ge=0, le=200)
    db_pool_recycle_s: int = Field(default=1800, ge=30)
    # Off by default: a round trip per checkout; recycle and reconnect-on-error cover stale connections.
    db_pool_pre_ping: bool = False
    db_statement_timeout_ms: int = Field(default=30_000, ge=100)
    # A request that has not started its response by then is cancelled (its transaction rolls
    # back) and answered 503: below the gateway's upstream timeout (30 s), so a 504 at the
    # gateway never hides a change that commits afterwards.
    request_deadline_s: float = Field(default=25.0, gt=0)
    # Requests one process runs at once; more wait their turn (0: no limit). See
    # libs/common/http.py ConcurrencyLimitMiddleware; 6 measured best of 4/6/10 (bench/README.md).
    max_concurrent_requests: int = Field(default=6, ge=0)

    nats_url: str = Field(
        default="nats://127.0.0.1:54222",
        validation_alias=AliasChoices("NATS_URL", "HELPDESK_NATS_URL"),
    )
    nats_stream_replicas: int = Field(default=1, ge=1, le=5)
    # JetStream file-store fsync interval, e.g. "2m" or "always"; None keeps the server default.
    nats_sync_interval: str | None = None
    nats_duplicate_window_s: int = Field(default=1800, ge=600)

    jwt_secret: SecretStr | None = None
    jwt_public_key: str | None = None
    jwt_jwks_url: str | None = None
    jwt_algorithms: list[str] = ["HS256"]
    jwt_issuer: str = "helpdesk"
    jwt_audience: str = "helpdesk"
    jwt_leeway_s: int = Field(default=10, ge=0, le=30)
    jwt_max_token_bytes: int = Field(default=8192, ge=512)

    log_level: str = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"

    # An idle relay looks for events this often even without a NOTIFY (one a commit skipped
    # while the relay was busy, or lost with the LISTEN connection); a standby relay checks this
    # often whether it should take over.
    outbox_poll_interval_s: float = Field(default=1.0, gt=0)
    outbox_batch_size: int = Field(default=200, ge=1, le=5000)
    # After a wake-up the relay waits this long so commits landing together go in one batch;
    # while events keep coming it polls at this pace, and commits skip their NOTIFY.
    outbox_linger_s: float = Field(default=0.05, ge=0, le=1)
    consumer_batch_size: int = Field(default=50, ge=1, le=1000)
    # How long one pull waits for events when there are none. Shutdown waits for the pull in
    # hand (cancelling it could leave events delivered to a closed subscription, redelivered
    # only after the ack wait), so this bounds how long a stop takes; idle, each consumer asks
    # about twice per period, which costs the broker next to nothing.
    consumer_fetch_timeout_s: float = Field(default=0.25, gt=0, le=30)
    # After a partial batch the consumer waits this long, so under load events are handled
    # (and committed) many at a time instead of one transaction each.
    consumer_linger_s: float = Field(default=0.2, ge=0, le=5)
    consumer_ack_wait_s: float = Field(default=30.0, gt=0)
    consumer_max_deliver: int = Field(default=5, ge=1)
    consumer_backoff_s: list[float] = [1.0, 5.0, 15.0, 60.0]

    @model_validator(mode="after")
    def _secrets_in_production(self) -> CommonSettings:
        uses_secret = "HS256" in self.jwt_algorithms
        if self.env == "production":
            if uses_secret and (
                self.jwt_secret is None
                or self.jwt_secret.get_secret_value() == DEV_JWT_SECRET
                or len(self.jwt_secret.get_secret_value()) < 32
            ):
                raise ValueError(
                    "HELPDESK_JWT_SECRET must be set to a private value of at least 32 characters "
                    "in production (the development secret is refused)"
                )
            if not uses_secret and not (self.jwt_public_key or self.jwt_jwks_url):
                raise ValueError("RS256/ES256 needs HELPDESK_JWT_PUBLIC_KEY or HELPDESK_JWT_JWKS_URL")
        elif uses_secret and self.jwt_secret is None:
            self.jwt_secret = SecretStr(DEV_JWT_SECRET)
        return self
