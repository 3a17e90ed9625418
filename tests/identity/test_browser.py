"""Browser login through the real oidc-provider's login form, driven by an HTTP client."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

from authlib.oauth2.rfc7636 import create_s256_code_challenge  # type: ignore[import-untyped]
from prometheus_client import REGISTRY
from yarl import URL

from tests.identity.browser_env import HTML, browser_env, guids, post_logout, state_of

# Entra-style: up to 200 group object ids, which barely compress.
BIG_GROUPS = guids(200)


async def test_login_with_pkce_yields_a_session_identity(tmp_path: Path) -> None:
    async with browser_env(tmp_path) as env, env.client() as http:
        async with http.get(f"{env.app_url}/private", headers=HTML, allow_redirects=False) as r:
            assert r.status == 302
            location = r.headers["Location"]
        query = parse_qs(urlsplit(location).query)
        assert location.startswith(env.provider.issuer)
        assert query["code_challenge_method"] == ["S256"]
        assert query["nonce"] and query["state"]
        result = await env.login(http)
        assert {k: result[k] for k in ("sub", "email", "groups", "method", "has_token")} == {
            "sub": "alice",
            "email": "alice@example.test",
            "groups": ["eng"],
            "method": "session",
            "has_token": True,
        }
        assert result["email_verified"] is True


async def test_session_cookies_are_host_prefixed_secure_httponly_lax(tmp_path: Path) -> None:
    async with browser_env(tmp_path) as env, env.client() as http:
        callback = await env.until_callback(http)
        async with http.get(callback, allow_redirects=False) as response:
            assert response.status == 302
            assert response.headers["Location"] == "/private"
            cookies = response.headers.getall("Set-Cookie")
        session = [c for c in cookies if c.startswith("__Host-gatehouse=")]
        assert session, cookies
        attrs = {a.strip() for a in session[0].split(";")[1:]}
        assert {"Path=/", "Secure", "HttpOnly", "SameSite=Lax"} <= attrs
        assert not any(a.lower().startswith("domain") for a in attrs)
        assert any(c.startswith("__Host-gatehouse-login=;") and "Max-Age=0" in c for c in cookies)


async def test_api_calls_get_401_json_never_a_redirect(tmp_path: Path) -> None:
    async with browser_env(tmp_path) as env, env.client() as http:
        for headers in (
            {"Accept": "application/json"},
            {**HTML, "X-Requested-With": "XMLHttpRequest"},
            {},
        ):
            async with http.get(
                f"{env.app_url}/api/data", headers=headers, allow_redirects=False
            ) as response:
                assert response.status == 401
                assert "Location" not in response.headers
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
                assert (await response.json())["error"] == "unauthenticated"


async def test_state_is_single_use(tmp_path: Path) -> None:
    async with browser_env(tmp_path) as env, env.client() as http:
        callback = await env.until_callback(http)
        login_cookie = {c.key: c.value for c in http.cookie_jar}["__Host-gatehouse-login"]
        async with http.get(callback, allow_redirects=False) as response:
            assert response.status == 302
        # Replay the same callback with the same login cookie: refused.
        http.cookie_jar.update_cookies(
            {"__Host-gatehouse-login": login_cookie}, response.url.with_path("/")
        )
        async with http.get(callback, allow_redirects=False) as replay:
            assert replay.status == 400
            assert (await replay.json())["error"] == "invalid_state"


async def test_state_must_match_the_login_cookie(tmp_path: Path) -> None:
    async with browser_env(tmp_path) as env, env.client() as victim, env.client() as attacker:
        attacker_callback = await env.until_callback(attacker)
        await env.until_callback(victim)  # victim has its own login cookie
        async with victim.get(attacker_callback, allow_redirects=False) as response:
            assert response.status == 400
            assert (await response.json())["error"] == "invalid_state"
        # And a callback with no login cookie at all.
        async with env.client() as fresh, fresh.get(attacker_callback) as response:
            assert response.status == 400
            assert (await response.json())["error"] == "login_expired"


async def test_nonce_mismatch_is_refused(tmp_path: Path) -> None:
    async with browser_env(tmp_path) as env, env.client() as http:
        async with http.get(f"{env.app_url}/private", headers=HTML, allow_redirects=False) as r:
            state = state_of(r.headers["Location"])
        cookies = {c.key: c.value for c in http.cookie_jar}
        tx = env.codec.open("__Host-gatehouse-login", cookies["__Host-gatehouse-login"])
        assert tx is not None
        # An authorization request with this login's PKCE and state but another nonce:
        # the code is genuine and redeemable, only the ID token's nonce is wrong.
        params = {
            "response_type": "code",
            "client_id": "gatehouse",
            "redirect_uri": env.callback_prefix,
            "scope": "openid email",
            "state": state,
            "nonce": "attacker-chosen-nonce",
            "code_challenge": create_s256_code_challenge(tx["verifier"]),
            "code_challenge_method": "S256",
        }
        auth_url = f"{env.provider.issuer}/auth?{urlencode(params)}"
        callback = await env.follow(http, auth_url)
        async with http.get(callback, allow_redirects=False) as response:
            assert response.status == 400
            assert (await response.json())["error"] == "invalid_nonce"
        assert env.session_of(http) is None


async def test_every_login_mints_a_new_session_id(tmp_path: Path) -> None:
    async with browser_env(tmp_path) as env, env.client() as http:
        await env.login(http)
        first = env.session_of(http)
        # Log in again while a session cookie (fixated, or stale) is already present.
        callback = await env.follow(http, f"{env.app_url}/.gatehouse/login?rd=/private")
        async with http.get(callback, headers=HTML) as response:
            assert response.status == 200
        second = env.session_of(http)
        assert first is not None and second is not None
        assert first["sid"] != second["sid"]


async def test_tampered_session_cookie_is_not_a_session(tmp_path: Path) -> None:
    async with browser_env(tmp_path) as env, env.client() as http:
        await env.login(http)
        cookies = {c.key: c.value for c in http.cookie_jar}
        value = cookies["__Host-gatehouse"]
        forged = value[:-4] + ("AAAA" if not value.endswith("AAAA") else "BBBB")
        async with env.client() as other:
            other.cookie_jar.update_cookies({"__Host-gatehouse": forged}, URL(env.app_url))
            async with other.get(
                f"{env.app_url}/api", headers={"Accept": "application/json"}
            ) as response:
                assert response.status == 401


async def test_post_login_redirect_refuses_open_redirects(tmp_path: Path) -> None:
    async with browser_env(tmp_path, allowed_redirect_hosts=("app.example.test",)) as env:
        cases = {
            "//evil.com/x": "/",
            "/\\evil.com": "/",
            "/%09/evil.com": "/",
            "https://app.example.test.evil.com/": "/",
            "https://app.example.test/ok": "https://app.example.test/ok",
            "/reports?id=7": "/reports?id=7",
        }
        for target, expected in cases.items():
            async with env.client() as http:
                url = f"{env.app_url}/.gatehouse/login?{urlencode({'rd': target})}"
                async with http.get(url, allow_redirects=False) as response:
                    assert response.status == 302
                cookies = {c.key: c.value for c in http.cookie_jar}
                tx = env.codec.open("__Host-gatehouse-login", cookies["__Host-gatehouse-login"])
                assert tx is not None and tx["rd"] == expected, target


async def test_large_sessions_are_chunked_into_cookies_under_4kb(tmp_path: Path) -> None:
    accounts = {"bigalice": {"groups": BIG_GROUPS}}
    async with browser_env(tmp_path, accounts=accounts) as env, env.client() as http:
        callback = await env.until_callback(http, user="bigalice")
        async with http.get(callback, allow_redirects=False) as response:
            cookies = response.headers.getall("Set-Cookie")
        chunks = [c for c in cookies if c.startswith("__Host-gatehouse-") and "login" not in c]
        assert len(chunks) >= 2
        assert all(len(c) < 4096 for c in chunks)
        # Whole Cookie header stays under the 8 KB servers (and aiohttp) accept.
        assert sum(len(c.split(";")[0]) for c in chunks) < 8000
        async with http.get(f"{env.app_url}/private", headers=HTML) as response:
            assert response.status == 200
            assert len((await response.json())["groups"]) == len(BIG_GROUPS)


async def test_refresh_rotates_refresh_tokens_and_keeps_the_session(tmp_path: Path) -> None:
    # Access tokens live 30 s and the margin is 60 s: every request refreshes.
    async with (
        browser_env(tmp_path, access_token_ttl=30, refresh_margin=60) as env,
        env.client() as http,
    ):
        await env.login(http)
        before = env.session_of(http)
        assert before is not None
        seen = {before["rt"]}
        for _ in range(2):
            async with http.get(f"{env.app_url}/private", headers=HTML) as response:
                assert response.status == 200
                assert (await response.json())["sub"] == "alice"
                assert any(
                    c.startswith("__Host-gatehouse") for c in response.headers.getall("Set-Cookie")
                )
            session = env.session_of(http)
            assert session is not None and session["sid"] == before["sid"]
            assert session["rt"] not in seen  # rotated every time
            seen.add(session["rt"])


async def test_parallel_requests_spend_a_rotating_refresh_token_once(tmp_path: Path) -> None:
    async with (
        browser_env(tmp_path, access_token_ttl=30, refresh_margin=60) as env,
        env.client() as http,
    ):
        await env.login(http)
        results = await asyncio.gather(
            *(http.get(f"{env.app_url}/private", headers=HTML) for _ in range(5))
        )
        assert [r.status for r in results] == [200] * 5
        for r in results:
            r.release()
        async with http.get(f"{env.app_url}/private", headers=HTML) as response:
            assert response.status == 200


async def test_refresh_without_id_token_keeps_the_identity(tmp_path: Path) -> None:
    async with (
        browser_env(
            tmp_path, access_token_ttl=30, refresh_margin=60, omit_id_token_on_refresh=True
        ) as env,
        env.client() as http,
    ):
        await env.login(http)
        before = env.session_of(http)
        async with http.get(f"{env.app_url}/private", headers=HTML) as response:
            assert response.status == 200
            body = await response.json()
        after = env.session_of(http)
        assert before is not None and after is not None
        assert after["at"] != before["at"]
        assert after["claims"] == before["claims"]
        assert body["sub"] == "alice" and body["groups"] == ["eng"]


async def test_refused_refresh_ends_the_session(tmp_path: Path) -> None:
    async with (
        browser_env(tmp_path, access_token_ttl=30, refresh_margin=60) as env,
        env.client() as http,
    ):
        await env.login(http)
        # The provider keeps grants in memory: a restart forgets the refresh token.
        await asyncio.to_thread(env.provider.restart)
        labels = {"issuer": env.provider.issuer, "method": "session", "result": "refresh_failed"}
        before = REGISTRY.get_sample_value("gatehouse_auth_total", labels) or 0.0
        async with http.get(
            f"{env.app_url}/api", headers={"Accept": "application/json"}
        ) as response:
            assert response.status == 401
            cleared = response.headers.getall("Set-Cookie")
        assert any(c.startswith("__Host-gatehouse=;") and "Max-Age=0" in c for c in cleared)
        assert REGISTRY.get_sample_value("gatehouse_auth_total", labels) == before + 1


async def test_logout_clears_the_session_and_goes_to_the_idp(tmp_path: Path) -> None:
    async with browser_env(tmp_path) as env, env.client() as http:
        await env.login(http)
        status, location, cleared = await post_logout(http, env.app_url)
        assert status == 303
        assert location.startswith(f"{env.provider.issuer}/session/end?")
        query = parse_qs(urlsplit(location).query)
        assert query["post_logout_redirect_uri"] == [f"{env.app_url}/"]
        assert query["client_id"] == ["gatehouse"]
        assert any(c.startswith("__Host-gatehouse=;") for c in cleared)
        assert env.session_of(http) is None
        async with http.get(location, headers=HTML) as response:
            assert response.status == 200  # the provider's logout confirmation
        async with http.get(f"{env.app_url}/api", headers={"Accept": "application/json"}) as r:
            assert r.status == 401


async def test_idp_down_during_refresh_keeps_a_still_valid_session(tmp_path: Path) -> None:
    async with (
        browser_env(tmp_path, access_token_ttl=30, refresh_margin=60) as env,
        env.client() as http,
    ):
        await env.login(http)
        before = env.session_of(http)
        await asyncio.to_thread(env.provider.stop)
        async with http.get(f"{env.app_url}/private", headers=HTML) as response:
            assert response.status == 200
            assert (await response.json())["sub"] == "alice"
        after = env.session_of(http)
        assert before is not None and after is not None
        assert after["rt"] == before["rt"]  # nothing spent: the refresh is retried later


# -- which claims a session keeps (issue 18 §2) -----------------------------------------
async def test_a_session_keeps_the_id_token_claims_and_names_the_ones_it_left_out(
    tmp_path: Path,
) -> None:
    accounts = {
        "alice": {
            "groups": ["eng"],
            "amr": ["pwd", "mfa"],
            "acr": "urn:example:loa:2",
            "claims": {"tid": "tenant-1", "department": "finance"},
        }
    }
    async with browser_env(tmp_path, accounts=accounts) as env, env.client() as http:
        result = await env.login(http)
        claims = result["claims"]
        assert claims["amr"] == ["pwd", "mfa"] and claims["acr"] == "urn:example:loa:2"
        assert claims["tid"] == "tenant-1" and claims["department"] == "finance"
        assert "auth_time" in claims and "nonce" not in claims
        # Claims of the ID token itself are left out, and so unknown, never absent.
        assert {"nonce", "iat", "exp"} <= set(result["unknown"])
        assert not {"amr", "acr", "tid", "department", "groups"} & set(result["unknown"])


async def test_entra_group_overage_makes_a_sessions_groups_unknown_not_empty(
    tmp_path: Path,
) -> None:
    accounts = {"alice": {"groups_overage": True}}
    async with browser_env(tmp_path, accounts=accounts) as env, env.client() as http:
        result = await env.login(http)
        assert result["groups"] == []
        assert "groups" in result["unknown"]
        assert "_claim_names" not in result["claims"]


async def test_a_session_shrunk_for_the_listener_drops_unneeded_claims_first_as_unknown(
    tmp_path: Path,
) -> None:
    noise = b"".join(hashlib.sha512(b"%d" % i).digest() for i in range(30))
    accounts = {
        "alice": {
            "groups": BIG_GROUPS[:60],
            "claims": {"tid": "t-1", "blob": base64.b64encode(noise).decode()},
        }
    }
    async with browser_env(tmp_path, accounts=accounts) as env, env.client() as http:
        assert env.auth.browser is not None
        env.auth.browser.use_listener_limit(4096)
        result = await env.login(http)
        assert "blob" in result["unknown"] and "blob" not in result["claims"]
        assert result["claims"]["tid"] == "t-1"
        assert len(result["groups"]) == 60
        sent = sum(len(c.key) + len(c.value) + 3 for c in http.cookie_jar)
        assert sent <= 4096 - len("Cookie") - 1024


async def test_a_claim_the_policy_reads_is_kept_when_the_session_shrinks(tmp_path: Path) -> None:
    noise = b"".join(hashlib.sha512(b"%d" % i).digest() for i in range(30))
    accounts = {
        "alice": {"groups": BIG_GROUPS[:60], "claims": {"blob": base64.b64encode(noise).decode()}}
    }
    async with browser_env(tmp_path, accounts=accounts) as env, env.client() as http:
        assert env.auth.browser is not None
        env.auth.browser.use_listener_limit(4096)
        env.auth.browser.use_claims_in_use(lambda: ("blob.part",))
        callback = await env.until_callback(http)
        async with http.get(callback, allow_redirects=False) as response:
            # Keeping it cannot fit: a clear refusal instead of a session that breaks.
            assert response.status == 400
            assert (await response.json())["error"] == "session_too_large"
