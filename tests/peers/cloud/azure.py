"""Azure token endpoints: App Service managed identity, IMDS, and Entra ID v2.0.

* App Service: ``GET $IDENTITY_ENDPOINT?resource=...&api-version=2019-08-01``
  with ``X-IDENTITY-HEADER``; answers ``expires_on`` as epoch seconds.
* IMDS: ``GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=...``
  with ``Metadata: true``.
* Entra: ``POST /{tenant}/oauth2/v2.0/token`` (client secret or a federated
  client assertion for workload identity); served over TLS like the real one.

Tokens are v2.0-style access tokens: ``aud`` is the app id URI, ``iss`` is
``<authority>/<tenant>/v2.0``, with ``tid``/``oid``/``azp``.
"""

from __future__ import annotations

import ssl
import time
import uuid
from typing import Any, Self

import jwt
from aiohttp import web

from tests.peers.cloud.keys import Issuer
from tests.peers.cloud.server import PeerServer

TENANT = "11111111-2222-3333-4444-555555555555"
MI_OBJECT_ID = "aaaaaaaa-0000-0000-0000-000000000001"
FEDERATED_ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def _audience(resource_or_scope: str) -> str:
    return resource_or_scope.removesuffix("/.default")


class AzurePeer(PeerServer):
    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        issuer: Issuer | None = None,
        lifetime: int = 3600,
    ) -> None:
        super().__init__(ssl_context=ssl_context)
        self.identity_header = uuid.uuid4().hex
        self.lifetime = lifetime
        self.issuer = issuer or Issuer("")
        self.clients: dict[str, str] = {}
        # Certificate credentials: client id -> the certificate's public key.
        self.cert_clients: dict[str, Any] = {}
        # Workload identity: the cluster's service-account token issuer we trust.
        self.federated_issuer: Issuer | None = None
        self.app.router.add_get("/msi/token", self._app_service)
        self.app.router.add_get("/metadata/identity/oauth2/token", self._imds)
        self.app.router.add_post("/{tenant}/oauth2/v2.0/token", self._entra)
        self.app.router.add_get("/{tenant}/discovery/v2.0/keys", self._keys)

    async def start(self) -> Self:
        await super().start()
        if not self.issuer.iss:
            self.issuer.iss = f"{self.url}/{TENANT}/v2.0"
        return self

    @property
    def identity_endpoint(self) -> str:
        return f"{self.url}/msi/token"

    @property
    def jwks_url(self) -> str:
        return f"{self.url}/{TENANT}/discovery/v2.0/keys"

    def _mint(self, aud: str, claims: dict[str, Any]) -> tuple[str, int]:
        token = self.issuer.mint(
            {"aud": aud, "tid": TENANT, "ver": "2.0", "uti": uuid.uuid4().hex, **claims},
            self.lifetime,
        )
        return token, int(time.time()) + self.lifetime

    async def _keys(self, request: web.Request) -> web.Response:
        return web.json_response(self.issuer.jwks())

    async def _app_service(self, request: web.Request) -> web.Response:
        self.count("app_service")
        if request.headers.get("X-IDENTITY-HEADER") != self.identity_header:
            return web.json_response({"error": "unauthorized"}, status=401)
        q = request.query
        if q.get("api-version") != "2019-08-01" or not q.get("resource"):
            return web.json_response({"error": "invalid_request"}, status=400)
        aud = _audience(q["resource"])
        token, expires_on = self._mint(aud, {"oid": MI_OBJECT_ID, "sub": MI_OBJECT_ID})
        return web.json_response(
            {
                "access_token": token,
                "expires_on": str(expires_on),
                "resource": q["resource"],
                "token_type": "Bearer",
                "client_id": MI_OBJECT_ID,
            }
        )

    async def _imds(self, request: web.Request) -> web.Response:
        self.count("imds")
        if request.headers.get("Metadata") != "true":
            return web.json_response({"error": "invalid_request"}, status=400)
        q = request.query
        if not q.get("api-version") or not q.get("resource"):
            return web.json_response({"error": "invalid_request"}, status=400)
        aud = _audience(q["resource"])
        token, expires_on = self._mint(aud, {"oid": MI_OBJECT_ID, "sub": MI_OBJECT_ID})
        return web.json_response(
            {
                "access_token": token,
                "expires_in": str(self.lifetime),
                "expires_on": str(expires_on),
                "ext_expires_in": str(self.lifetime),
                "not_before": str(int(time.time())),
                "resource": q["resource"],
                "token_type": "Bearer",
            }
        )

    async def _entra(self, request: web.Request) -> web.Response:
        self.count("entra")
        form = await request.post()
        if request.match_info["tenant"] != TENANT:
            return web.json_response({"error": "invalid_tenant"}, status=400)
        if form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        client_id = str(form.get("client_id", ""))
        if form.get("client_assertion_type") == FEDERATED_ASSERTION:
            assertion = str(form.get("client_assertion", ""))
            try:
                if client_id in self.cert_clients:
                    # A certificate credential signs for exactly this endpoint.
                    claims = jwt.decode(
                        assertion,
                        self.cert_clients[client_id],
                        algorithms=["RS256", "PS256"],
                        audience=f"{self.url}{request.path}",
                        options={"require": ["exp", "iss", "sub", "aud"]},
                    )
                    if claims["iss"] != client_id or claims["sub"] != client_id:
                        raise jwt.InvalidTokenError("iss/sub must be the client id")
                elif self.federated_issuer is not None:
                    self.federated_issuer.verify(assertion, "api://AzureADTokenExchange")
                else:
                    raise jwt.InvalidTokenError("no key for this client")
            except jwt.PyJWTError:
                return web.json_response({"error": "invalid_client"}, status=401)
        elif self.clients.get(client_id) != form.get("client_secret"):
            return web.json_response({"error": "invalid_client"}, status=401)
        scope = str(form.get("scope", ""))
        scopes = [s for s in scope.split() if s.endswith("/.default")]
        if not scopes:
            return web.json_response({"error": "invalid_scope"}, status=400)
        token, _ = self._mint(
            _audience(scopes[0]), {"azp": client_id, "sub": client_id, "oid": client_id}
        )
        return web.json_response(
            {
                "token_type": "Bearer",
                "expires_in": self.lifetime,
                "ext_expires_in": self.lifetime,
                "access_token": token,
            }
        )
