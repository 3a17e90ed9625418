"""Token buckets per route and caller, with the clock passed in."""

from __future__ import annotations

import pytest
from cachetools import TTLCache
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.policy.model import RateLimit, Route
from proxy.ratelimit import RateLimiter, rate_key
from tests.policy.support import caller, facts


def route(requests: int = 2, per: float = 1.0, burst: int = 2, name: str = "r") -> Route:
    return Route(name=name, backend="b", source="t:1", rate_limit=RateLimit(requests, per, burst))


def test_burst_then_refusal() -> None:
    limiter = RateLimiter()
    r = route(requests=1, per=10.0, burst=3)
    assert [limiter.allow(r, "k", 100.0) for _ in range(4)] == [True, True, True, False]


def test_tokens_refill_at_requests_per_period() -> None:
    limiter = RateLimiter()
    r = route(requests=2, per=1.0, burst=2)  # one token every 0.5 s
    assert limiter.allow(r, "k", 0.0) and limiter.allow(r, "k", 0.0)
    assert not limiter.allow(r, "k", 0.4)
    assert limiter.remaining(r, "k", 0.4) == pytest.approx(0.8)
    assert limiter.allow(r, "k", 0.5)
    assert not limiter.allow(r, "k", 0.5)
    assert limiter.remaining(r, "k", 10.0) == pytest.approx(2.0)  # capped at burst


def test_buckets_are_per_caller_and_per_route() -> None:
    limiter = RateLimiter()
    a, b = route(burst=1, requests=1, name="a"), route(burst=1, requests=1, name="b")
    assert limiter.allow(a, "alice", 0.0)
    assert not limiter.allow(a, "alice", 0.0)
    assert limiter.allow(a, "bob", 0.0)
    assert limiter.allow(b, "alice", 0.0)


def test_routes_without_a_limit_always_pass() -> None:
    limiter = RateLimiter()
    r = Route(name="free", backend="b", source="t:1")
    assert all(limiter.allow(r, "k", 0.0) for _ in range(1000))


def test_an_expired_bucket_is_as_good_as_a_full_one() -> None:
    limiter = RateLimiter()
    r = route(requests=1, per=60.0, burst=1)
    assert limiter.allow(r, "k", 0.0)
    assert not limiter.allow(r, "k", 59.0)
    assert limiter.allow(r, "k", 61.0)


def test_memory_is_bounded_by_max_keys() -> None:
    limiter = RateLimiter(max_keys_per_route=10)
    r = route(requests=1, per=3600.0, burst=1)
    for i in range(1000):
        limiter.allow(r, f"k{i}", 0.0)
    buckets = next(iter(limiter._routes.values()))
    assert len(buckets.cache) <= 10


def test_a_changed_limit_starts_fresh_buckets() -> None:
    limiter = RateLimiter()
    assert limiter.allow(route(requests=1, per=60.0, burst=1), "k", 0.0)
    assert not limiter.allow(route(requests=1, per=60.0, burst=1), "k", 0.0)
    assert limiter.allow(route(requests=5, per=60.0, burst=5), "k", 0.0)


def test_rate_key_uses_issuer_and_subject_or_client_address() -> None:
    assert rate_key(caller("alice", issuer="https://a"), facts()) == "sub:https://a|alice"
    assert rate_key(caller("alice", issuer="https://b"), facts()) != rate_key(
        caller("alice", issuer="https://a"), facts()
    )
    assert rate_key(None, facts(client_ip="192.0.2.9")) == "ip:192.0.2.9"


class TtlCacheBuckets:
    """The buckets as first written on ``cachetools.TTLCache``: the behaviour to keep."""

    def __init__(self, limit: RateLimit, maxsize: int) -> None:
        self.rate = limit.requests / limit.per
        self.capacity = float(limit.burst)
        self.now = 0.0
        self.cache: TTLCache[str, list[float]] = TTLCache(
            maxsize, ttl=self.capacity / self.rate, timer=lambda: self.now
        )

    def take(self, key: str, now: float) -> bool:
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


@settings(max_examples=300, deadline=None)
@given(
    limit=st.builds(
        RateLimit,
        requests=st.integers(1, 5),
        per=st.sampled_from([0.5, 1.0, 4.0]),
        burst=st.integers(1, 4),
    ),
    maxsize=st.integers(1, 4),
    calls=st.lists(
        st.tuples(
            st.booleans(),
            st.sampled_from(["a", "b", "c", "d", "e"]),
            st.floats(0.0, 20.0, allow_nan=False),
        ),
        max_size=60,
    ),
)
def test_answers_match_a_ttl_cache_whatever_the_order_of_callers_and_times(
    limit: RateLimit, maxsize: int, calls: list[tuple[bool, str, float]]
) -> None:
    limiter = RateLimiter(max_keys_per_route=maxsize)
    r = Route(name="r", backend="b", source="t:1", rate_limit=limit)
    reference = TtlCacheBuckets(limit, maxsize)
    for take, key, now in calls:
        if take:
            assert limiter.allow(r, key, now) == reference.take(key, now)
        else:
            assert limiter.remaining(r, key, now) == reference.tokens(key, now)
