"""Per-identity token buckets, in memory (one process; not shared between workers).

A bucket holds up to ``burst`` tokens and refills at ``requests / per``
tokens a second; each request takes one. Buckets live in a TTL cache whose
lifetime is the time a bucket needs to refill completely: an expired bucket
is indistinguishable from a fresh full one, so expiry only frees memory and
never changes an answer. ``maxsize`` bounds memory under a flood of distinct
callers (the least recently used buckets go first, which errs towards
admitting: a limit, not an authorisation).

The clock is passed in, so the state is a pure function of calls and times.
"""

from __future__ import annotations

from cachetools import LRUCache, TTLCache

from proxy.http.facts import RequestFacts
from proxy.identity.model import Identity
from proxy.policy.model import RateLimit, Route


def rate_key(identity: Identity | None, facts: RequestFacts) -> str:
    """The caller a bucket belongs to: the verified subject, else the client address."""
    if identity is not None:
        return f"sub:{identity.issuer}|{identity.subject}"
    return f"ip:{facts.client_ip}"


class _Buckets:
    __slots__ = ("cache", "capacity", "now", "rate")

    def __init__(self, limit: RateLimit, maxsize: int) -> None:
        self.rate = limit.requests / limit.per
        self.capacity = float(limit.burst)
        self.now = 0.0
        self.cache: TTLCache[str, list[float]] = TTLCache(
            maxsize, ttl=self.capacity / self.rate, timer=self._clock
        )

    def _clock(self) -> float:
        return self.now

    def take(self, key: str, now: float) -> bool:
        # TTLCache reads the timer on access; move it forward only (monotonic for the cache).
        self.now = max(self.now, now)
        bucket = self.cache.get(key)
        if bucket is None:
            tokens, last = self.capacity, now
        else:
            tokens, last = bucket
            if now > last:
                tokens = min(self.capacity, tokens + (now - last) * self.rate)
                last = now
        if tokens >= 1.0:
            self.cache[key] = [tokens - 1.0, last]
            return True
        self.cache[key] = [tokens, last]
        return False

    def tokens(self, key: str, now: float) -> float:
        bucket = self.cache.get(key)
        if bucket is None:
            return self.capacity
        tokens, last = bucket
        return min(self.capacity, tokens + max(0.0, now - last) * self.rate)


class RateLimiter:
    """Token buckets keyed by route and caller; routes without ``rate_limit`` always pass."""

    def __init__(self, max_keys_per_route: int = 100_000, max_routes: int = 10_000) -> None:
        self._max_keys = max_keys_per_route
        # Keyed by the limit too: a reload that changes a route's limit starts fresh buckets.
        self._routes: LRUCache[tuple[str, RateLimit], _Buckets] = LRUCache(max_routes)

    def _buckets(self, route: Route, limit: RateLimit) -> _Buckets:
        ident = (route.name, limit)
        buckets = self._routes.get(ident)
        if buckets is None:
            buckets = self._routes[ident] = _Buckets(limit, self._max_keys)
        return buckets

    def allow(self, route: Route, key: str, now: float) -> bool:
        limit = route.rate_limit
        if limit is None:
            return True
        return self._buckets(route, limit).take(key, now)

    def remaining(self, route: Route, key: str, now: float) -> float:
        """Tokens left for a caller (for Retry-After style hints and tests)."""
        limit = route.rate_limit
        if limit is None:
            return float("inf")
        return self._buckets(route, limit).tokens(key, now)
