"""Two gatehouse processes sharing one real redis-server behave as one deployment:
browser sessions, logout, rate limits and credential fetches hold across both, and a
Redis outage gives the documented behaviour, then recovers without a restart."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from proxy.identity.session import new_cookie_key
from tests.identity.browser_env import HTML, follow_login, post_logout
from tests.peers.cloud.oauth import OAuthServer
from tests.peers.oidc_provider import RESOURCE, WEB_CLIENT, OidcProvider, rsa_jwk
from tests.state.redis_server import RedisServer, running_redis
from tests.state.replica_env import API, COOKIE, api_get, browser_client
from tests.support.gatehouse import Gatehouse, public_route, start_gatehouse
from tests.support.net import free_port

BACKEND_SECRET = "backend-client-secret"
LIMIT = {"requests": 10, "per": "1m", "burst": 10}


@dataclass
class Deployment:
    one: Gatehouse
    two: Gatehouse
    provider: OidcProvider
    tokens: OAuthServer
    redis: RedisServer
    client_ssl: ssl.SSLContext

    def base(self, gh: Gatehouse) -> str:
        return f"https://localhost:{gh.port}"

    def client(self) -> aiohttp.ClientSession:
        return browser_client(self.client_ssl, limit=200)

    async def login(self, http: aiohttp.ClientSession, via: Gatehouse) -> str:
        """Log in as alice through ``via``; the session cookie's value."""
        base = self.base(via)
        callback = await follow_login(
            http,
            f"{base}/echo/app/page",
            issuer=self.provider.issuer,
            callback_prefix=f"{base}/.gatehouse/callback",
        )
        async with http.get(callback, headers=HTML, allow_redirects=False) as response:
            assert response.status == 302, await response.text()
        return {c.key: c.value for c in http.cookie_jar}[COOKIE]

    async def get(
        self, via: Gatehouse, path: str, *, cookie: str | None = None, token: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else None
        return await api_get(self.base(via) + path, self.client_ssl, cookie=cookie, headers=headers)

    async def metric(self, via: Gatehouse, name: str) -> float | None:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{via.admin_url}/metrics") as response,
        ):
            text = await response.text()
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with running_redis(tmp_path / "redis") as server:
        yield server


@pytest.fixture
async def deployment(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    certs: dict[str, Path],
    upstream_url: str,
    redis_server: RedisServer,
) -> AsyncIterator[Deployment]:
    """Two replicas; a test may pass ``{"provider": {...}, "state": {...}}`` options
    through ``pytest.mark.parametrize("deployment", [...], indirect=True)``."""
    tuned: dict[str, dict[str, Any]] = getattr(request, "param", {})
    ports = (free_port(), free_port())
    provider = OidcProvider(
        keys=[rsa_jwk("rsa-1")],
        redirect_uris=[f"https://localhost:{p}/.gatehouse/callback" for p in ports],
        accounts={"alice": {"email": "alice@example.test", "groups": ["eng"]}},
        options=tuned.get("provider", {}),
    )
    for name, text in (
        ("cookie-keys", new_cookie_key()),
        ("state-key", new_cookie_key()),
        ("client-secret", WEB_CLIENT["client_secret"]),
        ("backend-secret", BACKEND_SECRET),
    ):
        (tmp_path / name).write_text(text + "\n")
    async with AsyncExitStack() as stack:
        await asyncio.to_thread(provider.start)
        stack.push_async_callback(asyncio.to_thread, provider.close)
        tokens = await OAuthServer(expires_in=3600).start()
        stack.push_async_callback(tokens.stop)
        tokens.add_client("gatehouse-backend", BACKEND_SECRET)
        options: dict[str, Any] = {
            "backends": {
                "up": {"urls": [upstream_url]},
                "api": {
                    "urls": [upstream_url],
                    "credentials": {
                        "type": "client_credentials",
                        "token_url": tokens.token_url,
                        "client_id": "gatehouse-backend",
                        "client_secret_file": str(tmp_path / "backend-secret"),
                    },
                },
            },
            "routes": [
                {
                    "name": "app",
                    "path": "/echo/app",
                    "backend": "up",
                    "allow": [{"name": "signed-in", "authenticated": True}],
                },
                public_route("limited", "/echo/limited", "up", rate_limit=LIMIT),
                public_route("orders", "/echo/orders", "api"),
            ],
            "listen": {
                "tls": {
                    "cert_file": str(certs["server_cert"]),
                    "key_file": str(certs["server_key"]),
                }
            },
            "extra": {
                "identity": {
                    "issuers": [{"issuer": provider.issuer, "audiences": [RESOURCE]}],
                    "browser": {
                        "issuer": provider.issuer,
                        "client_id": WEB_CLIENT["client_id"],
                        "client_secret_file": str(tmp_path / "client-secret"),
                        "cookie_keys_file": str(tmp_path / "cookie-keys"),
                        "scopes": ["openid", "email", "profile", "groups"],
                    },
                },
                "state": {
                    "redis_url": redis_server.url,
                    "encryption_key_file": str(tmp_path / "state-key"),
                    "timeout": "250ms",
                    "reconnect_interval": "200ms",
                    **tuned.get("state", {}),
                },
            },
        }
        workdirs = (tmp_path / "replica-1", tmp_path / "replica-2")
        for workdir in workdirs:
            workdir.mkdir()
        started: list[Gatehouse] = []
        for workdir, port in zip(workdirs, ports, strict=True):
            # One at a time, each registered for cleanup as soon as it runs, so a
            # replica that fails to start never leaves the other one behind.
            replica = await asyncio.to_thread(start_gatehouse, workdir, port=port, **options)
            stack.callback(replica.stop)
            started.append(replica)
        one, two = started
        client_ssl = ssl.create_default_context(cafile=str(certs["ca"]))
        yield Deployment(one, two, provider, tokens, redis_server, client_ssl)


