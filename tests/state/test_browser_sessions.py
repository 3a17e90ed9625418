"""Browser sessions across two replicas sharing Redis, with the real oidc-provider."""

from __future__ import annotations

import asyncio
from pathlib import Path

from proxy.identity.session import CookieCodec, load_cookie_keys
from tests.identity.browser_env import HTML, follow_login, post_logout
from tests.state.redis_server import RedisServer
from tests.state.replica_env import COOKIE, replicas


async def test_a_login_on_one_replica_is_a_session_on_the_other(
    tmp_path: Path, redis_server: RedisServer, state_key: Path
) -> None:
    async with replicas(tmp_path, redis_server, state_key) as env, env.client() as http:
        await env.login(http, via=env.one)
        async with http.get(f"{env.two.url}/private", headers=HTML) as response:
            assert response.status == 200
            body = await response.json()
        assert body["sub"] == "alice" and body["groups"] == ["eng"] and body["method"] == "session"
        assert body["has_token"]
        # The cookie holds only a sealed reference: no claims, no tokens.
        cookie = env.cookie_of(http)
        assert env.cookie_content(cookie) is not None
        assert set(env.cookie_content(cookie) or {}) == {"ref", "exp"}
        assert len(cookie) < 200


async def test_logout_on_one_replica_revokes_the_session_on_the_other(
    tmp_path: Path, redis_server: RedisServer, state_key: Path
) -> None:
    async with replicas(tmp_path, redis_server, state_key) as env, env.client() as http:
        await env.login(http, via=env.one)
        cookie = env.cookie_of(http)
        assert (await env.get(env.one, cookie))[0] == 200
        assert (await post_logout(http, env.two.url))[0] == 303
        # The browser dropped the cookie; someone who kept a copy gets nothing either.
        status, body = await env.get(env.one, cookie)
        assert status == 401 and body["error"] == "unauthenticated"
        assert (await env.get(env.two, cookie))[0] == 401


async def test_a_forged_or_unknown_session_reference_is_no_session(
    tmp_path: Path, redis_server: RedisServer, state_key: Path
) -> None:
    async with replicas(tmp_path, redis_server, state_key) as env, env.client() as http:
        await env.login(http, via=env.one)
        codec = CookieCodec(load_cookie_keys(env.cookie_keys_file))
        content = env.cookie_content(env.cookie_of(http))
        assert content is not None
        unknown = codec.seal(COOKIE, {"ref": "not-a-session", "exp": content["exp"]})
        assert (await env.get(env.two, unknown))[0] == 401
        # A whole-session cookie (the cookie-only format) is not accepted with a store.
        whole = codec.seal(
            COOKIE, {"sid": "x", "exp": content["exp"], "claims": {"sub": "mallory"}}
        )
        assert (await env.get(env.two, whole))[0] == 401


async def test_a_replayed_callback_fails_on_the_other_replica_too(
    tmp_path: Path, redis_server: RedisServer, state_key: Path
) -> None:
    async with replicas(tmp_path, redis_server, state_key) as env, env.client() as http:
        callback = await follow_login(
            http,
            f"{env.one.url}/private",
            issuer=env.provider.issuer,
            callback_prefix=f"{env.one.url}/.gatehouse/callback",
        )
        login_cookie = {c.key: c.value for c in http.cookie_jar}[f"{COOKIE}-login"]
        async with http.get(callback, headers=HTML, allow_redirects=False) as response:
            assert response.status == 302
        # The same callback, with its transaction cookie, replayed against replica two.
        replay = callback.replace(env.one.url, env.two.url)
        async with (
            env.client() as other,
            other.get(
                replay,
                headers={**HTML, "Cookie": f"{COOKIE}-login={login_cookie}"},
                allow_redirects=False,
            ) as response,
        ):
            # Replica two has no record of the state (none is written before a login
            # succeeds), so the IdP sees the spent code, and refuses it.
            assert response.status == 400
            assert (await response.json())["error"] == "login_failed"


async def test_parallel_refreshes_on_both_replicas_spend_the_rotating_token_once(
    tmp_path: Path, redis_server: RedisServer, state_key: Path
) -> None:
    # Access tokens live 30 s and the margin is 60 s: every request wants a refresh.
    async with (
        replicas(tmp_path, redis_server, state_key, access_token_ttl=30) as env,
        env.client() as http,
    ):
        await env.login(http, via=env.one)
        cookie = env.cookie_of(http)
        before = await env.one.state.sessions.load(str(env.cookie_content(cookie)["ref"]))  # type: ignore[index]
        assert before is not None
        results = await asyncio.gather(
            *(env.get(replica, cookie) for _ in range(6) for replica in (env.one, env.two))
        )
        assert [status for status, _ in results] == [200] * 12
        after = await env.two.state.sessions.load(before["sid"])
        assert after is not None and after["rt"] != before["rt"]
        # A refresh token spent twice would make the IdP revoke the grant: still alive.
        for replica in (env.one, env.two, env.one):
            status, body = await env.get(replica, cookie)
            assert status == 200 and body["sub"] == "alice"


async def test_a_refused_refresh_ends_the_session_on_every_replica(
    tmp_path: Path, redis_server: RedisServer, state_key: Path
) -> None:
    async with (
        replicas(tmp_path, redis_server, state_key, access_token_ttl=30) as env,
        env.client() as http,
    ):
        await env.login(http, via=env.one)
        cookie = env.cookie_of(http)
        # The provider keeps grants in memory: a restart forgets the refresh token.
        await asyncio.to_thread(env.provider.restart)
        assert (await env.get(env.one, cookie))[0] == 401
        assert (await env.get(env.two, cookie))[0] == 401


async def test_redis_down_fails_sessions_closed_leaves_bearer_tokens_alone_and_recovers(
    tmp_path: Path, redis_server: RedisServer, state_key: Path
) -> None:
    async with replicas(tmp_path, redis_server, state_key) as env, env.client() as http:
        await env.login(http, via=env.one)
        cookie = env.cookie_of(http)
        token = await asyncio.to_thread(env.provider.client_credentials_token)
        bearer = {"Authorization": f"Bearer {token}"}

        redis_server.stop()
        for replica in (env.one, env.two):
            status, body = await env.get(replica, cookie)
            assert status == 503 and body["error"] == "state_unavailable"
            status, body = await env.get(replica, None, bearer)
            assert status == 200 and body["sub"] == "svc-ci"
            # No cookie at all: still the usual answer (a 401 for API calls).
            assert (await env.get(replica, None))[0] == 401
        # Never a logout that did not revoke anything.
        assert (await post_logout(http, env.two.url))[0] == 503

        redis_server.start()  # an empty Redis (no persistence): sessions are gone
        deadline = asyncio.get_running_loop().time() + 5
        while not (env.one.state.available() and env.two.state.available()):
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.02)
        assert (await env.get(env.one, cookie))[0] == 401
        http.cookie_jar.clear()
        await env.login(http, via=env.two)
        assert (await env.get(env.one, env.cookie_of(http)))[0] == 200
