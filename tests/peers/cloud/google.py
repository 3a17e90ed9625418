"""Google identity endpoints: the GCE metadata server and a service account's ``token_uri``.

* Metadata: ``GET /computeMetadata/v1/instance/service-accounts/default/identity
  ?audience=...`` with ``Metadata-Flavor: Google``; the body is the ID token.
* ``token_uri``: ``POST`` a JWT-bearer grant (RFC 7523) signed with the key
  file's private key; with ``target_audience`` it answers ``{"id_token"}``,
  with ``scope`` an opaque ``access_token``.
* Metadata ``.../default/token``: an access token of the instance's account.
* IAM Credentials ``POST /v1/projects/-/serviceAccounts/{email}:generateIdToken``
  with a bearer access token; allowed when the caller holds Token Creator on
  the target (``token_creators``).

ID tokens look like Google's: ``iss`` https://accounts.google.com, ``aud`` the
audience, ``email`` of the service account, RS256 with a per-run key.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.peers.cloud.keys import Issuer, new_rsa_key, pem
from tests.peers.cloud.server import PeerServer

GOOGLE_ISSUER = "https://accounts.google.com"
GOOGLE_TOKEN_ENDPOINT = "https://oauth2.googleapis.com/token"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
METADATA_SA = "default-sa@test-project.iam.gserviceaccount.com"


class GooglePeer(PeerServer):
    def __init__(self, *, lifetime: int = 3600) -> None:
        super().__init__()
        self.lifetime = lifetime
        self.issuer = Issuer(GOOGLE_ISSUER)
        self.service_accounts: dict[str, rsa.RSAPublicKey] = {}
        self.access_tokens: dict[str, str] = {}  # opaque token -> principal email
        self.token_creators: dict[str, set[str]] = {}  # target SA -> who may impersonate
        self.app.router.add_get(
            "/computeMetadata/v1/instance/service-accounts/default/identity", self._identity
        )
        self.app.router.add_get(
            "/computeMetadata/v1/instance/service-accounts/default/token", self._metadata_token
        )
        self.app.router.add_post("/token", self._token)
        self.app.router.add_post("/v1/projects/-/serviceAccounts/{name}", self._generate_id_token)
        self.app.router.add_get("/oauth2/v3/certs", self._certs)

    @property
    def jwks_url(self) -> str:
        return f"{self.url}/oauth2/v3/certs"

    @property
    def token_uri(self) -> str:
        return f"{self.url}/token"

    def service_account_key_file(self, directory: Path, email: str) -> Path:
        """Write a key file like the console's, whose ``token_uri`` points at this peer."""
        key = new_rsa_key()
        self.service_accounts[email] = key.public_key()
        path = directory / f"{email.split('@')[0]}.json"
        path.write_text(
            json.dumps(
                {
                    "type": "service_account",
                    "project_id": "test-project",
                    "private_key_id": uuid.uuid4().hex,
                    "private_key": pem(key),
                    "client_email": email,
                    "client_id": "100000000000000000001",
                    "token_uri": self.token_uri,
                }
            ),
            encoding="utf-8",
        )
        return path

    def _id_token(self, audience: str, email: str) -> str:
        claims: dict[str, Any] = {
            "aud": audience,
            "azp": email,
            "sub": str(abs(hash(email)) % 10**21),
            "email": email,
            "email_verified": True,
        }
        return self.issuer.mint(claims, self.lifetime)

    async def _certs(self, request: web.Request) -> web.Response:
        return web.json_response(self.issuer.jwks())

    async def _identity(self, request: web.Request) -> web.Response:
        self.count("metadata_identity")
        if request.headers.get("Metadata-Flavor") != "Google":
            return web.Response(status=403, text="Missing Metadata-Flavor:Google header.")
        audience = request.query.get("audience")
        if not audience:
            return web.Response(status=400, text="non-empty audience parameter required")
        return web.Response(
            text=self._id_token(audience, METADATA_SA),
            headers={"Metadata-Flavor": "Google"},
            content_type="application/text",
        )

    def _access_token(self, principal: str) -> dict[str, Any]:
        token = f"ya29.{uuid.uuid4().hex}"
        self.access_tokens[token] = principal
        return {"access_token": token, "expires_in": self.lifetime, "token_type": "Bearer"}

    async def _metadata_token(self, request: web.Request) -> web.Response:
        self.count("metadata_token")
        if request.headers.get("Metadata-Flavor") != "Google":
            return web.Response(status=403, text="Missing Metadata-Flavor:Google header.")
        return web.json_response(
            self._access_token(METADATA_SA), headers={"Metadata-Flavor": "Google"}
        )

    async def _generate_id_token(self, request: web.Request) -> web.Response:
        self.count("generate_id_token")
        target, _, method = request.match_info["name"].partition(":")
        if method != "generateIdToken":
            return web.json_response({"error": {"code": 404, "status": "NOT_FOUND"}}, status=404)
        bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
        principal = self.access_tokens.get(bearer)
        if principal is None:
            return web.json_response(
                {"error": {"code": 401, "status": "UNAUTHENTICATED"}}, status=401
            )
        if principal not in self.token_creators.get(target, set()):
            return web.json_response(
                {"error": {"code": 403, "status": "PERMISSION_DENIED"}}, status=403
            )
        body = await request.json()
        audience = body.get("audience") if isinstance(body, dict) else None
        if not audience:
            return web.json_response(
                {"error": {"code": 400, "status": "INVALID_ARGUMENT"}}, status=400
            )
        return web.json_response({"token": self._id_token(audience, target)})

    async def _token(self, request: web.Request) -> web.Response:
        self.count("token_uri")
        form = await request.post()
        if form.get("grant_type") != JWT_BEARER:
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        assertion = str(form.get("assertion", ""))
        try:
            unverified = jwt.decode(assertion, options={"verify_signature": False})
            public = self.service_accounts[unverified["iss"]]
            claims = jwt.decode(
                assertion,
                public,
                algorithms=["RS256"],
                # google-auth always addresses the grant to Google's endpoint,
                # whatever token_uri the key file names.
                audience=[self.token_uri, GOOGLE_TOKEN_ENDPOINT],
                options={"require": ["exp", "iat", "iss", "aud"]},
            )
        except (jwt.PyJWTError, KeyError):
            return web.json_response({"error": "invalid_grant"}, status=400)
        audience = claims.get("target_audience")
        if not audience:
            if claims.get("scope"):
                return web.json_response(self._access_token(claims["iss"]))
            return web.json_response({"error": "invalid_request"}, status=400)
        return web.json_response({"id_token": self._id_token(audience, claims["iss"])})
