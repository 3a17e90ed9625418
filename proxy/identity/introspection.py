"""Opaque access tokens checked with the issuer's RFC 7662 introspection endpoint.

Results are cached until min(exp, cache_ttl), keyed by a hash of the token and
the endpoint and client that asked (so two configurations never share an
answer), and claims are re-checked on every hit. ``active: false`` is cached
only briefly so a flood of junk tokens does not become a flood of requests.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from cachetools import TLRUCache

from proxy.errors import AuthenticationError, IdentityProviderUnavailable
from proxy.identity.config import IntrospectionConfig, IssuerConfig
from proxy.identity.fetch import FetchError, basic_auth, post_form
from proxy.identity.jwt_verify import claim_at, identity_from_claims
from proxy.identity.model import Identity

_NEGATIVE_TTL = 10.0


@dataclass(slots=True)
class _Result:
    claims: Mapping[str, Any] | None  # None: inactive
    until: float
    # Built from ``claims`` on the first request that passes the checks: the
    # same answer gives the same identity, so later hits reuse it.
    identity: Identity | None = None


def check_introspection(claims: Mapping[str, Any], cfg: IssuerConfig, now: float) -> None:
    """What an active introspection response must still satisfy (pure)."""
    if claims.get("active") is not True:
        raise AuthenticationError("invalid_token", detail="token is not active")
    if claims.get("token_type") == "refresh_token":
        raise AuthenticationError("invalid_token", detail="refresh tokens are not credentials")
    iss = claims.get("iss")
    if iss is not None and iss != cfg.issuer:
        raise AuthenticationError("invalid_token", detail="introspected iss does not match")
    exp = claims.get("exp")
    if isinstance(exp, int | float) and now > exp + cfg.clock_skew:
        raise AuthenticationError("expired_token", detail="token expired")
    aud = claims.get("aud")
    if aud is not None:
        auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if not any(a in cfg.audiences for a in auds):
            raise AuthenticationError("invalid_token", detail="introspected aud does not match")
    for name in cfg.required_claims:
        if claim_at(claims, name) in (None, "", [], {}):
            raise AuthenticationError("invalid_token", detail=f"required claim {name} missing")


class Introspector:
    def __init__(
        self,
        cfg: IssuerConfig,
        session: aiohttp.ClientSession,
        *,
        cache_size: int = 10000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        assert cfg.introspection is not None
        self.cfg = cfg
        self.icfg: IntrospectionConfig = cfg.introspection
        self._session = session
        self._clock = clock
        self._cache: TLRUCache[bytes, _Result] = TLRUCache(
            max(cache_size, 1), ttu=lambda _k, v, _now: v.until, timer=clock
        )
        self._scope = f"{self.icfg.endpoint}\0{self.icfg.client_id}\0".encode()
        self.requests = 0

    def _auth(self) -> str:
        secret = self.icfg.client_secret.read() if self.icfg.client_secret else ""
        return basic_auth(self.icfg.client_id, secret)

    async def introspect(self, token: str) -> Identity:
        now = self._clock()
        key = hashlib.sha256(self._scope + token.encode()).digest()
        result = self._cache.get(key)
        if result is None:
            result = await self._ask(token, now)
            self._cache[key] = result
        if result.claims is None:
            raise AuthenticationError("invalid_token", detail="token is not active")
        check_introspection(result.claims, self.cfg, now)
        if result.identity is not None:
            return result.identity
        claims = dict(result.claims)
        if claim_at(claims, self.cfg.claims.subject) is None and "client_id" in claims:
            # Client-credentials tokens often carry no sub: the client is the caller.
            claims.setdefault("sub", claims["client_id"])
        result.identity = identity_from_claims(claims, self.cfg, "opaque", token)
        return result.identity

    async def _ask(self, token: str, now: float) -> _Result:
        self.requests += 1
        try:
            status, body = await post_form(
                self._session,
                self.icfg.endpoint,
                {"token": token, "token_type_hint": "access_token"},
                authorization=self._auth(),
            )
        except (FetchError, OSError, KeyError) as exc:
            raise IdentityProviderUnavailable(detail=f"introspection failed: {exc}") from exc
        if status != 200 or not isinstance(body, dict):
            raise IdentityProviderUnavailable(detail=f"introspection answered HTTP {status}")
        if body.get("active") is not True:
            return _Result(None, now + min(self.icfg.cache_ttl, _NEGATIVE_TTL))
        until = now + self.icfg.cache_ttl
        exp = body.get("exp")
        if isinstance(exp, int | float):
            until = min(until, float(exp))
        return _Result(body, until)
