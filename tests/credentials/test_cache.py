"""The one credential cache: single flight, refresh ahead, stale on error, fail closed."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest
from aiohttp import web
from prometheus_client import REGISTRY

from proxy.credentials.cache import CacheKey, Credential, CredentialCache, CredentialFetchError
from proxy.errors import UpstreamCredentialsUnavailable
from tests.credentials.conftest import make_broker, parse_backends, route
from tests.peers.cloud.oauth import OAuthServer
from tests.peers.cloud.server import PeerServer
from tests.support.waiting import eventually


def _yaml(oauth: OAuthServer, secret_file: Path) -> str:
    return f"""
backends:
  app:
    credentials:
      type: client_credentials
      token_url: {oauth.token_url}
      client_id: gh-client
      client_secret_file: {secret_file}
      scope: [api.read, api.write]
      audience: https://app.test
"""


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_thousand_concurrent_requests_on_cold_cache_cause_exactly_one_fetch(
    oauth: OAuthServer, secret_file: Path, tmp_path: Path
) -> None:
    specs, _ = parse_backends(tmp_path, _yaml(oauth, secret_file))
    oauth.delay = 0.05  # keep the fetch in flight while the herd arrives
    broker = await make_broker(specs)
    try:
        results = await asyncio.gather(*(broker.headers("app", route(), None) for _ in range(1000)))
    finally:
        await broker.close()
    assert oauth.calls["token"] == 1
    assert len({tuple(r) for r in results}) == 1
    ((name, value),) = results[0]
    assert name == "Authorization"
    claims = oauth.issuer.verify(value.removeprefix("Bearer "), "https://app.test")
    assert claims["scope"] == "api.read api.write"
    assert claims["sub"] == "gh-client"


async def test_cached_token_keeps_being_served_while_the_token_endpoint_is_down(
    oauth: OAuthServer, secret_file: Path, tmp_path: Path
) -> None:
    specs, _ = parse_backends(tmp_path, _yaml(oauth, secret_file))
    broker = await make_broker(specs)
    try:
        first = await broker.headers("app", route(), None)
        oauth.down = True
        for _ in range(50):
            assert await broker.headers("app", route(), None) == first
    finally:
        await broker.close()
    assert oauth.calls["token"] == 1


async def test_after_expiry_with_endpoint_down_requests_fail_closed(
    oauth: OAuthServer, secret_file: Path, tmp_path: Path
) -> None:
    oauth.expires_in = 2
    specs, _ = parse_backends(tmp_path, _yaml(oauth, secret_file))
    cache = CredentialCache(expiry_margin=0.5, backoff_base=0.1, backoff_max=0.2)
    broker = await make_broker(specs, cache=cache)
    try:
        await broker.headers("app", route(), None)
        oauth.down = True
        await asyncio.sleep(1.6)  # past exp - margin
        with pytest.raises(UpstreamCredentialsUnavailable) as err:
            await broker.headers("app", route(), None)
        assert err.value.status == 503
        assert err.value.reason == "upstream_credentials_unavailable"
        assert "503" in err.value.detail  # why, for the operator's log
        # The endpoint recovering brings requests back without a restart.
        oauth.down = False
        await asyncio.sleep(0.25)  # past the backoff window
        assert await broker.headers("app", route(), None)
    finally:
        await broker.close()


def _cached(cache: CredentialCache) -> Credential:
    [(_, credential)] = cache.credentials()
    return credential


# The waits below are for what the cache does on its own (a refresh at 80% of the
# lifetime, retries with backoff), not fixed sleeps: a busy machine can hold any
# step up for longer than a guess allows.
async def test_refresh_ahead_replaces_the_token_before_it_expires(
    oauth: OAuthServer, secret_file: Path, tmp_path: Path
) -> None:
    oauth.expires_in = 3
    specs, _ = parse_backends(tmp_path, _yaml(oauth, secret_file))
    cache = CredentialCache(expiry_margin=0.2)
    broker = await make_broker(specs, cache=cache)
    try:
        first = await broker.headers("app", route(), None)
        old = _cached(cache)
        refreshes = _metric("gatehouse_credential_cache_total", backend="app", result="refresh")
        # No request meanwhile: the refresh happens on its own, at 2.4 s.
        await eventually(lambda: _cached(cache) is not old, timeout=10)
        assert time.time() < old.expires_at - 0.2  # while the old token was still usable
        assert oauth.calls["token"] == 2
        assert await broker.headers("app", route(), None) != first
        assert (
            _metric("gatehouse_credential_cache_total", backend="app", result="refresh")
            == refreshes + 1
        )
    finally:
        await broker.close()


async def test_failed_refresh_serves_stale_token_and_retries_with_backoff(
    oauth: OAuthServer, secret_file: Path, tmp_path: Path
) -> None:
    oauth.expires_in = 4
    specs, _ = parse_backends(tmp_path, _yaml(oauth, secret_file))
    cache = CredentialCache(expiry_margin=0.2, backoff_base=0.2, backoff_max=0.4)
    broker = await make_broker(specs, cache=cache)

    def failed_fetches() -> float:
        return _metric(
            "gatehouse_credential_fetch_total",
            backend="app",
            provider="client_credentials",
            result="error",
        )

    try:
        first = await broker.headers("app", route(), None)
        old = _cached(cache)
        before = failed_fetches()
        oauth.down = True
        await eventually(lambda: failed_fetches() > before, timeout=10)  # the refresh at 3.2 s
        assert time.time() < old.expires_at - 0.2  # the refresh failed before expiry ...
        assert await broker.headers("app", route(), None) == first  # ... so the token is served
        assert _metric("gatehouse_credential_cache_total", backend="app", result="stale") >= 1
        attempts = oauth.attempts["/token"]
        oauth.down = False
        # Retried every 0.1-0.4 s by itself, without a request waiting for it.
        await eventually(lambda: _cached(cache) is not old, timeout=10)
        assert oauth.attempts["/token"] > attempts
        assert await broker.headers("app", route(), None) != first
    finally:
        await broker.close()


async def test_invalidate_makes_the_next_request_fetch_a_new_token(
    oauth: OAuthServer, secret_file: Path, tmp_path: Path
) -> None:
    specs, _ = parse_backends(tmp_path, _yaml(oauth, secret_file))
    broker = await make_broker(specs)
    try:
        first = await broker.headers("app", route(), None)
        assert await broker.headers("app", route(), None) == first
        broker.invalidate("app", None)
        second = await broker.headers("app", route(), None)
    finally:
        await broker.close()
    assert oauth.calls["token"] == 2
    assert second != first


async def test_an_upstream_refusing_every_token_gets_a_few_refetches_a_minute(
    oauth: OAuthServer, secret_file: Path, tmp_path: Path
) -> None:
    # A misconfigured upstream answers 401 to every token: each request would
    # invalidate and refetch, turning the caller's traffic into token requests.
    now = [1000.0]
    specs, _ = parse_backends(tmp_path, _yaml(oauth, secret_file))
    cache = CredentialCache(clock=lambda: now[0], invalidations_per_minute=3)
    broker = await make_broker(specs, cache=cache)
    try:
        seen = [await broker.headers("app", route(), None)]
        for _ in range(3):  # genuine revocations, one after another: each refetched
            broker.invalidate("app", None)
            seen.append(await broker.headers("app", route(), None))
            now[0] += 1.0
        assert oauth.calls["token"] == 4
        for _ in range(20):  # then the same token, no fetch, until the minute is over
            broker.invalidate("app", None)
            assert await broker.headers("app", route(), None) == seen[-1]
        assert oauth.calls["token"] == 4
        now[0] += 60.0
        broker.invalidate("app", None)
        seen.append(await broker.headers("app", route(), None))
    finally:
        await broker.close()
    assert oauth.calls["token"] == 5
    assert len({str(h) for h in seen}) == 5


async def test_repeat_failures_inside_the_backoff_window_do_not_hit_the_endpoint() -> None:
    calls = 0

    async def fetch() -> Credential:
        nonlocal calls
        calls += 1
        raise CredentialFetchError("token endpoint answered 503")

    cache = CredentialCache(backoff_base=5.0)
    key = CacheKey("client_credentials", "app")
    try:
        for _ in range(20):
            with pytest.raises(UpstreamCredentialsUnavailable):
                await cache.get(key, fetch)
    finally:
        await cache.close()
    assert calls == 1


async def test_keys_differing_in_shape_or_caller_never_share_a_token() -> None:
    issued: list[str] = []

    def fetcher(value: str) -> object:
        async def fetch() -> Credential:
            issued.append(value)
            return Credential("Authorization", value, time.time() + 600)

        return fetch

    cache = CredentialCache()
    keys = [
        CacheKey("client_credentials", "app", ("aud-a",)),
        CacheKey("client_credentials", "app", ("aud-b",)),
        CacheKey("client_credentials", "other", ("aud-a",)),
        CacheKey("token_exchange", "app", ("aud-a",), caller="alice"),
        CacheKey("token_exchange", "app", ("aud-a",), caller="bob"),
    ]
    try:
        got = [await cache.get(k, fetcher(f"tok-{i}")) for i, k in enumerate(keys)]  # type: ignore[arg-type]
        again = [await cache.get(k, fetcher("unused")) for k in keys]  # type: ignore[arg-type]
    finally:
        await cache.close()
    assert [c.value for c in got] == [f"tok-{i}" for i in range(5)]
    assert again == got
    assert "unused" not in issued


async def test_invalidate_for_one_caller_keeps_other_callers_tokens() -> None:
    async def fetch() -> Credential:
        return Credential("Authorization", "t", time.time() + 600)

    cache = CredentialCache()
    try:
        for who in ("alice", "bob"):
            await cache.get(CacheKey("token_exchange", "app", caller=who), fetch)
        await cache.get(CacheKey("client_credentials", "app"), fetch)
        assert cache.invalidate("app", "alice") == 2  # alice's and the shared one
        assert len(cache) == 1
    finally:
        await cache.close()


async def test_fetch_failures_are_logged_without_secrets_or_tokens(
    oauth: OAuthServer, secret_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    oauth.expires_in = 2
    specs, _ = parse_backends(tmp_path, _yaml(oauth, secret_file))
    broker = await make_broker(specs, cache=CredentialCache(expiry_margin=0.5, backoff_base=0.1))
    try:
        ((_, value),) = await broker.headers("app", route(), None)
        broker.invalidate("app", None)
        oauth.clients["gh-client"].secret = "rotated"  # our secret is now wrong: 401
        with pytest.raises(UpstreamCredentialsUnavailable) as err:
            await broker.headers("app", route(), None)
    finally:
        await broker.close()
    token = value.removeprefix("Bearer ")
    text = (
        "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
        + str(err.value)
        + err.value.detail
    )
    assert "invalid_client" in text  # the reason is there...
    assert token not in text  # ...the token and the secret are not
    assert "s3cr3t" not in text


async def test_metrics_count_fetches_and_lookups_and_show_time_left(
    oauth: OAuthServer, secret_file: Path, tmp_path: Path
) -> None:
    specs, _ = parse_backends(tmp_path, _yaml(oauth, secret_file).replace("app:", "metered:"))
    oauth.expires_in = 600

    def sample(name: str, **labels: str) -> float:
        return _metric(name, backend="metered", **labels)

    ok = sample("gatehouse_credential_fetch_total", provider="client_credentials", result="ok")
    hits = sample("gatehouse_credential_cache_total", result="hit")
    misses = sample("gatehouse_credential_cache_total", result="miss")
    broker = await make_broker(specs)
    try:
        for _ in range(3):
            await broker.headers("metered", route("metered"), None)
    finally:
        await broker.close()
    assert (
        sample("gatehouse_credential_fetch_total", provider="client_credentials", result="ok")
        == ok + 1
    )
    assert sample("gatehouse_credential_cache_total", result="miss") == misses + 1
    assert sample("gatehouse_credential_cache_total", result="hit") == hits + 2
    assert 590 < sample("gatehouse_credential_expiry_seconds") <= 600


async def test_failed_per_caller_entries_do_not_accumulate() -> None:
    async def fetch() -> Credential:
        raise CredentialFetchError("the caller has no token to exchange")

    # Entries are pruned after the jittered backoff (0.5-1 s here): long enough
    # for all 100 failures to be recorded first, even on a busy machine.
    cache = CredentialCache(backoff_base=1.0, backoff_max=1.0)
    try:
        for i in range(100):
            with pytest.raises(UpstreamCredentialsUnavailable):
                await cache.get(CacheKey("token_exchange", "app", caller=f"user-{i}"), fetch)
        assert len(cache) == 100
        await asyncio.sleep(1.1)
        assert len(cache) == 0
    finally:
        await cache.close()


async def test_a_token_that_would_inject_headers_is_refused(
    secret_file: Path, tmp_path: Path
) -> None:
    server = PeerServer()

    async def token(request: web.Request) -> web.Response:
        return web.json_response(
            {"access_token": "abc\r\nX-Injected: 1", "token_type": "Bearer", "expires_in": 60}
        )

    server.app.router.add_post("/token", token)
    await server.start()
    specs, _ = parse_backends(
        tmp_path,
        f"""
backends:
  app:
    credentials:
      type: client_credentials
      token_url: {server.url}/token
      client_id: gh-client
      client_secret_file: {secret_file}
""",
    )
    broker = await make_broker(specs)
    try:
        with pytest.raises(UpstreamCredentialsUnavailable) as err:
            await broker.headers("app", route(), None)
    finally:
        await broker.close()
        await server.stop()
    assert "not a valid bearer token" in err.value.detail
