"""A TLS aiohttp app wired to the Authenticator's browser login, plus the real provider.

The app does what the core's handler does with the identity hooks: local
endpoints first, then ``authenticate_full`` (applying Set-Cookie values), then
``login_response`` for requests without an identity.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import socket
import ssl
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
from aiohttp import web

from proxy.config.reader import SecretRef
from proxy.errors import GatehouseError
from proxy.http.responses import failure_response
from proxy.identity.authenticate import Authenticator
from proxy.identity.config import BrowserConfig, IdentityConfig
from proxy.identity.session import CookieCodec, load_cookie_keys, new_cookie_key
from proxy.model import RequestFacts
from tests.peers.cloud.tls import make_tls
from tests.peers.oidc_provider import WEB_CLIENT, OidcProvider, rsa_jwk
from tests.support.gatehouse import Gatehouse, PortTaken
from tests.support.net import free_port

HTML = {"Accept": "text/html,application/xhtml+xml"}


def guids(count: int) -> list[str]:
    """Entra-style group object ids, which barely compress."""
    return [str(uuid.UUID(bytes=hashlib.sha256(b"%d" % i).digest()[:16])) for i in range(count)]


def same_origin(base: str) -> dict[str, str]:
    """What a browser sends with a POST from a page of ``base``."""
    return {"Origin": base, "Sec-Fetch-Site": "same-origin"}


async def post_logout(http: aiohttp.ClientSession, base: str) -> tuple[int, str, list[str]]:
    """Sign out as the logout page's form does; status, Location and Set-Cookie values."""
    async with http.post(
        f"{base}/.gatehouse/logout", headers=same_origin(base), allow_redirects=False
    ) as response:
        return (
            response.status,
            response.headers.get("Location", ""),
            response.headers.getall("Set-Cookie", []),
        )


def request_facts(request: web.BaseRequest) -> RequestFacts:
    return RequestFacts(
        method=request.method,
        scheme="https",
        host=request.host,
        path=request.path,
        query=request.query_string,
        client_ip="127.0.0.1",
        headers={k.lower(): v for k, v in request.headers.items()},
    )


def build_app(auth: Authenticator) -> web.Application:
    async def handle(request: web.Request) -> web.StreamResponse:
        facts = request_facts(request)
        local = await auth.local_endpoint(request, facts)
        if local is not None:
            return local
        result = await auth.authenticate_full(facts)
        if result.identity is None:
            response = await auth.login_response(facts)
            assert response is not None
        else:
            identity = result.identity
            response = web.json_response(
                {
                    "sub": identity.subject,
                    "email": identity.email,
                    "groups": sorted(identity.groups),
                    "method": identity.method,
                    "has_token": identity.token is not None,
                    "claims": dict(identity.claims),
                    "unknown": sorted(identity.unknown_claims),
                    "email_verified": identity.email_verified,
                }
            )
        for value in result.set_cookies:
            response.headers.add("Set-Cookie", value)
        return response

    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            return await handle(request)
        except GatehouseError as exc:
            return failure_response(exc, "test")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


@dataclass
class BrowserEnv:
    provider: OidcProvider
    auth: Authenticator
    app_url: str
    client_ssl: ssl.SSLContext
    cookie_keys_file: Path

    @property
    def codec(self) -> CookieCodec:
        return CookieCodec(load_cookie_keys(self.cookie_keys_file))

    @property
    def callback_prefix(self) -> str:
        return f"{self.app_url}/.gatehouse/callback"

    def client(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self.client_ssl),
            cookie_jar=aiohttp.CookieJar(unsafe=True),
        )

    async def until_callback(
        self, http: aiohttp.ClientSession, path: str = "/private", user: str = "alice"
    ) -> str:
        """Browse to ``path``, sign in at the provider; return the callback URL, unvisited."""
        return await self.follow(http, f"{self.app_url}{path}", user)

    async def follow(self, http: aiohttp.ClientSession, url: str, user: str = "alice") -> str:
        """Follow redirects from ``url``, filling the provider's login form, up to our callback."""
        return await follow_login(
            http, url, issuer=self.provider.issuer, callback_prefix=self.callback_prefix, user=user
        )

    async def login(
        self, http: aiohttp.ClientSession, path: str = "/private", user: str = "alice"
    ) -> dict[str, Any]:
        callback = await self.until_callback(http, path, user)
        async with http.get(callback, headers=HTML, allow_redirects=True) as response:
            assert response.status == 200, await response.text()
            assert str(response.url).startswith(f"{self.app_url}{path.split('?')[0]}")
            result: dict[str, Any] = await response.json()
        return result

    def session_of(self, http: aiohttp.ClientSession) -> dict[str, Any] | None:
        cookies = {c.key: c.value for c in http.cookie_jar}
        name = self.auth.browser.session_cookie if self.auth.browser else ""
        value = cookies.get(name) or "".join(
            cookies[f"{name}-{i}"] for i in range(8) if f"{name}-{i}" in cookies
        )
        return self.codec.open(name, value) if value else None