async def test_a_login_on_one_replica_is_a_session_on_the_other_until_logout_on_either(
    deployment: Deployment,
) -> None:
    d = deployment
    async with d.client() as http:
        cookie = await d.login(http, via=d.one)
        status, body = await d.get(d.two, "/echo/app/data", cookie=cookie)
        assert status == 200
        seen = dict(body["headers"])
        assert seen["x-gatehouse-subject"] == "alice"
        assert seen["x-gatehouse-email"] == "alice@example.test"
        assert (await post_logout(http, d.base(d.two)))[0] == 303
    # Even with a kept copy of the cookie, the session is gone on every replica.
    for replica in (d.one, d.two):
        status, body = await d.get(replica, "/echo/app/data", cookie=cookie)
        assert status == 401 and body["error"] == "unauthenticated"


async def test_a_rate_limit_of_ten_per_minute_holds_across_both_replicas(
    deployment: Deployment,
) -> None:
    d = deployment
    statuses = [(await d.get(d.one if i % 2 else d.two, "/echo/limited"))[0] for i in range(30)]
    assert statuses.count(200) == 10 and statuses.count(429) == 20
    assert statuses[:10] == [200] * 10


async def test_200_concurrent_cold_requests_across_both_replicas_fetch_one_credential(
    deployment: Deployment,
) -> None:
    d = deployment
    d.tokens.delay = 0.1  # keep the one fetch in flight while the herd arrives
    async with d.client() as http:

        async def one(gh: Gatehouse) -> str:
            async with http.get(f"{d.base(gh)}/echo/orders", headers=API) as r:
                assert r.status == 200
                return str(dict((await r.json())["headers"])["authorization"])

        seen = await asyncio.gather(*(one(gh) for _ in range(100) for gh in (d.one, d.two)))
    assert d.tokens.calls["token"] == 1
    assert len(set(seen)) == 1
    text = "".join(gh.stderr() + gh.audit_path.read_text() for gh in (d.one, d.two))
    assert BACKEND_SECRET not in text and seen[0].removeprefix("Bearer ") not in text


async def test_a_redis_outage_fails_sessions_closed_keeps_bearer_and_local_limits_then_recovers(
    deployment: Deployment,
) -> None:
    d = deployment
    token = await asyncio.to_thread(d.provider.client_credentials_token)
    async with d.client() as http:
        cookie = await d.login(http, via=d.one)
    assert (await d.get(d.two, "/echo/app/data", cookie=cookie))[0] == 200

    # Traffic on both replicas while Redis goes away under it.
    stop_traffic = asyncio.Event()

    async def traffic(replica: Gatehouse, **auth: str) -> list[int]:
        statuses = []
        while not stop_traffic.is_set():
            statuses.append((await d.get(replica, "/echo/app/data", **auth))[0])
        return statuses

    running = [
        asyncio.ensure_future(traffic(replica, **auth))
        for replica in (d.one, d.two)
        for auth in ({"cookie": cookie}, {"token": token})
    ]
    await asyncio.sleep(0.3)
    await asyncio.to_thread(d.redis.stop)
    await asyncio.sleep(0.5)
    stop_traffic.set()
    (one_session, one_bearer, two_session, two_bearer) = await asyncio.gather(*running)
    for statuses in (one_session, two_session):
        assert set(statuses) <= {200, 503} and statuses[0] == 200 and statuses[-1] == 503
    for statuses in (one_bearer, two_bearer):
        assert set(statuses) == {200}

    for replica in (d.one, d.two):
        status, body = await d.get(replica, "/echo/app/data", cookie=cookie)
        assert status == 503 and body["error"] == "state_unavailable"
        status, body = await d.get(replica, "/echo/app/data", token=token)
        assert status == 200 and dict(body["headers"])["x-gatehouse-subject"] == "svc-ci"
        # Each replica limits with its own buckets while Redis is away.
        limited = [(await d.get(replica, "/echo/limited"))[0] for _ in range(12)]
        assert limited.count(200) == 10 and limited.count(429) == 2
        assert await d.metric(replica, "gatehouse_state_available") == 0.0
        fallbacks = 'gatehouse_state_unreachable_total{component="ratelimit"}'
        assert (await d.metric(replica, fallbacks) or 0.0) >= 12
    assert d.one.process.poll() is None and d.two.process.poll() is None

    d.redis.start()  # a fresh Redis: no persistence, so sessions and buckets start empty
    for replica in (d.one, d.two):
        for _ in range(100):
            if await d.metric(replica, "gatehouse_state_available") == 1.0:
                break
            await asyncio.sleep(0.05)
        assert await d.metric(replica, "gatehouse_state_available") == 1.0
    async with d.client() as http:
        cookie = await d.login(http, via=d.two)
    assert (await d.get(d.one, "/echo/app/data", cookie=cookie))[0] == 200
    statuses = [(await d.get(d.one if i % 2 else d.two, "/echo/limited"))[0] for i in range(30)]
    assert statuses.count(200) == 10
    for replica in (d.one, d.two):
        log = replica.stderr()
        assert "shared state (Redis) unreachable" in log
        assert "own buckets" in log


