"""Rate limit: the route's budget for this caller (its subject, else its address)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from proxy.errors import RateLimited, Reason
from proxy.model import Identity, RequestFacts
from proxy.observability import metrics
from proxy.policy.model import Route
from proxy.ratelimit import RateLimiter, rate_key

if TYPE_CHECKING:
    from proxy.state.ratelimit import SharedRateLimiter


@dataclass(frozen=True, slots=True)
class RateLimit:
    limiter: RateLimiter | SharedRateLimiter | None
    ipv6_prefix: int  # an IPv6 client's bucket is its /prefix

    async def __call__(
        self, route: Route, facts: RequestFacts, identity: Identity | None, now: float
    ) -> None:
        """Returns when the request is within the route's budget; 429 otherwise."""
        if route.rate_limit is None or self.limiter is None:
            return
        allowed = self.limiter.allow(route, rate_key(identity, facts, self.ipv6_prefix), now)
        if not isinstance(allowed, bool):
            allowed = await allowed  # shared buckets: answered by Redis
        if not allowed:
            metrics.child(metrics.DECISIONS, route.name, "deny", Reason.RATE_LIMITED).inc()
            raise RateLimited()
