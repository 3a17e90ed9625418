"""A local RS256 issuer for the identity scenarios: key pair, JWKS, and one bearer token."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

AUDIENCE = "gatehouse-bench"
SUBJECT = "bench-user"


@dataclass(frozen=True, slots=True)
class Issuer:
    url: str
    key: rsa.RSAPrivateKey
    kid: str = "bench-1"

    def jwks(self) -> dict[str, Any]:
        jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update(kid=self.kid, use="sig", alg="RS256")
        return {"keys": [jwk]}

    def token(self, *, lifetime: float = 3600.0, **claims: Any) -> str:
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": self.url,
            "aud": AUDIENCE,
            "sub": SUBJECT,
            "email": "bench@example.com",
            "groups": ["engineering", "bench"],
            "iat": now,
            "nbf": now - 5,
            "exp": now + int(lifetime),
        }
        body.update(claims)
        return jwt.encode(body, self.key, algorithm="RS256", headers={"kid": self.kid})


def new_issuer(url: str) -> Issuer:
    return Issuer(url, rsa.generate_private_key(public_exponent=65537, key_size=2048))


@contextlib.asynccontextmanager
async def jwks_server(published: dict[str, Any]) -> AsyncIterator[str]:
    """Serve ``published`` (filled in by the caller) at ``<url>/jwks.json`` in this process.

    For the micro-benchmarks, which verify tokens in-process: yields the base URL.
    """

    async def serve_jwks(_: web.Request) -> web.Response:
        return web.json_response(published)

    app = web.Application()
    app.router.add_get("/jwks.json", serve_jwks)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
