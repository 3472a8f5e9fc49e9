"""Gateway settings: upstream locations, edge limits and the dev token issuer."""

from pydantic import AliasChoices, Field

from libs.common.settings import CommonSettings


class Settings(CommonSettings):
    service_name: str = "gateway"

    # The launcher sets HELPDESK_GATEWAY_DATABASE_URL (the identity schema's login role).
    database_url: str = Field(
        default="postgresql+asyncpg://postgres@127.0.0.1:55432/helpdesk",
        validation_alias=AliasChoices(
            "HELPDESK_GATEWAY_DATABASE_URL", "DATABASE_URL", "HELPDESK_DATABASE_URL"
        ),
    )
    # The gateway only reads users and login failures; a small pool is plenty.
    db_pool_size: int = Field(default=5, ge=1, le=200)

    tickets_url: str = "http://127.0.0.1:8101"
    summarization_url: str = "http://127.0.0.1:8102"
    notifications_url: str = "http://127.0.0.1:8103"
    analytics_url: str = "http://127.0.0.1:8104"

    cors_origins: list[str] = []
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    # Attachment uploads (multipart); keep it a little above the tickets service's file limit.
    upload_max_body_bytes: int = Field(default=30 * 1024 * 1024, ge=1024)
    upstream_timeout_s: float = Field(default=30.0, gt=0)
    upstream_connect_timeout_s: float = Field(default=5.0, gt=0)
    upstream_max_connections: int = Field(default=100, ge=1)
    openapi_cache_s: float = Field(default=30.0, ge=0)
    gzip_minimum_bytes: int = Field(default=1000, ge=0)

    # Proxied requests per second per tenant and per user, 0: no limit. Each gateway process
    # counts on its own (N replicas admit N times the rate). Bursts: up to burst_s of the rate.
    tenant_rate_limit_per_s: float = Field(default=0, ge=0)
    user_rate_limit_per_s: float = Field(default=0, ge=0)
    rate_limit_burst_s: float = Field(default=2.0, gt=0, le=3600)

    token_ttl_s: int = Field(default=3600, ge=60, le=86_400)
    login_max_failures: int = Field(default=5, ge=1)  # per account
    login_max_failures_per_ip: int = Field(default=50, ge=1)
    login_failure_window_s: int = Field(default=900, ge=1)
