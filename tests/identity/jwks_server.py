"""A small local issuer for JWKS tests: discovery + JWKS, counting every fetch.

A test can make it answer raw bytes (``raw_jwks``/``raw_discovery``, to serve
ambiguous JSON), set a cookie on every answer (``set_cookie``) and see which
cookies came back (``cookies_seen``).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa


@dataclass
class LocalIssuer:
    keys: dict[str, rsa.RSAPrivateKey] = field(default_factory=dict)
    cache_control: str | None = "max-age=300"
    failing: bool = False
    jwks_fetches: int = 0
    jwks_origin: str | None = None  # serve a discovery document pointing elsewhere
    issuer: str = ""
    raw_jwks: bytes | None = None
    raw_discovery: bytes | None = None
    set_cookie: str | None = None
    cookies_seen: list[str | None] = field(default_factory=list)

    def jwks(self) -> dict[str, Any]:
        out = []
        for kid, key in self.keys.items():
            doc = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
            out.append({**doc, "kid": kid, "use": "sig", "alg": "RS256"})
        return {"keys": out}

    def add_key(self, kid: str) -> None:
        self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def token(self, kid: str | None = None, **claims: Any) -> str:
        kid = kid or next(iter(self.keys))
        key = self.keys.get(kid) or next(iter(self.keys.values()))
        now = int(time.time())
        payload = {"iss": self.issuer, "aud": "urn:gatehouse:api", "sub": "svc", "iat": now}
        payload["exp"] = now + 300
        payload.update(claims)
        return jwt.encode(payload, key, algorithm="RS256", headers={"kid": kid})

    def random_kid_token(self) -> str:
        return self.token(kid=uuid.uuid4().hex)

    # -- handlers ----------------------------------------------------------
    def _answer(self, request: web.Request, body: bytes, headers: dict[str, str]) -> web.Response:
        self.cookies_seen.append(request.headers.get("Cookie"))
        if self.set_cookie:
            headers = {**headers, "Set-Cookie": self.set_cookie}
        return web.Response(body=body, content_type="application/json", headers=headers)

    async def _discovery(self, request: web.Request) -> web.Response:
        base = self.jwks_origin or self.issuer
        body = (
            self.raw_discovery
            or json.dumps({"issuer": self.issuer, "jwks_uri": f"{base}/jwks"}).encode()
        )
        return self._answer(request, body, {})

    async def _jwks(self, request: web.Request) -> web.Response:
        self.jwks_fetches += 1
        if self.failing:
            return web.Response(status=503, text="down")
        headers = {"Cache-Control": self.cache_control} if self.cache_control else {}
        return self._answer(request, self.raw_jwks or json.dumps(self.jwks()).encode(), headers)


@asynccontextmanager
async def local_issuer(*kids: str) -> AsyncIterator[LocalIssuer]:
    state = LocalIssuer()
    for kid in kids or ("k1",):
        state.add_key(kid)
    app = web.Application()
    app.router.add_get("/.well-known/openid-configuration", state._discovery)
    app.router.add_get("/jwks", state._jwks)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    state.issuer = f"http://127.0.0.1:{port}"
    try:
        yield state
    finally:
        await runner.cleanup()
