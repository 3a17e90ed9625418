"""What the broker needs from a provider, whatever cloud or protocol is behind it."""

from __future__ import annotations

import re
import ssl
from abc import ABC, abstractmethod
from pathlib import Path

import aiohttp

from proxy.credentials.cache import Credential, CredentialFetchError
from proxy.model import Identity, RouteView


class Provider:
    """Lifecycle shared by every provider; the HTTP session is the broker's."""

    type: str = ""

    async def start(self, http: aiohttp.ClientSession) -> None:
        """Prepare clients; must not fetch a token (start stays fast and offline)."""

    async def close(self) -> None:
        """Release SDK clients."""


class HeaderProvider(Provider, ABC):
    """Headers computed locally per request (static values, signed assertions): not cached."""

    @abstractmethod
    def headers(self, route: RouteView, identity: Identity | None) -> list[tuple[str, str]]: ...


class FetchingProvider(Provider, ABC):
    """A token fetched from somewhere else: goes through the credential cache."""

    #: Tokens that carry the caller's identity are cached per caller.
    per_caller: bool = False
    #: The fetch starts from the caller's own token (a token exchange).
    needs_caller_token: bool = False

    @abstractmethod
    def shape(self) -> tuple[str, ...]:
        """The configuration that shaped the token (audience, scope, ...), for the cache key."""

    @abstractmethod
    async def fetch(self, identity: Identity | None) -> Credential: ...

    def header_for(self, route: RouteView) -> str | None:
        """The header this token goes in for ``route``; ``None`` keeps the fetched one."""
        return None


# RFC 6750 b64token: anything else (spaces, CR/LF, quotes) would corrupt or
# inject headers, so such a "token" is treated as a failed fetch.
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


def bearer(token: str) -> str:
    """``Bearer <token>`` after checking the token is a well-formed b64token."""
    if not _B64TOKEN.fullmatch(token):
        raise CredentialFetchError("issued token is not a valid bearer token")
    return f"Bearer {token}"


def ssl_context(ca_bundle: Path | None) -> ssl.SSLContext | bool:
    """Verification stays on; a CA bundle only replaces the system trust store."""
    if ca_bundle is None:
        return True
    return ssl.create_default_context(cafile=str(ca_bundle))
