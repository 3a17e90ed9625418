"""Real gatehouse processes with grants, in front of the real OpenID provider, the
FastAPI upstream and (optionally) a real redis-server shared by the replicas.

People log in through the provider's login form (browser login); the pipeline
is the provider's ``svc-ci`` client with a client-credentials bearer token.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from proxy.identity.apikeys import create_key
from proxy.identity.session import new_cookie_key
from tests.conftest import GatehouseFactory
from tests.identity.browser_env import HTML, follow_login
from tests.peers.oidc_provider import RESOURCE, WEB_CLIENT, OidcProvider, rsa_jwk
from tests.state.redis_server import RedisServer
from tests.support.gatehouse import Gatehouse
from tests.support.net import free_port

ACCESS = "/.gatehouse/access"
ACCOUNTS = {
    "alice": {"email": "alice@example.test", "groups": ["eng"]},
    "bob": {"email": "bob@example.test", "groups": ["eng", "sre"]},
    "carol": {"email": "carol@example.test", "groups": ["sre"]},
}
TIMEOUT = aiohttp.ClientTimeout(total=20)


def routes(short: float = 2.0) -> list[dict[str, Any]]:
    return [
        {
            "name": "prod",
            "path": "/echo/prod",
            "backend": "up",
            "allow": [
                {
                    "name": "prod-writers-on-approval",
                    "grant": {
                        "approvers": {"groups": ["sre"]},
                        "max_duration": "8h",
                        "justification": "required",
                    },
                }
            ],
        },
        {
            "name": "backfill",
            "path": "/echo/backfill",
            "backend": "up",
            "allow": [
                {
                    "name": "backfill-window",
                    "all": [
                        {"authenticated": True},
                        {
                            "grant": {
                                "approvers": {"groups": ["sre"]},
                                "max_duration": f"{short}s",
                                "justification": "required",
                            }
                        },
                    ],
                }
            ],
        },
        {
            "name": "open",
            "path": "/echo/open",
            "backend": "up",
            "allow": [{"name": "signed-in", "authenticated": True}],
        },
    ]


@dataclass
class Deployment:
    provider: OidcProvider
    replicas: list[Gatehouse]
    bases: list[str]
    client_ssl: ssl.SSLContext
    launch: Callable[[int], Gatehouse]
    api_keys: dict[str, str]

    def restart(self, replica: int = 0) -> None:
        """Stop a replica (SIGTERM, drained) and start it again with the same config."""
        old = self.replicas[replica]
        assert old.stop() == 0
        self.replicas[replica] = self.launch(old.port)

    @property
    def base(self) -> str:
        return self.bases[0]

    def service_token(self) -> str:
        """The pipeline's own bearer token (sub ``svc-ci``)."""
        return self.provider.client_credentials_token()

    def browser(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self.client_ssl),
            cookie_jar=aiohttp.CookieJar(unsafe=True),
            timeout=TIMEOUT,
        )

    async def log_in(self, http: aiohttp.ClientSession, user: str, replica: int = 0) -> str:
        """Sign ``user`` in through the provider, landing on the access page; its HTML."""
        base = self.bases[replica]
        callback = await follow_login(
            http,
            f"{base}{ACCESS}/",
            issuer=self.provider.issuer,
            callback_prefix=f"{base}/.gatehouse/callback",
            user=user,
        )
        async with http.get(callback, headers=HTML) as response:
            assert response.status == 200, await response.text()
            assert str(response.url) == f"{base}{ACCESS}/"
            return await response.text()

    async def call(
        self,
        http: aiohttp.ClientSession,
        method: str,
        path: str,
        *,
        token: str | None = None,
        body: dict[str, Any] | None = None,
        replica: int = 0,
    ) -> tuple[int, Any]:
        headers = {"Accept": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        else:
            # A page's own fetch, as a browser sends it: sessions change state only
            # from this origin.
            headers["Origin"] = self.bases[replica]
        async with http.request(
            method,
            f"{self.bases[replica]}{path}",
            json=body,
            headers=headers,
            allow_redirects=False,
        ) as response:
            return response.status, await response.json(content_type=None)


async def wait_for(check: Any, timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll ``check`` (without blocking the loop) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(interval)


@asynccontextmanager
async def deployment(
    gatehouse: GatehouseFactory,
    tmp_path: Path,
    *,
    upstream_url: str,
    certs: dict[str, Path],
    redis: tuple[RedisServer, Path] | None = None,
    replicas: int = 1,
    webhook_url: str | None = None,
    grants: dict[str, Any] | None = None,
    short: float = 2.0,
    api_keys: dict[str, list[str]] | None = None,
) -> AsyncIterator[Deployment]:
    """``api_keys``: subject -> groups, one API key each (``Deployment.api_keys``)."""
    ports = [free_port() for _ in range(replicas)]
    bases = [f"https://localhost:{port}" for port in ports]
    provider = OidcProvider(
        keys=[rsa_jwk("rsa-1")],
        redirect_uris=[f"{base}/.gatehouse/callback" for base in bases],
        accounts=ACCOUNTS,
    )
    await asyncio.to_thread(provider.start)
    try:
        keys = tmp_path / "cookie-keys"
        keys.write_text(new_cookie_key() + "\n")
        secret = tmp_path / "client-secret"
        secret.write_text(WEB_CLIENT["client_secret"])
        hook_secret = tmp_path / "hook-secret"
        hook_secret.write_text("webhook-test-secret")
        grant_settings: dict[str, Any] = {"file": str(tmp_path / "grants.json")}
        if webhook_url is not None:
            grant_settings |= {
                "webhook_url": webhook_url,
                "webhook_secret_file": str(hook_secret),
            }
        grant_settings |= grants or {}
        keys_made: dict[str, str] = {}
        key_file = tmp_path / "api-keys.yaml"
        for subject, groups in (api_keys or {}).items():
            keys_made[subject] = create_key(key_file, name=subject, subject=subject, groups=groups)
        extra: dict[str, Any] = {
            "identity": {
                "issuers": [{"issuer": provider.issuer, "audiences": [RESOURCE]}],
                "browser": {
                    "issuer": provider.issuer,
                    "client_id": WEB_CLIENT["client_id"],
                    "client_secret_file": str(secret),
                    "cookie_keys_file": str(keys),
                    "scopes": ["openid", "email", "profile", "groups"],
                },
                **({"api_keys": {"file": str(key_file)}} if api_keys else {}),
            },
            "grants": grant_settings,
        }
        if redis is not None:
            server, state_key = redis
            extra["state"] = {
                "redis_url": server.url,
                "encryption_key_file": str(state_key),
                "reconnect_interval": "100ms",
            }

        def launch(port: int) -> Gatehouse:
            return gatehouse(
                port=port,
                backends={"up": {"urls": [upstream_url]}},
                routes=routes(short),
                listen={
                    "tls": {
                        "cert_file": str(certs["server_cert"]),
                        "key_file": str(certs["server_key"]),
                    }
                },
                extra=extra,
            )

        started = [launch(port) for port in ports]
        client_ssl = ssl.create_default_context(cafile=str(certs["ca"]))
        yield Deployment(provider, started, bases, client_ssl, launch, keys_made)
    finally:
        await asyncio.to_thread(provider.close)
