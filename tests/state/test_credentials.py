"""Credential fetches across replicas: one fetch per token, shared sealed, local fallback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from proxy.credentials.broker import CredentialBroker
from proxy.credentials.cache import CacheKey, CredentialCache
from proxy.credentials.config import ClientCredentialsSpec
from proxy.credentials.providers.client_credentials import ClientCredentialsProvider
from proxy.state.credentials import key_digest
from proxy.state.shared import SharedState
from tests.credentials.conftest import make_broker, parse_backends, route
from tests.peers.cloud.oauth import OAuthServer
from tests.state.conftest import MakeState
from tests.state.redis_server import RedisServer
from tests.support.waiting import eventually

SECRET = "gh-client-secret-value"
MakeBroker = Callable[..., Awaitable[CredentialBroker]]


@pytest.fixture
async def oauth() -> AsyncIterator[OAuthServer]:
    server = await OAuthServer(expires_in=3600).start()
    server.add_client("gh-client", SECRET)
    yield server
    await server.stop()


@pytest.fixture
async def replica_broker(
    oauth: OAuthServer, make_state: MakeState, tmp_path: Path
) -> AsyncIterator[MakeBroker]:
    """A replica's credential broker: its own cache, sharing through its own Redis client."""
    secret = tmp_path / "client-secret"
    secret.write_text(SECRET)
    specs, _ = parse_backends(
        tmp_path,
        f"""
backends:
  app:
    credentials:
      type: client_credentials
      token_url: {oauth.token_url}
      client_id: gh-client
      client_secret_file: {secret}
      scope: [api.read]
""",
    )
    brokers: list[CredentialBroker] = []

    async def make(
        state: SharedState | None = None, refresh_ratio: float = 0.8, expiry_margin: float = 10.0
    ) -> CredentialBroker:
        state = state or await make_state()
        cache = CredentialCache(
            shared=state.credentials, refresh_ratio=refresh_ratio, expiry_margin=expiry_margin
        )
        broker = await make_broker(specs, cache=cache)
        brokers.append(broker)
        return broker

    yield make
    for broker in brokers:
        await broker.close()


def fallbacks() -> float:
    sample = "gatehouse_state_unreachable_total"
    return REGISTRY.get_sample_value(sample, {"component": "credentials"}) or 0.0


async def test_200_concurrent_cold_requests_across_two_replicas_fetch_one_token(
    oauth: OAuthServer, replica_broker: MakeBroker
) -> None:
    one, two = await replica_broker(), await replica_broker()
    oauth.delay = 0.1  # keep the fetch in flight while the herd arrives on both
    results = await asyncio.gather(
        *(broker.headers("app", route(), None) for _ in range(100) for broker in (one, two))
    )
    assert oauth.calls["token"] == 1
    assert len({tuple(r) for r in results}) == 1


async def test_the_shared_token_is_sealed_at_rest_and_lives_until_it_expires(
    oauth: OAuthServer, replica_broker: MakeBroker, redis_server: RedisServer
) -> None:
    one = await replica_broker()
    ((_, value),) = await one.headers("app", route(), None)
    with redis_server.inspect() as plain:
        (key,) = plain.keys("gatehouse:cred:*")
        stored = plain.get(key)
        ttl = plain.pttl(key)
        assert plain.keys("gatehouse:cred-lock:*") == []  # released after the fetch
    assert stored is not None
    token = value.removeprefix("Bearer ").encode()
    assert token not in stored and token[-40:] not in stored
    assert b"gh-client" not in key and SECRET.encode() not in stored
    assert 3_500_000 < ttl <= 3_600_000


async def test_redis_down_means_each_replica_fetches_for_itself(
    oauth: OAuthServer, replica_broker: MakeBroker, redis_server: RedisServer
) -> None:
    one, two = await replica_broker(), await replica_broker()
    redis_server.stop()
    before = fallbacks()
    oauth.delay = 0.05
    results = await asyncio.gather(
        *(broker.headers("app", route(), None) for _ in range(50) for broker in (one, two))
    )
    assert len(results) == 100
    assert oauth.calls["token"] == 2  # still single flight within each replica
    assert fallbacks() >= before + 2


async def test_a_token_an_upstream_refused_is_replaced_once_for_all_replicas(
    oauth: OAuthServer, replica_broker: MakeBroker
) -> None:
    one, two = await replica_broker(), await replica_broker()
    first = await one.headers("app", route(), None)
    assert await two.headers("app", route(), None) == first
    # Both replicas see the upstream answer 401 to that token.
    one.invalidate("app", None)
    two.invalidate("app", None)
    renewed = await one.headers("app", route(), None)
    assert renewed != first
    assert await two.headers("app", route(), None) == renewed
    assert oauth.calls["token"] == 2


async def test_refresh_ahead_fetches_the_next_token_once_for_all_replicas(
    oauth: OAuthServer, replica_broker: MakeBroker
) -> None:
    oauth.expires_in = 20
    # Refresh at 10% of the lifetime (2 s) instead of 80%: the test stays short.
    one = await replica_broker(refresh_ratio=0.1, expiry_margin=1.0)
    two = await replica_broker(refresh_ratio=0.1, expiry_margin=1.0)
    first = await one.headers("app", route(), None)
    assert await two.headers("app", route(), None) == first
    await eventually(lambda: oauth.calls["token"] >= 2, timeout=6.0)
    await asyncio.sleep(0.3)  # the second replica's refresh, if it were to fetch
    assert oauth.calls["token"] == 2
    renewed = await one.headers("app", route(), None)
    assert renewed != first
    assert await two.headers("app", route(), None) == renewed


async def test_a_lock_left_by_a_dead_replica_delays_the_fetch_by_the_lock_ttl_at_most(
    oauth: OAuthServer, replica_broker: MakeBroker, make_state: MakeState, tmp_path: Path
) -> None:
    state = await make_state(lock_ttl=0.5)
    one = await replica_broker(state)
    spec = ClientCredentialsSpec(
        backend="app",
        source="x",
        token_url=oauth.token_url,
        client_id="gh-client",
        auth_method="client_secret_basic",
        scope=("api.read",),
    )
    key = CacheKey("client_credentials", "app", ClientCredentialsProvider(spec).shape())
    # A replica took the lock and died: nobody releases it, nobody publishes.
    await state.client.run(lambda r: r.set(state.client.key("cred-lock", key_digest(key)), "x"))
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await one.headers("app", route(), None)
    assert 0.4 < loop.time() - started < 3.0
    assert oauth.calls["token"] == 1