async def follow_login(
    http: aiohttp.ClientSession,
    url: str,
    *,
    issuer: str,
    callback_prefix: str,
    user: str = "alice",
) -> str:
    """Follow redirects from ``url`` as a browser, filling oidc-provider's dev login form,
    until the redirect to ``callback_prefix``; return that callback URL, unvisited."""
    method, data = "GET", None
    for _ in range(20):
        async with http.request(
            method, url, data=data, headers=HTML, allow_redirects=False
        ) as response:
            body = await response.text()
            location = response.headers.get("Location")
        method, data = "GET", None
        if location is None:
            action = re.search(r'action="([^"]+)"', body)
            assert action is not None, body[:500]
            target = action.group(1)
            url = target if "://" in target else issuer + target
            method, data = "POST", {"prompt": "login", "login": user, "password": "pw"}
            continue
        url = location if "://" in location else issuer + location
        if url.startswith(callback_prefix):
            return url
    raise AssertionError("login did not reach the callback")


def state_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["state"][0]


@asynccontextmanager
async def browser_env(
    tmp_path: Path,
    *,
    accounts: dict[str, dict[str, Any]] | None = None,
    refresh_margin: float = 60.0,
    allowed_redirect_hosts: tuple[str, ...] = (),
    **provider_options: Any,
) -> AsyncIterator[BrowserEnv]:
    tls = make_tls(tmp_path)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app_url = f"https://127.0.0.1:{port}"
    provider = OidcProvider(
        keys=[rsa_jwk("rsa-1")],
        redirect_uris=[f"{app_url}/.gatehouse/callback"],
        accounts=accounts or {"alice": {"email": "alice@example.test", "groups": ["eng"]}},
        options=provider_options,
    )
    await asyncio.to_thread(provider.start)
    keys_file = tmp_path / "cookie-keys"
    keys_file.write_text(new_cookie_key() + "\n")
    secret_file = tmp_path / "client-secret"
    secret_file.write_text(WEB_CLIENT["client_secret"])
    config = IdentityConfig(
        browser=BrowserConfig(
            issuer=provider.issuer,
            client_id=WEB_CLIENT["client_id"],
            client_secret=SecretRef("file", str(secret_file)),
            cookie_keys_file=keys_file,
            scopes=("openid", "email", "profile", "groups"),
            refresh_margin=refresh_margin,
            allowed_redirect_hosts=allowed_redirect_hosts,
        )
    )
    auth = Authenticator(config)
    runner: web.AppRunner | None = None
    try:
        await auth.start()
        runner = web.AppRunner(build_app(auth), access_log=None)
        await runner.setup()
        await web.SockSite(runner, sock, ssl_context=tls.server_context()).start()
        client_ssl = ssl.create_default_context(cafile=str(tls.ca_file))
        yield BrowserEnv(provider, auth, app_url, client_ssl, keys_file)
    finally:
        if runner is not None:
            await runner.cleanup()
        else:
            sock.close()
        await auth.close()
        await asyncio.to_thread(provider.close)


