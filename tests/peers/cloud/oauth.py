"""An RFC 6749 token endpoint (client credentials) with RFC 8693 token exchange.

Clients authenticate with ``client_secret_basic``, ``client_secret_post`` or
``private_key_jwt`` (RFC 7523). Exchanged tokens name the original caller in
``sub`` and the exchanging client in ``act`` (RFC 8693 section 4.1).
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from typing import Any, Self
from urllib.parse import unquote

import jwt
from aiohttp import web

from tests.peers.cloud.keys import Issuer
from tests.peers.cloud.server import PeerServer

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_BEARER_CLIENT = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"


@dataclass
class Client:
    client_id: str
    secret: str | None = None
    public_key: Any = None  # for private_key_jwt


class OAuthServer(PeerServer):
    def __init__(self, *, expires_in: int = 3600, subject_issuer: Issuer | None = None) -> None:
        super().__init__()
        self.expires_in = expires_in
        self.clients: dict[str, Client] = {}
        self.issuer = Issuer("urn:test:oauth")
        # The IdP whose tokens callers present for exchange.
        self.subject_issuer = subject_issuer
        self.requests: list[dict[str, str]] = []
        self.app.router.add_post("/token", self._token)
        self.app.router.add_get("/jwks", self._jwks)

    async def start(self) -> Self:
        await super().start()
        self.issuer.iss = self.url
        return self

    @property
    def token_url(self) -> str:
        return f"{self.url}/token"

    def add_client(self, client_id: str, secret: str | None = None, public_key: Any = None) -> None:
        self.clients[client_id] = Client(client_id, secret, public_key)

    async def _jwks(self, request: web.Request) -> web.Response:
        return web.json_response(self.issuer.jwks())

    @staticmethod
    def _error(code: str, status: int = 400) -> web.Response:
        return web.json_response({"error": code}, status=status)

    def _authenticate(self, request: web.Request, form: dict[str, str]) -> Client | None:
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            raw = base64.b64decode(header[6:]).decode()
            cid, _, secret = raw.partition(":")
            client = self.clients.get(unquote(cid))
            return client if client and client.secret == unquote(secret) else None
        if form.get("client_assertion_type") == JWT_BEARER_CLIENT:
            client = self.clients.get(form.get("client_id", ""))
            if client is None or client.public_key is None:
                return None
            try:
                claims = jwt.decode(
                    form.get("client_assertion", ""),
                    client.public_key,
                    algorithms=["RS256", "ES256"],
                    audience=self.token_url,
                    options={"require": ["exp", "iss", "sub", "aud", "jti"]},
                )
            except jwt.PyJWTError:
                return None
            ok = claims["iss"] == claims["sub"] == client.client_id
            return client if ok else None
        client = self.clients.get(form.get("client_id", ""))
        if client and client.secret is not None and client.secret == form.get("client_secret"):
            return client
        return None

    async def _token(self, request: web.Request) -> web.Response:
        self.count("token")
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.requests.append({k: v for k, v in form.items() if "secret" not in k})
        client = self._authenticate(request, form)
        if client is None:
            return self._error("invalid_client", 401)
        grant = form.get("grant_type")
        claims: dict[str, Any] = {"jti": uuid.uuid4().hex, "client_id": client.client_id}
        if form.get("scope"):
            claims["scope"] = form["scope"]
        aud = form.get("audience") or form.get("resource")
        if aud:
            claims["aud"] = aud
        if grant == "client_credentials":
            claims["sub"] = client.client_id
        elif grant == TOKEN_EXCHANGE:
            self.count("exchange")
            if self.subject_issuer is None or form.get("subject_token_type") != ACCESS_TOKEN_TYPE:
                return self._error("invalid_request")
            try:
                subject = self.subject_issuer.verify(form.get("subject_token", ""))
            except jwt.PyJWTError:
                return self._error("invalid_grant")
            claims["sub"] = subject["sub"]
            claims["act"] = {"sub": client.client_id}
        else:
            return self._error("unsupported_grant_type")
        token = self.issuer.mint(claims, self.expires_in)
        body: dict[str, Any] = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
        }
        if grant == TOKEN_EXCHANGE:
            body["issued_token_type"] = ACCESS_TOKEN_TYPE
        return web.json_response(body, headers={"Cache-Control": "no-store"})