# -- logout and refresh across replicas (issue 18 §4) -----------------------------------
SLOW_REFRESH = {"provider": {"access_token_ttl": 30, "refresh_delay_ms": 3000}}


@pytest.mark.parametrize("deployment", [SLOW_REFRESH], indirect=True)
async def test_a_logout_during_a_refresh_in_flight_is_not_undone_by_the_refresh(
    deployment: Deployment,
) -> None:
    d = deployment
    async with d.client() as http:
        cookie = await d.login(http, via=d.one)
        # Access tokens live 30 s, the refresh margin is 60 s: this request refreshes,
        # and the IdP takes 3 s to answer.
        refreshing = asyncio.ensure_future(d.get(d.one, "/echo/app/data", cookie=cookie))
        await asyncio.sleep(0.5)
        assert (await post_logout(http, d.base(d.two)))[0] == 303
        status, _ = await refreshing
        assert status == 401  # the refresh found the session gone and did not restore it
    for replica in (d.one, d.two):
        status, body = await d.get(replica, "/echo/app/data", cookie=cookie)
        assert (status, body["error"]) == (401, "unauthenticated")


@pytest.mark.parametrize(
    "deployment",
    [{"provider": {"access_token_ttl": 30, "refresh_delay_ms": 2500}, "state": {"lock_ttl": "1s"}}],
    indirect=True,
)
async def test_a_refresh_slower_than_the_lock_spends_the_refresh_token_once(
    deployment: Deployment,
) -> None:
    d = deployment
    async with d.client() as http:
        cookie = await d.login(http, via=d.one)
    first = asyncio.ensure_future(d.get(d.one, "/echo/app/data", cookie=cookie))
    # Past the 1 s lock: replica two must still see the refresh as in flight.
    await asyncio.sleep(1.6)
    second = await d.get(d.two, "/echo/app/data", cookie=cookie)
    assert second[0] == 200
    assert (await first)[0] == 200
    counts = await asyncio.to_thread(d.provider.token_requests)
    assert counts.get("refresh_token") == 1
    # The rotated token is the one stored: the grant is alive on both replicas.
    for replica in (d.two, d.one):
        assert (await d.get(replica, "/echo/app/data", cookie=cookie))[0] == 200


# -- unauthenticated clients and Redis (issue 18 §1) -------------------------------------
async def test_login_starts_and_failed_callbacks_store_nothing_in_redis(
    deployment: Deployment,
) -> None:
    d = deployment
    for attempt in range(40):
        replica = d.one if attempt % 2 else d.two
        async with d.client() as http:
            async with http.get(
                f"{d.base(replica)}/.gatehouse/login", allow_redirects=False
            ) as start:
                assert start.status == 302
                state = parse_qs(urlsplit(start.headers["Location"]).query)["state"][0]
            for query in (f"state={state}&error=access_denied", f"state={state}&code=forged"):
                async with http.get(
                    f"{d.base(replica)}/.gatehouse/callback?{query}", allow_redirects=False
                ) as callback:
                    assert callback.status == 400
    with d.redis.inspect() as plain:
        assert plain.keys("*") == []
    # A login that succeeds records its state once, for the other replica's sake.
    async with d.client() as http:
        await d.login(http, via=d.one)
    with d.redis.inspect() as plain:
        assert len(plain.keys("gatehouse:login-state:*")) == 1