# -- a real gatehouse process with browser login --------------------------------------
@dataclass
class Deployment:
    """One ``gatehouse run`` with browser login, the real provider, and the test CA."""

    gh: Gatehouse
    provider: OidcProvider
    client_ssl: ssl.SSLContext

    @property
    def base(self) -> str:
        return f"https://localhost:{self.gh.port}"

    @property
    def callback_prefix(self) -> str:
        return f"{self.base}/.gatehouse/callback"

    def client(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self.client_ssl),
            cookie_jar=aiohttp.CookieJar(unsafe=True),
            timeout=aiohttp.ClientTimeout(total=30),
        )

    async def until_callback(
        self, http: aiohttp.ClientSession, path: str = "/echo/page", user: str = "alice"
    ) -> str:
        return await follow_login(
            http,
            self.base + path,
            issuer=self.provider.issuer,
            callback_prefix=self.callback_prefix,
            user=user,
        )

    async def login(
        self, http: aiohttp.ClientSession, path: str = "/echo/page", user: str = "alice"
    ) -> tuple[int, dict[str, Any]]:
        """Sign in through ``path``; the callback's status and JSON body (if any)."""
        callback = await self.until_callback(http, path, user)
        async with http.get(callback, headers=HTML, allow_redirects=False) as response:
            if response.status != 302:
                return response.status, await response.json(content_type=None)
        return 302, {}

    async def get(
        self,
        http: aiohttp.ClientSession,
        path: str,
        method: str = "GET",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """An API call (JSON accepted) through the gatehouse; status and JSON body."""
        sent = {"Accept": "application/json", **(headers or {})}
        async with http.request(
            method, self.base + path, headers=sent, allow_redirects=False
        ) as response:
            return response.status, await response.json(content_type=None)

    def records(self, count: int) -> list[dict[str, Any]]:
        return self.gh.wait_audit(count)


@asynccontextmanager
async def browser_gatehouse(
    gatehouse: Callable[..., Gatehouse],
    upstream_url: str,
    certs: dict[str, Path],
    tmp_path: Path,
    *,
    accounts: dict[str, dict[str, Any]] | None = None,
    routes: list[dict[str, Any]] | None = None,
    browser: dict[str, Any] | None = None,
    listen: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    provider_options: dict[str, Any] | None = None,
    start_provider: bool = True,
) -> AsyncIterator[Deployment]:
    """A gatehouse with browser login in front of the echo upstream, and its provider
    (not started with ``start_provider=False``: its port and issuer are fixed anyway)."""
    keys = tmp_path / "cookie-keys"
    keys.write_text(new_cookie_key() + "\n")
    secret = tmp_path / "client-secret"
    secret.write_text(WEB_CLIENT["client_secret"])
    default_routes = [
        {
            "name": "app",
            "path": "/echo",
            "backend": "up",
            "allow": [{"name": "signed-in", "authenticated": True}],
        }
    ]
    tls = {"cert_file": str(certs["server_cert"]), "key_file": str(certs["server_key"])}
    # Gatehouse's port is chosen first (the provider must know where to redirect);
    # should another process take it meanwhile, all starts again on other ports.
    for attempt in range(3):
        port = free_port()
        provider = OidcProvider(
            keys=[rsa_jwk("rsa-1")],
            redirect_uris=[f"https://localhost:{port}/.gatehouse/callback"],
            accounts=accounts or {"alice": {"email": "alice@example.test", "groups": ["eng"]}},
            options=provider_options or {},
            port=free_port(),
        )
        provider.issuer = f"http://127.0.0.1:{provider.port}"
        identity = {
            "browser": {
                "issuer": provider.issuer,
                "client_id": WEB_CLIENT["client_id"],
                "client_secret_file": str(secret),
                "cookie_keys_file": str(keys),
                "scopes": ["openid", "email", "profile", "groups"],
                **(browser or {}),
            }
        }
        try:
            if start_provider:
                await asyncio.to_thread(provider.start)
            gh = await asyncio.to_thread(
                gatehouse,
                port=port,
                backends={"up": {"urls": [upstream_url]}},
                routes=routes or default_routes,
                listen={"tls": tls, **(listen or {})},
                extra={"identity": identity, **(extra or {})},
            )
        except PortTaken:
            await asyncio.to_thread(provider.close)
            if attempt == 2:
                raise
            continue
        except BaseException:
            await asyncio.to_thread(provider.close)
            raise
        break
    try:
        yield Deployment(gh, provider, ssl.create_default_context(cafile=str(certs["ca"])))
    finally:
        await asyncio.to_thread(provider.close)
