"""Browser login through a real gatehouse process against the real oidc-provider."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tests.conftest import GatehouseFactory
from tests.identity.browser_env import (
    HTML,
    Deployment,
    browser_gatehouse,
    guids,
    post_logout,
    same_origin,
)


async def test_people_log_in_with_pkce_and_the_upstream_sees_who_they_are(
    gatehouse: GatehouseFactory, upstream_url: str, certs: dict[str, Path], tmp_path: Path
) -> None:
    routes = [
        {
            "name": "app",
            "path": "/echo",
            "backend": "up",
            "allow": [{"name": "engineers", "groups": ["eng"]}],
        }
    ]
    async with (
        browser_gatehouse(gatehouse, upstream_url, certs, tmp_path, routes=routes) as d,
        d.client() as http,
    ):
        base = d.base
        # An API call without a session: 401 JSON, never a redirect.
        async with http.get(f"{base}/echo/data", allow_redirects=False) as r:
            assert r.status == 401
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
            assert (await r.json())["error"] == "unauthenticated"

        # A page: redirect to the IdP, log in, back through the callback.
        callback = await d.until_callback(http)
        async with http.get(callback, headers=HTML, allow_redirects=False) as r:
            assert r.status in (302, 303)
            assert r.headers["Location"] == "/echo/page"
            cookies = r.headers.getall("Set-Cookie")
        assert any(c.startswith("__Host-gatehouse") for c in cookies)
        assert all(
            "Secure" in c and "HttpOnly" in c and "SameSite=Lax" in c
            for c in cookies
            if c.startswith("__Host-gatehouse=")
        )

        async with http.get(f"{base}/echo/page", headers=HTML, allow_redirects=False) as r:
            assert r.status == 200
            seen = dict((await r.json())["headers"])
        assert seen["x-gatehouse-subject"] == "alice"
        assert seen["x-gatehouse-email"] == "alice@example.test"
        assert seen["x-gatehouse-groups"] == "eng"
        assert "__Host-gatehouse" not in seen.get("cookie", "")

        status, location, _ = await post_logout(http, base)
        assert status == 303 and location.startswith(d.provider.issuer)
        async with http.get(f"{base}/echo/data", allow_redirects=False) as r:
            assert r.status == 401
        records = d.gh.wait_audit(4)
        sessions = [r for r in records if r["auth"] == "session"]
        assert sessions and sessions[0]["subject"] == "alice"


# -- sessions carry the claims policy reads (issue 18 §2) -------------------------------
async def test_a_session_keeps_amr_acr_and_tid_so_mfa_and_claim_rules_hold_for_people(
    gatehouse: GatehouseFactory, upstream_url: str, certs: dict[str, Path], tmp_path: Path
) -> None:
    accounts = {
        "alice": {
            "groups": ["platform-admins"],
            "amr": ["pwd", "mfa"],
            "acr": "urn:example:loa:2",
            "claims": {"tid": "tenant-home"},
        },
        "mallory": {
            "groups": ["platform-admins"],
            "amr": ["pwd", "mfa"],
            "claims": {"tid": "tenant-guest"},
        },
        "bob": {"groups": ["platform-admins"], "amr": ["pwd"], "claims": {"tid": "tenant-home"}},
    }
    routes = [
        {
            "name": "admin-ui",
            "path": "/echo",
            "backend": "up",
            "deny": [{"name": "guests", "claim": {"path": "tid", "is": "tenant-guest"}}],
            "allow": [
                {
                    "name": "admins-with-mfa",
                    "all": [
                        {"auth_method": ["session"]},
                        {"groups": ["platform-admins"]},
                        {"mfa": True},
                        {"mfa": {"acr": ["urn:example:loa:2"]}},
                    ],
                }
            ],
        }
    ]
    async with browser_gatehouse(
        gatehouse, upstream_url, certs, tmp_path, accounts=accounts, routes=routes
    ) as d:
        for user, expected in (
            ("alice", (200, None)),
            ("mallory", (403, "denied:guests")),
            ("bob", (403, "no_rule_matched")),
        ):
            async with d.client() as http:
                assert (await d.login(http, user=user))[0] == 302
                status, body = await d.get(http, "/echo/admin")
                assert status == expected[0], (user, body)
                if expected[1] is not None:
                    assert body["error"] == expected[1]


# -- audit (issue 18 §5) ----------------------------------------------------------------
async def test_logins_and_logouts_are_audited_once_each_with_the_subject(
    gatehouse: GatehouseFactory, upstream_url: str, certs: dict[str, Path], tmp_path: Path
) -> None:
    async with browser_gatehouse(gatehouse, upstream_url, certs, tmp_path) as d:
        async with d.client() as http:
            assert (await d.login(http))[0] == 302
            assert (await post_logout(http, d.base))[0] == 303
        async with d.client() as http:
            callback = await d.until_callback(http)
            forged = callback.replace("state=", "state=x")
            async with http.get(forged, allow_redirects=False) as response:
                assert response.status == 400
        # Two page views sent to the IdP, two callbacks, one logout.
        records = d.gh.wait_audit(5)
    assert len(records) == 5
    by_path: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_path.setdefault(record["path"], []).append(record)
    login, failed = by_path["/.gatehouse/callback"]
    assert login["reason"] == "login" and login["decision"] == "allow"
    assert (login["subject"], login["auth"], login["issuer"]) == (
        "alice",
        "session",
        d.provider.issuer,
    )
    assert failed["reason"] == "invalid_state" and failed["decision"] == "deny"
    assert failed["subject"] is None and failed["status"] == 400
    (logout,) = by_path["/.gatehouse/logout"]
    assert logout["reason"] == "logout" and logout["subject"] == "alice"
    assert logout["status"] == 303


# -- CSRF: logout and unsafe methods (issue 18 §4) ---------------------------------------
async def test_logout_is_a_same_origin_post_and_its_get_page_only_shows_the_form(
    gatehouse: GatehouseFactory, upstream_url: str, certs: dict[str, Path], tmp_path: Path
) -> None:
    async with browser_gatehouse(gatehouse, upstream_url, certs, tmp_path) as d, d.client() as http:
        assert (await d.login(http))[0] == 302
        async with http.get(f"{d.base}/.gatehouse/logout", allow_redirects=False) as page:
            assert page.status == 200
            assert page.headers["Content-Type"].startswith("text/html")
            assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
            assert "Set-Cookie" not in page.headers
            assert 'method="post" action="/.gatehouse/logout"' in await page.text()
        assert (await d.get(http, "/echo/still-in"))[0] == 200
        for headers in (
            {"Origin": "https://evil.example"},
            {"Origin": "null"},
            {"Sec-Fetch-Site": "same-site", "Origin": d.base},  # a sibling host's page
            {"Sec-Fetch-Site": "cross-site"},
            {},  # neither header: not provably from this origin
        ):
            async with http.post(
                f"{d.base}/.gatehouse/logout", headers=headers, allow_redirects=False
            ) as refused:
                assert refused.status == 403, headers
                assert (await refused.json())["error"] == "cross_site_request"
                assert "Set-Cookie" not in refused.headers
            assert (await d.get(http, "/echo/still-in"))[0] == 200
        status, location, cleared = await post_logout(http, d.base)
        assert status == 303 and location.startswith(d.provider.issuer)
        assert any(c.startswith("__Host-gatehouse=;") for c in cleared)
        assert (await d.get(http, "/echo/gone"))[0] == 401
        records = d.gh.wait_audit(16)  # login 2, page 1, 6 checks, 5 refusals, logout, check
        refusals = [r for r in records if r["reason"] == "cross_site_request"]
        assert len(refusals) == 5 and {r["status"] for r in refusals} == {403}


async def test_a_session_authenticates_unsafe_methods_only_for_requests_from_this_origin(
    gatehouse: GatehouseFactory, upstream_url: str, certs: dict[str, Path], tmp_path: Path
) -> None:
    async with browser_gatehouse(gatehouse, upstream_url, certs, tmp_path) as d, d.client() as http:
        assert (await d.login(http))[0] == 302
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            for headers in (
                {"Origin": "https://evil.example"},
                {"Origin": "https://sub.localhost"},
                {"Sec-Fetch-Site": "same-site"},
                {},
            ):
                status, body = await d.get(http, "/echo/orders", method, headers)
                assert (status, body["error"]) == (403, "cross_site_request"), (method, headers)
            for headers in ({"Origin": d.base}, {"Sec-Fetch-Site": "same-origin"}):
                status, body = await d.get(http, "/echo/orders", method, headers)
                assert status == 200 and body["method"] == method
        # Safe methods are not state changes: a cross-site link still works.
        status, _ = await d.get(http, "/echo/page", "GET", {"Sec-Fetch-Site": "cross-site"})
        assert status == 200
        # A WebSocket handshake from a sibling host's page (cross-site WebSocket hijacking).
        upgrade = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13"}
        for origin in ("https://evil.localhost", "null"):
            headers = {**upgrade, "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Origin": origin}
            status, body = await d.get(http, "/echo/socket", "GET", headers)
            assert (status, body["error"]) == (403, "cross_site_request")
        records = d.gh.wait_audit(2 + 4 * 6 + 1 + 2)
        refused = [r for r in records if r["reason"] == "cross_site_request"]
        assert len(refused) == 18
        assert all(r["status"] == 403 and r["upstream_status"] is None for r in refused)


# -- session size against the listener's header limit (issue 18 §4) ---------------------
async def test_a_session_shrinks_to_fit_the_listener_and_drops_what_no_rule_needs(
    gatehouse: GatehouseFactory, upstream_url: str, certs: dict[str, Path], tmp_path: Path
) -> None:
    # A 2.5 KiB header limit; the session's access token (about 1.6 KB, it lists the
    # groups) and a profile claim no rule reads would take the Cookie header past it,
    # and every request after login, logout included, would be a 431.
    noise = b"".join(hashlib.sha512(b"%d" % i).digest() for i in range(12))
    groups = guids(20)
    profile = base64.b64encode(noise).decode()
    accounts = {"alice": {"groups": groups, "claims": {"profile_blob": profile}}}
    # Admits only through the very last group: every group survived the shrinking.
    routes = [
        {
            "name": "app",
            "path": "/echo",
            "backend": "up",
            "allow": [{"name": "last-group", "groups": [groups[-1]]}],
        }
    ]
    async with (
        browser_gatehouse(
            gatehouse,
            upstream_url,
            certs,
            tmp_path,
            accounts=accounts,
            routes=routes,
            listen={"max_header_size": "2560"},
        ) as d,
        d.client() as http,
    ):
        callback = await d.until_callback(http)
        async with http.get(callback, allow_redirects=False) as response:
            assert response.status == 302
            cookies = response.headers.getall("Set-Cookie")
        status, body = await d.get(http, "/echo/page")
        assert status == 200, body  # not 431 headers_too_large
        sent = "; ".join(c.split(";")[0] for c in cookies if "Max-Age=0" not in c)
        assert len("Cookie") + len(sent) + 1024 <= 2560
        assert (await post_logout(http, d.base))[0] == 303


async def test_a_session_too_large_for_the_listener_is_refused_at_login_with_a_clear_reason(
    gatehouse: GatehouseFactory, upstream_url: str, certs: dict[str, Path], tmp_path: Path
) -> None:
    # Entra ID's 200 group ids do not fit a 6 KiB header line with room to spare.
    accounts = {"alice": {"groups": guids(200)}}
    async with (
        browser_gatehouse(
            gatehouse,
            upstream_url,
            certs,
            tmp_path,
            accounts=accounts,
            listen={"max_header_size": "6KiB"},
        ) as d,
        d.client() as http,
    ):
        status, body = await d.login(http)
        assert (status, body["error"]) == (400, "session_too_large")
        assert not any(c.key.startswith("__Host-gatehouse") for c in http.cookie_jar)
        status, body = await d.get(http, "/echo/page")  # not locked out: a plain 401
        assert (status, body["error"]) == (401, "unauthenticated")
        record = next(r for r in d.gh.wait_audit(3) if r["path"] == "/.gatehouse/callback")
        assert record["reason"] == "session_too_large" and record["status"] == 400
    assert "configure state: (Redis)" in d.gh.stderr()


async def test_a_431_for_an_oversized_cookie_header_clears_our_cookies_so_logout_works(
    gatehouse: GatehouseFactory, upstream_url: str, certs: dict[str, Path], tmp_path: Path
) -> None:
    # Cookies an older version (or another app on this host) left behind: too big to parse.
    oversized = "; ".join(f"__Host-gatehouse-{i}={'A' * 3000}" for i in range(3))
    async with browser_gatehouse(gatehouse, upstream_url, certs, tmp_path) as d:
        for method, path in (("GET", "/echo/page"), ("POST", "/.gatehouse/logout")):
            async with (
                aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(ssl=d.client_ssl),
                    cookie_jar=aiohttp.DummyCookieJar(),
                ) as http,
                http.request(
                    method, d.base + path, headers={"Cookie": oversized, **same_origin(d.base)}
                ) as response,
            ):
                assert response.status == 431
                assert (await response.json())["error"] == "headers_too_large"
                cleared = {
                    c.split("=")[0]
                    for c in response.headers.getall("Set-Cookie")
                    if "Max-Age=0" in c
                }
            names = {"__Host-gatehouse", "__Host-gatehouse-login"}
            assert cleared == names | {f"__Host-gatehouse-{i}" for i in range(8)}
        # A browser that applied those Set-Cookie values signs in again normally.
        async with d.client() as http:
            assert (await d.login(http))[0] == 302
            assert (await d.get(http, "/echo/page"))[0] == 200


# -- the IdP down at start-up (issue 18 §4) ----------------------------------------------
async def readyz(d: Deployment) -> int:
    async with aiohttp.ClientSession() as http, http.get(f"{d.gh.admin_url}/readyz") as r:
        return r.status


async def test_browser_login_recovers_by_itself_when_the_idp_comes_up_after_gatehouse(
    gatehouse: GatehouseFactory, upstream_url: str, certs: dict[str, Path], tmp_path: Path
) -> None:
    discovery_requests = 0

    async def down(request: web.Request) -> web.Response:
        nonlocal discovery_requests
        discovery_requests += request.path == "/.well-known/openid-configuration"
        return web.Response(status=503)

    stand_in = web.Application()
    stand_in.router.add_route("*", "/{tail:.*}", down)
    runner = web.AppRunner(stand_in, access_log=None)
    await runner.setup()
    try:
        async with browser_gatehouse(
            gatehouse, upstream_url, certs, tmp_path, start_provider=False
        ) as d:
            # The IdP's port answers 503 while gatehouse starts (the provider is "down").
            await web.TCPSite(runner, "127.0.0.1", d.provider.port).start()
            async with d.client() as http:
                statuses = []
                for _ in range(20):  # page views while the IdP is down
                    async with http.get(
                        f"{d.base}/echo/page", headers=HTML, allow_redirects=False
                    ) as response:
                        statuses.append(response.status)
                        if response.status == 503:
                            assert (await response.json())["error"] == "idp_unavailable"
            assert set(statuses) == {503}
            assert discovery_requests <= 3  # backoff, not one discovery per page view
            assert await readyz(d) == 503
            await runner.cleanup()
            await asyncio.to_thread(d.provider.start)
            deadline = time.monotonic() + 20
            while await readyz(d) != 200:  # no traffic, no restart: it recovers
                assert time.monotonic() < deadline, d.gh.stderr()[-2000:]
                await asyncio.sleep(0.2)
            async with d.client() as http:
                assert (await d.login(http))[0] == 302
                assert (await d.get(http, "/echo/page"))[0] == 200
    finally:
        await runner.cleanup()


# -- sessions re-checked with the IdP (issue 18 §4) -------------------------------------
async def test_a_session_without_refresh_token_goes_back_to_the_idp_after_revalidate_interval(
    gatehouse: GatehouseFactory, upstream_url: str, certs: dict[str, Path], tmp_path: Path
) -> None:
    async with (
        browser_gatehouse(
            gatehouse,
            upstream_url,
            certs,
            tmp_path,
            browser={"revalidate_interval": "3s"},
            provider_options={"issue_refresh_tokens": False},
        ) as d,
        d.client() as http,
    ):
        assert (await d.login(http))[0] == 302
        assert (await d.get(http, "/echo/data"))[0] == 200
        await asyncio.sleep(3.2)
        # The IdP's own session is alive: the page view passes through it without a
        # login form and comes back with a fresh session.
        async with http.get(f"{d.base}/echo/page", headers=HTML, allow_redirects=True) as page:
            assert page.status == 200 and str(page.url) == f"{d.base}/echo/page"
        assert (await d.get(http, "/echo/data"))[0] == 200
        # The IdP forgets everything (the user was disabled, sessions revoked)...
        await asyncio.to_thread(d.provider.restart)
        await asyncio.sleep(3.2)
        # ...and within one interval the session is over.
        status, body = await d.get(http, "/echo/data")
        assert (status, body["error"]) == (401, "unauthenticated")
        async with http.get(f"{d.base}/echo/page", headers=HTML, allow_redirects=True) as page:
            assert page.status == 200 and str(page.url).startswith(d.provider.issuer)
            assert 'name="login"' in await page.text()  # the IdP asks the user again


# -- login starts: bounded per client (issue 18 §1) --------------------------------------
async def test_login_starts_are_rate_limited_per_client_address(
    gatehouse: GatehouseFactory, upstream_url: str, certs: dict[str, Path], tmp_path: Path
) -> None:
    limit = {"requests": 5, "per": "1m", "burst": 5}
    async with (
        browser_gatehouse(
            gatehouse, upstream_url, certs, tmp_path, browser={"login_rate_limit": limit}
        ) as d,
        d.client() as http,
    ):
        statuses = []
        for path in ("/.gatehouse/login?rd=/echo", "/echo/page") * 4:
            async with http.get(d.base + path, headers=HTML, allow_redirects=False) as r:
                statuses.append(r.status)
                if r.status == 429:
                    assert (await r.json())["error"] == "rate_limited"
        assert statuses == [302] * 5 + [429] * 3
        # API calls never start a login, so they are not limited by it.
        assert (await d.get(http, "/echo/data"))[0] == 401
        records = d.gh.wait_audit(9)
        assert [r["reason"] for r in records].count("rate_limited") == 3


async def test_a_deny_on_groups_cut_by_entra_overage_fails_closed_for_a_session(
    gatehouse: GatehouseFactory, upstream_url: str, certs: dict[str, Path], tmp_path: Path
) -> None:
    accounts: dict[str, dict[str, Any]] = {
        "contractor": {"groups_overage": True},  # more groups than the token could carry
        "alice": {"groups": ["eng"]},
    }
    routes = [
        {
            "name": "app",
            "path": "/echo",
            "backend": "up",
            "deny": [{"name": "no-contractors", "groups": ["contractors"]}],
            "allow": [{"name": "signed-in", "authenticated": True}],
        }
    ]
    async with browser_gatehouse(
        gatehouse, upstream_url, certs, tmp_path, accounts=accounts, routes=routes
    ) as d:
        for user, expected in (
            ("contractor", (403, "unknown_claims:no-contractors")),
            ("alice", (200, None)),
        ):
            async with d.client() as http:
                assert (await d.login(http, user=user))[0] == 302
                status, body = await d.get(http, "/echo/page")
                assert (status, body.get("error")) == expected, user
