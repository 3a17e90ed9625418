"""Two browser-login "replicas" (TLS aiohttp apps, each with its own Authenticator and
Redis client) sharing one redis-server, in front of the real oidc-provider.

Each app does what the core's handler does with the identity hooks: local
endpoints, then ``authenticate_full``, then ``login_response``, and any
GatehouseError (from any of them) becomes the standard error response. The
runtime's part, handing the session store to browser login, is done here as
the runtime will do it.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from proxy.config.reader import SecretRef
from proxy.identity.authenticate import Authenticator
from proxy.identity.config import BrowserConfig, IdentityConfig, IssuerConfig
from proxy.identity.session import CookieCodec, load_cookie_keys, new_cookie_key
from proxy.state.shared import SharedState
from tests.identity.browser_env import HTML, build_app, follow_login
from tests.peers.cloud.tls import make_tls
from tests.peers.oidc_provider import RESOURCE, WEB_CLIENT, OidcProvider, rsa_jwk
from tests.state.conftest import state_config
from tests.state.redis_server import RedisServer

COOKIE = "__Host-gatehouse"
API = {"Accept": "application/json"}
# A stuck request fails the test in seconds, with a trace, instead of at the suite timeout.
TIMEOUT = aiohttp.ClientTimeout(total=20)


def browser_client(client_ssl: ssl.SSLContext, limit: int = 100) -> aiohttp.ClientSession:
    """A browser: keeps cookies, trusts the test CA."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=client_ssl, limit=limit),
        timeout=TIMEOUT,
        cookie_jar=aiohttp.CookieJar(unsafe=True),
    )


async def api_get(
    url: str,
    client_ssl: ssl.SSLContext,
    *,
    cookie: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    """An API call with exactly the given session cookie (no jar); status and JSON body."""
    sent = {**API, **(headers or {})}
    if cookie is not None:
        sent["Cookie"] = f"{COOKIE}={cookie}"
    async with (
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=client_ssl),
            timeout=TIMEOUT,
            cookie_jar=aiohttp.DummyCookieJar(),
        ) as http,
        http.get(url, headers=sent, allow_redirects=False) as response,
    ):
        return response.status, await response.json(content_type=None)


@dataclass
class Replica:
    url: str
    auth: Authenticator
    state: SharedState


@dataclass
class Replicas:
    provider: OidcProvider
    one: Replica
    two: Replica
    client_ssl: ssl.SSLContext
    cookie_keys_file: Path

    def client(self) -> aiohttp.ClientSession:
        return browser_client(self.client_ssl)

    async def login(self, http: aiohttp.ClientSession, via: Replica, user: str = "alice") -> None:
        callback = await follow_login(
            http,
            f"{via.url}/private",
            issuer=self.provider.issuer,
            callback_prefix=f"{via.url}/.gatehouse/callback",
            user=user,
        )
        async with http.get(callback, headers=HTML, allow_redirects=True) as response:
            assert response.status == 200, await response.text()
            assert (await response.json())["sub"] == user

    def cookie_of(self, http: aiohttp.ClientSession) -> str:
        cookies = {c.key: c.value for c in http.cookie_jar}
        return cookies[COOKIE]

    def cookie_content(self, value: str) -> dict[str, Any] | None:
        return CookieCodec(load_cookie_keys(self.cookie_keys_file)).open(COOKIE, value)

    async def get(
        self, via: Replica, cookie: str | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any]]:
        """A request with exactly the given session cookie (no jar), as API call."""
        return await api_get(f"{via.url}/api", self.client_ssl, cookie=cookie, headers=headers)


def _bound() -> tuple[socket.socket, str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock, f"https://127.0.0.1:{sock.getsockname()[1]}"


@asynccontextmanager
async def replicas(
    tmp_path: Path,
    redis_server: RedisServer,
    state_key: Path,
    *,
    refresh_margin: float = 60.0,
    **provider_options: Any,
) -> AsyncIterator[Replicas]:
    tls = make_tls(tmp_path)
    (sock_one, url_one), (sock_two, url_two) = _bound(), _bound()
    provider = OidcProvider(
        keys=[rsa_jwk("rsa-1")],
        redirect_uris=[f"{url_one}/.gatehouse/callback", f"{url_two}/.gatehouse/callback"],
        accounts={"alice": {"email": "alice@example.test", "groups": ["eng"]}},
        options=provider_options,
    )
    keys_file = tmp_path / "cookie-keys"
    keys_file.write_text(new_cookie_key() + "\n")
    secret_file = tmp_path / "client-secret"
    secret_file.write_text(WEB_CLIENT["client_secret"])
    async with AsyncExitStack() as stack:
        stack.callback(sock_one.close)
        stack.callback(sock_two.close)
        await asyncio.to_thread(provider.start)
        stack.push_async_callback(asyncio.to_thread, provider.close)
        config = IdentityConfig(
            issuers=(IssuerConfig(issuer=provider.issuer, audiences=(RESOURCE,)),),
            browser=BrowserConfig(
                issuer=provider.issuer,
                client_id=WEB_CLIENT["client_id"],
                client_secret=SecretRef("file", str(secret_file)),
                cookie_keys_file=keys_file,
                scopes=("openid", "email", "profile", "groups"),
                refresh_margin=refresh_margin,
            ),
        )
        built: list[Replica] = []
        for sock, url in ((sock_one, url_one), (sock_two, url_two)):
            state = SharedState(state_config(redis_server, state_key))
            await state.start()
            stack.push_async_callback(state.close)
            auth = Authenticator(config)
            await auth.start()
            stack.push_async_callback(auth.close)
            assert auth.browser is not None
            auth.browser.use_session_store(state.sessions)
            runner = web.AppRunner(build_app(auth), access_log=None)
            await runner.setup()
            stack.push_async_callback(runner.cleanup)
            await web.SockSite(runner, sock, ssl_context=tls.server_context()).start()
            built.append(Replica(url, auth, state))
        client_ssl = ssl.create_default_context(cafile=str(tls.ca_file))
        yield Replicas(provider, built[0], built[1], client_ssl, keys_file)
