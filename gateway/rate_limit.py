"""Request rate limits at the edge, per tenant and per user: one tenant's runaway integration
cannot take the capacity every tenant shares, nor one script its own colleagues' share.

Token buckets in the gateway process: each gateway process (worker or replica) counts on its
own, so with N of them a caller can reach N times the configured rate. That is the usual local
rate limit; it needs no shared store and costs ~1 µs per request.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class TokenBuckets:
    """One bucket per key, refilled at `rate_per_s` up to `burst` requests."""

    # Buckets full again are forgotten when there are more than this many (the rest stay).
    MAX_KEYS = 10_000

    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("a bucket needs a positive rate and a burst of at least one request")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def take(self, key: str) -> float | None:
        """Take one request's token: None when there was one, else the seconds until there is."""
        now = self._clock()
        tokens, at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate_per_s)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / self.rate_per_s
        self._buckets[key] = (tokens - 1, now)
        if len(self._buckets) > self.MAX_KEYS:
            self._forget_full(now)
        return None

    def _forget_full(self, now: float) -> None:
        for key, (tokens, at) in list(self._buckets.items()):
            if tokens + (now - at) * self.rate_per_s >= self.burst:
                del self._buckets[key]


class RateLimiter:
    """The tenant's and the user's bucket; either limit is off when its rate is 0."""

    def __init__(
        self,
        tenant_rate_per_s: float,
        user_rate_per_s: float,
        burst_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        def buckets(rate: float) -> TokenBuckets | None:
            return TokenBuckets(rate, max(1, math.ceil(rate * burst_s)), clock) if rate > 0 else None

        self.tenant = buckets(tenant_rate_per_s)
        self.user = buckets(user_rate_per_s)

    def refusal(self, tenant: str, user_id: str) -> tuple[str, int] | None:
        """None if the request may pass, else (what is over its limit, whole seconds to wait)."""
        if self.user is not None and (wait := self.user.take(f"{tenant}/{user_id}")) is not None:
            return f"user {user_id} is over {self.user.rate_per_s:g} requests/s", math.ceil(wait)
        if self.tenant is not None and (wait := self.tenant.take(tenant)) is not None:
            return f"tenant {tenant} is over {self.tenant.rate_per_s:g} requests/s", math.ceil(wait)
        return None
