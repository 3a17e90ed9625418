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

from collections import OrderedDict

from proxy.http.forwarding import address_key
from proxy.model import Identity, RequestFacts
from proxy.policy.model import RateLimit, Route


def rate_key(identity: Identity | None, facts: RequestFacts, ipv6_prefix: int = 64) -> str:
    """The caller a bucket belongs to: the verified subject, else the client address
    (an IPv6 client by its ``/ipv6_prefix``)."""
    if identity is not None:
        return f"sub:{identity.issuer}|{identity.subject}"
    return f"ip:{address_key(facts.client_ip, ipv6_prefix)}"


class _Buckets:
    """One route's buckets: an LRU dict whose entries lapse ``ttl`` after their last take.

    The same behaviour as a ``cachetools.TTLCache`` (entry lifetime from the
    last write on a clock that only moves forward, least recently used out
    first when full), without its per-call bookkeeping: a bucket is updated
    in place, and lapsed entries are dropped from the old end when a new
    caller arrives.
    """

    __slots__ = ("cache", "capacity", "maxsize", "now", "rate", "ttl")

    def __init__(self, limit: RateLimit, maxsize: int) -> None:
        self.rate = limit.requests / limit.per
        self.capacity = float(limit.burst)
        self.ttl = self.capacity / self.rate
        self.maxsize = maxsize
        self.now = 0.0
        # key → [tokens, last refill, lapses at]
        self.cache: OrderedDict[str, list[float]] = OrderedDict()

    def _live(self, key: str) -> list[float] | None:
        bucket = self.cache.get(key)
        if bucket is None:
            return None
        if not self.now < bucket[2]:
            del self.cache[key]  # lapsed: indistinguishable from a fresh full bucket
            return None
        self.cache.move_to_end(key)
        return bucket

    def take(self, key: str, now: float) -> bool:
        # The lapse clock moves forward only (monotonic for the entries).
        if now > self.now:
            self.now = now
        bucket = self._live(key)
        if bucket is None:
            tokens, last = self.capacity, now
        else:
            tokens, last = bucket[0], bucket[1]
            if now > last:
                tokens = min(self.capacity, tokens + (now - last) * self.rate)
                last = now
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        lapses = self.now + self.ttl
        if bucket is not None:
            bucket[0], bucket[1], bucket[2] = tokens, last, lapses
            return allowed
        cache = self.cache
        # Takes keep the oldest-written entries first, so lapsed ones sit at that end.
        while cache and not self.now < next(iter(cache.values()))[2]:
            cache.popitem(last=False)
        if len(cache) >= self.maxsize:
            cache.popitem(last=False)
        cache[key] = [tokens, last, lapses]
        return allowed

    def tokens(self, key: str, now: float) -> float:
        bucket = self._live(key)
        if bucket is None:
            return self.capacity
        tokens, last = bucket[0], bucket[1]
        return min(self.capacity, tokens + max(0.0, now - last) * self.rate)


class RateLimiter:
    """Token buckets keyed by route and caller; routes without ``rate_limit`` always pass."""

    def __init__(self, max_keys_per_route: int = 100_000, max_routes: int = 10_000) -> None:
        self._max_keys = max_keys_per_route
        self._max_routes = max_routes
        # Keyed by the limit too: a reload that changes a route's limit starts fresh buckets.
        self._routes: OrderedDict[tuple[str, RateLimit], _Buckets] = OrderedDict()

    def _table_for(self, route: Route, limit: RateLimit) -> _Buckets:
        ident = (route.name, limit)
        routes = self._routes
        buckets = routes.get(ident)
        if buckets is None:
            if len(routes) >= self._max_routes:
                routes.popitem(last=False)
            buckets = routes[ident] = _Buckets(limit, self._max_keys)
        else:
            routes.move_to_end(ident)
        return buckets

    def allow(self, route: Route, key: str, now: float) -> bool:
        limit = route.rate_limit
        if limit is None:
            return True
        return self._table_for(route, limit).take(key, now)

    def remaining(self, route: Route, key: str, now: float) -> float:
        """Tokens left for a caller (for Retry-After style hints and tests)."""
        limit = route.rate_limit
        if limit is None:
            return float("inf")
        return self._table_for(route, limit).tokens(key, now)
