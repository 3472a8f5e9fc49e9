"""Rate limits per tenant and per user at the gateway: token buckets, and what a client sees."""

from __future__ import annotations

import pytest

from gateway.app import create_app
from gateway.rate_limit import RateLimiter, TokenBuckets
from tests.conftest import Infra, app_client, auth_headers
from tests.gateway.conftest import EchoUpstream, gateway_settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_admits_its_burst_then_one_request_per_refill():
    clock = Clock()
    buckets = TokenBuckets(rate_per_s=2, burst=3, clock=clock)
    assert [buckets.take("acme") for _ in range(3)] == [None, None, None]
    assert buckets.take("acme") == pytest.approx(0.5)  # the next token comes in 1/rate s
    assert buckets.take("globex") is None  # every key has its own bucket
    clock.now += 0.25
    assert buckets.take("acme") == pytest.approx(0.25)  # refused requests take nothing
    clock.now += 0.25
    assert buckets.take("acme") is None
    assert buckets.take("acme") == pytest.approx(0.5)
    clock.now += 60  # a quiet minute refills the bucket to its burst, not beyond
    assert [buckets.take("acme") for _ in range(4)][-2:] == [None, pytest.approx(0.5)]


def test_full_buckets_are_forgotten_when_there_are_too_many():
    clock = Clock()
    buckets = TokenBuckets(rate_per_s=1, burst=2, clock=clock)
    buckets.MAX_KEYS = 3
    for key in ("a", "b", "c"):
        buckets.take(key)
    buckets.take("busy")
    buckets.take("busy")
    clock.now += 5  # a, b and c are full again and forgotten; busy, used now, keeps its count
    assert buckets.take("busy") is None
    assert set(buckets._buckets) == {"busy"}
    assert buckets.take("busy") is None and buckets.take("busy") is not None


def test_a_limiter_names_the_limit_the_request_is_over():
    clock = Clock()
    limiter = RateLimiter(tenant_rate_per_s=3, user_rate_per_s=1, burst_s=1, clock=clock)
    assert limiter.refusal("acme", "kim") is None
    assert limiter.refusal("acme", "kim") == ("user kim is over 1 requests/s", 1)
    assert limiter.refusal("acme", "lee") is None
    assert limiter.refusal("acme", "park") is None
    assert limiter.refusal("acme", "choi") == ("tenant acme is over 3 requests/s", 1)
    assert limiter.refusal("globex", "choi") is None
    unlimited = RateLimiter(tenant_rate_per_s=0, user_rate_per_s=0, burst_s=1, clock=clock)
    assert all(unlimited.refusal("acme", "kim") is None for _ in range(1000))


@pytest.mark.asyncio(loop_scope="session")
async def test_a_caller_over_its_limit_gets_a_429_problem_and_the_service_is_spared(
    infra: Infra, echo_upstream: EchoUpstream
) -> None:
    # Bursts of 2 requests per user and 4 per tenant, then one every 10 s / 5 s.
    limits = {"user_rate_limit_per_s": 0.1, "tenant_rate_limit_per_s": 0.2, "rate_limit_burst_s": 20}
    settings = gateway_settings(infra, echo_upstream.url, **limits)
    async with app_client(create_app(settings)) as client:
        kim = auth_headers(infra, "ratelimited", ["agent"], user_id="kim")
        for _ in range(2):
            assert (await client.get("/api/v1/tickets/1", headers=kim)).status_code == 200
        hits_before = echo_upstream.hits
        refused = await client.get("/api/v1/tickets/1", headers=kim)
        assert refused.status_code == 429
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.headers["retry-after"] == "10"
        problem = refused.json()
        assert problem["type"].endswith("/rate-limited")
        assert problem["detail"] == "user kim is over 0.1 requests/s; retry after 10 s"
        assert echo_upstream.hits == hits_before

        lee = auth_headers(infra, "ratelimited", ["agent"], user_id="lee")
        assert (await client.get("/api/v1/tickets/1", headers=lee)).status_code == 200
        assert (await client.get("/api/v1/tickets/1", headers=lee)).status_code == 200
        park = auth_headers(infra, "ratelimited", ["agent"], user_id="park")
        over_tenant = await client.get("/api/v1/tickets/1", headers=park)
        assert over_tenant.status_code == 429
        assert over_tenant.json()["detail"] == "tenant ratelimited is over 0.2 requests/s; retry after 5 s"

        other_tenant = auth_headers(infra, "acme", ["agent"], user_id="park")
        assert (await client.get("/api/v1/tickets/1", headers=other_tenant)).status_code == 200
