"""Browser login's calls to the IdP's token endpoint, and its ID token checks.

Authlib's protocol helpers build the token requests; aiohttp carries them
(:func:`proxy.identity.fetch.post_form`, bounded and without redirects). ID
tokens are verified like bearer tokens, with this client as the audience and
the keys of :class:`~proxy.identity.discovery.ProviderDiscovery`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
from authlib.oauth2.rfc6749.parameters import (  # type: ignore[import-untyped]
    prepare_token_request,
)

from proxy.errors import AuthenticationError, IdentityProviderUnavailable, LoginFailed, Reason
from proxy.identity.config import IssuerConfig
from proxy.identity.discovery import ProviderDiscovery
from proxy.identity.fetch import basic_auth, post_form
from proxy.identity.jwt_verify import (
    UnknownKey,
    VerificationKey,
    parse_header,
    select_key,
    verify_signature,
)
from proxy.outbound import FetchError

Claims = dict[str, Any]
Tokens = dict[str, Any]


class TokenClient:
    def __init__(
        self,
        http: aiohttp.ClientSession,
        provider: ProviderDiscovery,
        id_token_cfg: IssuerConfig,
        *,
        client_id: str,
        secret: str | None,
        max_token_bytes: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._http = http
        self._provider = provider
        self._cfg = id_token_cfg
        self._client_id = client_id
        self._secret = secret
        self._max_token_bytes = max_token_bytes
        self._clock = clock

    async def redeem_code(
        self, code: str, redirect_uri: str, verifier: str
    ) -> tuple[Tokens, Claims]:
        """The token response for an authorization code, and its verified ID token's claims."""
        body = prepare_token_request(
            "authorization_code",
            code=code,
            redirect_uri=redirect_uri,
            code_verifier=verifier,
            **self._public_client_id(),
        )
        tokens = await self._request(body)
        id_token = tokens.get("id_token")
        if not isinstance(id_token, str):
            raise LoginFailed(detail="token response without id_token")
        return tokens, await self.verify_id_token(id_token)

    async def refresh(self, refresh_token: str) -> tuple[Tokens, Claims | None] | None:
        """New tokens (with the claims of a new ID token, if the IdP sent one), or None
        when the IdP refused the refresh token. IdentityProviderUnavailable: no answer."""
        body = prepare_token_request(
            "refresh_token", refresh_token=refresh_token, **self._public_client_id()
        )
        try:
            tokens = await self._request(body)
        except LoginFailed:
            return None
        id_token = tokens.get("id_token")
        claims = await self.verify_id_token(id_token) if isinstance(id_token, str) else None
        return tokens, claims

    async def verify_id_token(self, id_token: str) -> Claims:
        cfg = self._cfg
        header = parse_header(id_token, self._max_token_bytes)
        jwks = self._provider.jwks
        if jwks is None:
            raise IdentityProviderUnavailable(detail="no JWKS for the browser issuer")
        try:
            key: VerificationKey = select_key(header, cfg, jwks.current(), None)
        except UnknownKey:
            await jwks.refresh_for_unknown_kid()
            try:
                key = select_key(header, cfg, jwks.current(refresh=False), None)
            except UnknownKey:
                raise IdentityProviderUnavailable(detail="no key for ID token") from None
        claims = verify_signature(id_token, header, key, cfg, self._clock())
        aud = claims.get("aud")
        if isinstance(aud, list) and len(aud) > 1 and claims.get("azp") != self._client_id:
            raise AuthenticationError(
                Reason.INVALID_TOKEN, detail="ID token azp is not this client"
            )
        return claims

    def _public_client_id(self) -> dict[str, str]:
        """Public clients (no secret) name themselves in the token request body."""
        return {} if self._secret is not None else {"client_id": self._client_id}

    async def _request(self, body: str) -> Tokens:
        metadata = await self._provider.get()
        if metadata.token_endpoint is None:
            raise IdentityProviderUnavailable(detail="IdP has no token endpoint")
        authorization = None if self._secret is None else basic_auth(self._client_id, self._secret)
        try:
            status, tokens = await post_form(
                self._http, metadata.token_endpoint, body, authorization=authorization
            )
        except FetchError as exc:
            raise IdentityProviderUnavailable(detail=f"token endpoint: {exc}") from exc
        if status >= 500:
            raise IdentityProviderUnavailable(detail=f"token endpoint answered HTTP {status}")
        if status != 200 or not isinstance(tokens, dict):
            error = tokens.get("error") if isinstance(tokens, Mapping) else None
            raise LoginFailed(detail=f"token endpoint refused: {error}")
        return tokens
