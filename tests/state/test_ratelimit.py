"""Shared token buckets: one limit across replicas, atomic, local fallback in outages."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from prometheus_client import REGISTRY

from proxy.policy.model import RateLimit, Route
from proxy.state.ratelimit import SharedRateLimiter
from tests.state.conftest import MakeState
from tests.state.redis_server import RedisServer
from tests.support.waiting import eventually

TEN_PER_MINUTE = RateLimit(requests=10, per=60.0, burst=10)


def limited(name: str = "api", limit: RateLimit | None = TEN_PER_MINUTE) -> Route:
    return Route(name=name, backend="up", source="routes.yaml:1", rate_limit=limit)


def fallbacks() -> float:
    sample = "gatehouse_state_unreachable_total"
    return REGISTRY.get_sample_value(sample, {"component": "ratelimit"}) or 0.0


async def two_replicas(make_state: MakeState) -> tuple[SharedRateLimiter, SharedRateLimiter]:
    return (await make_state()).rate_limiter(), (await make_state()).rate_limiter()


async def test_a_limit_of_ten_admits_exactly_ten_across_two_replicas(
    make_state: MakeState,
) -> None:
    one, two = await two_replicas(make_state)
    route, now = limited(), time.time()
    answers = [await (one if i % 2 else two).allow(route, "sub:alice", now) for i in range(30)]
    assert answers.count(True) == 10
    assert answers[:10] == [True] * 10


async def test_concurrent_requests_on_both_replicas_never_share_out_more_than_the_burst(
    make_state: MakeState,
) -> None:
    one, two = await two_replicas(make_state)
    route, now = limited(), time.time()
    before = fallbacks()
    answers = await asyncio.gather(
        *(r.allow(route, "sub:alice", now) for _ in range(50) for r in (one, two))
    )
    assert fallbacks() == before  # every answer came from the shared bucket
    assert answers.count(True) == 10


async def test_buckets_refill_at_the_configured_rate(make_state: MakeState) -> None:
    one, two = await two_replicas(make_state)
    route, now = limited(), 1_000_000.0
    assert [await one.allow(route, "k", now) for _ in range(10)] == [True] * 10
    assert not await two.allow(route, "k", now + 5.9)
    assert await two.allow(route, "k", now + 6.0)  # 10/min: one token every 6 s
    assert not await one.allow(route, "k", now + 6.0)
    # A clock behind the bucket's never refills it backwards.
    assert not await one.allow(route, "k", now + 1.0)


async def test_callers_and_routes_have_their_own_buckets(make_state: MakeState) -> None:
    one, two = await two_replicas(make_state)
    now = time.time()
    for _ in range(10):
        assert await one.allow(limited("api"), "sub:alice", now)
    assert not await two.allow(limited("api"), "sub:alice", now)
    assert await two.allow(limited("api"), "sub:bob", now)
    assert await two.allow(limited("other"), "sub:alice", now)


async def test_a_changed_limit_starts_fresh_buckets(make_state: MakeState) -> None:
    one, _ = await two_replicas(make_state)
    now = time.time()
    for _ in range(10):
        assert await one.allow(limited(), "k", now)
    assert not await one.allow(limited(), "k", now)
    assert await one.allow(limited(limit=RateLimit(20, 60.0, 20)), "k", now)


async def test_routes_without_a_limit_pass_and_store_nothing(
    make_state: MakeState, redis_server: RedisServer
) -> None:
    one, _ = await two_replicas(make_state)
    for _ in range(20):
        assert await one.allow(limited(limit=None), "k", time.time())
    with redis_server.inspect() as plain:
        assert plain.keys("*") == []


async def test_buckets_are_keyed_by_prefix_route_and_a_hash_of_the_caller(
    make_state: MakeState, redis_server: RedisServer
) -> None:
    one = (await make_state(key_prefix="gh-test:")).rate_limiter()
    assert await one.allow(limited("api"), "sub:alice@example.test", time.time())
    with redis_server.inspect() as plain:
        (key,) = plain.keys("*")
        assert key.startswith(b"gh-test:rl:api:10-60-10:")
        assert b"alice" not in key
        assert 0 < plain.pttl(key) <= 61_000  # gone once the bucket would be full again


async def test_redis_down_falls_back_to_local_buckets_and_recovers_to_shared_ones(
    make_state: MakeState, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "gatehouse.state")
    states = [await make_state(), await make_state()]
    one, two = (state.rate_limiter() for state in states)
    route, now = limited(), time.time()
    for _ in range(4):
        assert await one.allow(route, "k", now)

    redis_server.stop()
    before = fallbacks()
    # Each replica now limits on its own: the local bucket starts full.
    local_one = [await one.allow(route, "k", now) for _ in range(12)]
    local_two = [await two.allow(route, "k", now) for _ in range(12)]
    assert local_one.count(True) == 10 and local_two.count(True) == 10
    assert fallbacks() == before + 24
    warnings = [r for r in caplog.records if "own buckets" in r.getMessage()]
    assert len(warnings) == 2  # once per replica and outage, not per request

    redis_server.start()  # empty: no persistence
    await eventually(lambda: all(state.available() for state in states))
    shared = [await (one if i % 2 else two).allow(route, "k", now) for i in range(12)]
    assert shared.count(True) == 10
    assert any("shared across replicas again" in r.getMessage() for r in caplog.records)
