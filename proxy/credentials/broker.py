"""The credential broker: every header a backend needs, for one request.

The core calls :meth:`CredentialBroker.headers` just before forwarding and
:meth:`CredentialBroker.invalidate` after an upstream 401 (then retries once).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Mapping

import aiohttp

from proxy.credentials.cache import CacheKey, CredentialCache
from proxy.credentials.config import (
    AssertionSigningConfig,
    AssertionSpec,
    AzureSpec,
    ClientCredentialsSpec,
    CredentialSpec,
    GcpSpec,
    StaticSpec,
    TokenExchangeSpec,
)
from proxy.credentials.providers.assertion import AssertionProvider, AssertionSigner
from proxy.credentials.providers.azure import AzureProvider
from proxy.credentials.providers.base import FetchingProvider, HeaderProvider, Provider
from proxy.credentials.providers.client_credentials import ClientCredentialsProvider
from proxy.credentials.providers.gcp import GcpProvider
from proxy.credentials.providers.static import StaticProvider
from proxy.credentials.providers.token_exchange import TokenExchangeProvider
from proxy.credentials.signing import SigningKeyError
from proxy.errors import AuthenticationError, Reason, UpstreamCredentialsUnavailable
from proxy.model import Identity, RouteView

log = logging.getLogger(__name__)


def caller_key(identity: Identity | None) -> str | None:
    """Who a per-caller token stands for, plus a hash of the token it was exchanged from.

    The caller's token is part of what shaped the exchanged one (scopes, expiry),
    so a new caller token gets a new exchange. Only a digest is kept.
    """
    if identity is None:
        return None
    digest = hashlib.sha256(identity.token.encode()).hexdigest()[:32] if identity.token else "-"
    return f"{identity.issuer}\x00{identity.subject}\x00{digest}"


def _provider(spec: CredentialSpec, signer: AssertionSigner | None) -> Provider:
    if isinstance(spec, StaticSpec):
        return StaticProvider(spec)
    if isinstance(spec, ClientCredentialsSpec):
        return ClientCredentialsProvider(spec)
    if isinstance(spec, AzureSpec):
        return AzureProvider(spec)
    if isinstance(spec, GcpSpec):
        return GcpProvider(spec)
    if isinstance(spec, AssertionSpec):
        return AssertionProvider(spec, signer)
    if isinstance(spec, TokenExchangeSpec):
        return TokenExchangeProvider(spec)
    raise TypeError(f"unknown credential spec {type(spec).__name__}")


class CredentialBroker:
    def __init__(
        self,
        specs: Mapping[str, tuple[CredentialSpec, ...]],
        signing: AssertionSigningConfig | None,
        public_url: str,
        *,
        cache: CredentialCache | None = None,
    ) -> None:
        self.public_url = public_url.rstrip("/")
        self.signer = AssertionSigner(signing, self.public_url) if signing is not None else None
        self.cache = cache if cache is not None else CredentialCache()
        self._providers: dict[str, tuple[Provider, ...]] = {
            backend: tuple(_provider(spec, self.signer) for spec in backend_specs)
            for backend, backend_specs in specs.items()
        }
        self._http: aiohttp.ClientSession | None = None
        self._started = False

    @property
    def needs_signer(self) -> bool:
        return any(isinstance(p, AssertionProvider) for ps in self._providers.values() for p in ps)

    async def start(self) -> None:
        """Load signing keys and prepare clients. Fetches nothing: start stays offline."""
        if self.signer is not None:
            try:
                self.signer.load()
            except SigningKeyError as exc:
                raise UpstreamCredentialsUnavailable(
                    detail=f"assertion signing keys unusable: {exc}"
                ) from None
        elif self.needs_signer:
            raise UpstreamCredentialsUnavailable(
                detail="a backend uses type: assertion but there is no 'assertions:' section"
            )
        # The SDKs and this session resolve names themselves; no cookies may leak across backends.
        self._http = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        for providers in self._providers.values():
            for provider in providers:
                await provider.start(self._http)
        self._started = True

    async def close(self) -> None:
        self._started = False
        await self.cache.close()
        for providers in self._providers.values():
            for provider in providers:
                await provider.close()
        if self._http is not None:
            await self._http.close()
            self._http = None

    def ready(self) -> bool:
        return self._started and (self.signer is None or self.signer.loaded)

    async def headers(
        self, backend: str, route: RouteView, identity: Identity | None
    ) -> list[tuple[str, str]]:
        """Every credential header for ``backend``; raises UpstreamCredentialsUnavailable."""
        providers = self._providers.get(backend)
        if not providers:
            return []
        out: list[tuple[str, str]] = []
        fetching: list[FetchingProvider] = []
        for provider in providers:
            if isinstance(provider, HeaderProvider):
                out.extend(provider.headers(route, identity))
            elif isinstance(provider, FetchingProvider):
                fetching.append(provider)
        if len(fetching) == 1:
            out.append(await self._fetched(backend, fetching[0], route, identity))
        elif fetching:
            results = await asyncio.gather(
                *(self._fetched(backend, p, route, identity) for p in fetching)
            )
            out.extend(results)
        return out

    async def _fetched(
        self, backend: str, provider: FetchingProvider, route: RouteView, identity: Identity | None
    ) -> tuple[str, str]:
        if provider.needs_caller_token and (identity is None or not identity.token):
            # The caller signed in without a token (API key, client certificate):
            # what is missing is the caller's credential, not ours, so 401, not 503.
            raise AuthenticationError(
                Reason.BEARER_TOKEN_REQUIRED,
                detail=f"backend {backend} exchanges the caller's token; the caller sent none",
            )
        key = CacheKey(
            provider.type,
            backend,
            provider.shape(),
            caller_key(identity) if provider.per_caller else None,
        )
        cred = await self.cache.get(key, lambda: provider.fetch(identity))
        return provider.header_for(route) or cred.header, cred.value

    def invalidate(self, backend: str, identity: Identity | None) -> bool:
        """Forget ``backend``'s shared tokens and ``identity``'s own ones after an upstream 401.

        False when nothing was forgotten (the cache's per-minute limit held the
        token): a retry would only send the same credential again.
        """
        dropped = self.cache.invalidate(backend, caller_key(identity))
        forgot = False
        for provider in self._providers.get(backend, ()):
            if isinstance(provider, AssertionProvider):
                provider.forget()
                forgot = True
        log.info("upstream credentials invalidated", extra={"backend": backend, "count": dropped})
        return dropped > 0 or forgot

    def jwks_document(self) -> bytes:
        """Body for ``/.well-known/gatehouse/jwks.json`` (``application/json``)."""
        if self.signer is None:
            return b'{"keys":[]}'
        return self.signer.jwks()
