"""OAuth 2.0 client credentials with a client secret or ``private_key_jwt`` (RFC 7523)."""

from __future__ import annotations

import ssl
import time
import uuid

import aiohttp
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from proxy.credentials.cache import Credential, CredentialFetchError
from proxy.credentials.config import ClientCredentialsSpec
from proxy.credentials.providers.base import FetchingProvider, bearer, ssl_context
from proxy.credentials.providers.oauth import authenticate_with_secret, token_request
from proxy.model import Identity

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def client_assertion(
    client_id: str, audience: str, key_pem: str, key_id: str | None, lifetime: int = 60
) -> str:
    """A signed JWT authenticating the client (RFC 7523 section 2.2)."""
    try:
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except (ValueError, TypeError):
        raise CredentialFetchError("private key cannot be loaded") from None
    if isinstance(key, rsa.RSAPrivateKey):
        alg = "RS256"
    elif isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1":
        alg = "ES256"
    else:
        raise CredentialFetchError("private key must be RSA or EC P-256")
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "iat": now,
        "exp": now + lifetime,
        "jti": uuid.uuid4().hex,
    }
    headers = {"kid": key_id} if key_id else None
    return jwt.encode(claims, key, algorithm=alg, headers=headers)


class ClientCredentialsProvider(FetchingProvider):
    type = "client_credentials"

    def __init__(self, spec: ClientCredentialsSpec) -> None:
        self.spec = spec
        self._http: aiohttp.ClientSession | None = None
        self._ssl: ssl.SSLContext | bool = True

    async def start(self, http: aiohttp.ClientSession) -> None:
        self._http = http
        self._ssl = ssl_context(self.spec.ca_bundle)

    def shape(self) -> tuple[str, ...]:
        s = self.spec
        return (s.token_url, s.client_id, " ".join(s.scope), s.audience or "", s.resource or "")

    async def fetch(self, identity: Identity | None) -> Credential:
        s = self.spec
        assert self._http is not None, "provider not started"
        form = {"grant_type": "client_credentials"}
        if s.scope:
            form["scope"] = " ".join(s.scope)
        if s.audience:
            form["audience"] = s.audience
        if s.resource:
            form["resource"] = s.resource
        headers: dict[str, str] = {}
        if s.auth_method == "private_key_jwt":
            assert s.private_key is not None
            try:
                key_pem = s.private_key.read()
            except (OSError, KeyError):
                raise CredentialFetchError("private key is unreadable") from None
            form["client_id"] = s.client_id
            form["client_assertion_type"] = ASSERTION_TYPE
            form["client_assertion"] = client_assertion(s.client_id, s.token_url, key_pem, s.key_id)
        else:
            authenticate_with_secret(s.client_id, s.auth_method, s.client_secret, form, headers)
        token, expires_at, _ = await token_request(
            self._http, s.token_url, form, headers=headers, ssl_ctx=self._ssl
        )
        return Credential(s.header, bearer(token), expires_at)
