"""Browser login through a real gatehouse process against the real oidc-provider."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import aiohttp

from proxy.identity.session import new_cookie_key
from tests.conftest import GatehouseFactory
from tests.identity.browser_env import HTML, follow_login
from tests.peers.oidc_provider import WEB_CLIENT, OidcProvider, rsa_jwk
from tests.support.net import free_port


async def test_people_log_in_with_pkce_and_the_upstream_sees_who_they_are(
    gatehouse: GatehouseFactory, upstream_url: str, certs: dict[str, Path], tmp_path: Path
) -> None:
    port = free_port()
    base = f"https://localhost:{port}"
    provider = OidcProvider(
        keys=[rsa_jwk("rsa-1")],
        redirect_uris=[f"{base}/.gatehouse/callback"],
        accounts={"alice": {"email": "alice@example.test", "groups": ["eng"]}},
    )
    await asyncio.to_thread(provider.start)
    try:
        keys = tmp_path / "cookie-keys"
        keys.write_text(new_cookie_key() + "\n")
        secret = tmp_path / "client-secret"
        secret.write_text(WEB_CLIENT["client_secret"])
        gh = gatehouse(
            port=port,
            backends={"up": {"urls": [upstream_url]}},
            routes=[
                {
                    "name": "app",
                    "path": "/echo",
                    "backend": "up",
                    "allow": [{"name": "engineers", "groups": ["eng"]}],
                }
            ],
            listen={
                "tls": {
                    "cert_file": str(certs["server_cert"]),
                    "key_file": str(certs["server_key"]),
                }
            },
            extra={
                "identity": {
                    "browser": {
                        "issuer": provider.issuer,
                        "client_id": WEB_CLIENT["client_id"],
                        "client_secret_file": str(secret),
                        "cookie_keys_file": str(keys),
                        "scopes": ["openid", "email", "profile", "groups"],
                    }
                }
            },
        )
        client_ssl = ssl.create_default_context(cafile=str(certs["ca"]))
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=client_ssl),
            cookie_jar=aiohttp.CookieJar(unsafe=True),
        ) as http:
            # An API call without a session: 401 JSON, never a redirect.
            async with http.get(f"{base}/echo/data", allow_redirects=False) as r:
                assert r.status == 401
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
                assert (await r.json())["error"] == "unauthenticated"

            # A page: redirect to the IdP, log in, back through the callback.
            callback = await follow_login(
                http,
                f"{base}/echo/page",
                issuer=provider.issuer,
                callback_prefix=f"{base}/.gatehouse/callback",
            )
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

            async with http.get(f"{base}/.gatehouse/logout", allow_redirects=False) as r:
                assert r.status == 302
                assert r.headers["Location"].startswith(provider.issuer)
            async with http.get(f"{base}/echo/data", allow_redirects=False) as r:
                assert r.status == 401
        records = gh.wait_audit(4)
        sessions = [r for r in records if r["auth"] == "session"]
        assert sessions and sessions[0]["subject"] == "alice"
    finally:
        await asyncio.to_thread(provider.close)
