"""RFC 8693 token exchange: the caller's token traded for one scoped to the backend."""

from __future__ import annotations

import ssl

import aiohttp

from proxy.credentials.cache import Credential, CredentialFetchError
from proxy.credentials.config import TokenExchangeSpec
from proxy.credentials.providers.base import FetchingProvider, bearer, ssl_context
from proxy.credentials.providers.oauth import authenticate_with_secret, token_request
from proxy.model import Identity

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"


class TokenExchangeProvider(FetchingProvider):
    type = "token_exchange"
    per_caller = True
    needs_caller_token = True

    def __init__(self, spec: TokenExchangeSpec) -> None:
        self.spec = spec
        self._http: aiohttp.ClientSession | None = None
        self._ssl: ssl.SSLContext | bool = True

    async def start(self, http: aiohttp.ClientSession) -> None:
        self._http = http
        self._ssl = ssl_context(self.spec.ca_bundle)

    def shape(self) -> tuple[str, ...]:
        s = self.spec
        return (
            s.token_url,
            s.client_id,
            s.audience or "",
            s.resource or "",
            " ".join(s.scope),
            s.requested_token_type or "",
        )

    async def fetch(self, identity: Identity | None) -> Credential:
        s = self.spec
        assert self._http is not None, "provider not started"
        if identity is None or not identity.token:
            raise CredentialFetchError("the caller has no token to exchange")
        form = {
            "grant_type": GRANT_TYPE,
            "subject_token": identity.token,
            "subject_token_type": s.subject_token_type,
        }
        if s.audience:
            form["audience"] = s.audience
        if s.resource:
            form["resource"] = s.resource
        if s.scope:
            form["scope"] = " ".join(s.scope)
        if s.requested_token_type:
            form["requested_token_type"] = s.requested_token_type
        headers: dict[str, str] = {}
        authenticate_with_secret(s.client_id, s.auth_method, s.client_secret, form, headers)
        token, expires_at, _ = await token_request(
            self._http, s.token_url, form, headers=headers, ssl_ctx=self._ssl,
            what="token exchange endpoint",
        )  # fmt: skip
        if identity.expires_at is not None:
            # A token standing in for the caller must not outlive the caller's own.
            expires_at = min(expires_at, identity.expires_at)
        return Credential(s.header, bearer(token), expires_at)
