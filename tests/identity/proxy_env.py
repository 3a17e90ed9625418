"""Identity through a real ``gatehouse run``: routes, calls, metrics and raw tokens.

The local peers (JWKS, introspection) run in the test's event loop, so a
gatehouse is started off the loop (``started``) and they can answer its
start-up fetches.
"""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt

from tests.conftest import GatehouseFactory
from tests.identity.introspection_server import IntrospectionServer
from tests.peers.oidc_provider import RESOURCE
from tests.support.gatehouse import Gatehouse

ROUTES: list[dict[str, Any]] = [
    {
        "name": "admin",
        "path": "/echo/admin",
        "backend": "up",
        "allow": [{"name": "admins", "groups": ["admins"]}],
    },
    {
        "name": "whoami",
        "path": "/echo/whoami",
        "backend": "up",
        "allow": [{"name": "signed-in", "authenticated": True}],
    },
]


@dataclass(frozen=True)
class Reply:
    status: int
    error: str | None
    subject: str | None  # X-Gatehouse-Subject as the upstream received it
    www_authenticate: str | None


async def started(gatehouse: GatehouseFactory, upstream_url: str, **identity: Any) -> Gatehouse:
    """A gatehouse with ROUTES and this ``identity:`` section, started off the loop."""
    return await asyncio.to_thread(
        gatehouse,
        backends={"up": {"urls": [upstream_url]}},
        routes=ROUTES,
        extra={"identity": identity},
    )


def introspecting_issuer(
    server: IntrospectionServer, tmp_path: Path, issuer: str | None = None, **options: Any
) -> dict[str, Any]:
    """An issuer entry whose opaque tokens go to ``server`` (its own origin is the
    issuer unless given: discovery there fails fast, and no JWKS is needed)."""
    secret = tmp_path / "introspection-secret"
    secret.write_text("introspection-client-secret")
    return {
        "issuer": issuer or server.url.rsplit("/", 1)[0],
        "audiences": [RESOURCE],
        "introspection": {
            "endpoint": server.url,
            "client_id": "gatehouse",
            "client_secret_file": str(secret),
            **options,
        },
    }


async def call(
    gh: Gatehouse,
    path: str = "/echo/whoami",
    token: str | None = None,
    headers: dict[str, str] | None = None,
    session: aiohttp.ClientSession | None = None,
) -> Reply:
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    own = session is None
    s = session or aiohttp.ClientSession()
    try:
        async with s.get(gh.url + path, headers=sent) as r:
            body = await r.json(content_type=None)
            seen = dict(body.get("headers", [])) if r.status == 200 else {}
            return Reply(
                r.status,
                body.get("error") if r.status != 200 else None,
                seen.get("x-gatehouse-subject"),
                r.headers.get("WWW-Authenticate"),
            )
    finally:
        if own:
            await s.close()


async def metrics(gh: Gatehouse) -> str:
    async with aiohttp.ClientSession() as s, s.get(gh.admin_url + "/metrics") as r:
        return await r.text()


def counter(text: str, name: str, **labels: str) -> float:
    """One sample of a Prometheus text exposition (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{"):
            head, _, value = line.rpartition(" ")
            got = ",".join(sorted(head[len(name) + 1 : -1].split(",")))
            if got == want:
                return float(value)
    return 0.0


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_raw(header: bytes | dict[str, Any], payload: bytes | dict[str, Any], key: Any) -> str:
    """A compact JWS over exactly these header and payload bytes (RS256 with ``key``),
    so a test can sign JSON no well-behaved library would produce."""
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    p = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    signing_input = f"{_b64(h)}.{_b64(p)}".encode()
    signature = jwt.get_algorithm_by_name("RS256").sign(signing_input, key)
    return f"{signing_input.decode()}.{_b64(signature)}"
