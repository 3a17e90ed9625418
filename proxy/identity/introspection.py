"""Opaque access tokens checked with the issuer's RFC 7662 introspection endpoint.

Results are cached until min(exp, cache_ttl), keyed by a hash of the token and
the endpoint and client that asked (so two configurations never share an
answer), and claims are re-checked on every hit. What the endpoint can be made
to do by callers is bounded:

* one call per distinct token at a time: concurrent requests with the same
  token wait for the one call in flight (single-flight);
* ``active: false`` answers are cached for ``negative_cache_ttl`` too, so a
  repeated junk token costs one call;
* at most ``max_requests_per_second`` calls per issuer (per worker); beyond
  it the request fails closed with 503 ``idp_unavailable`` and nothing is sent.

An active answer counts only when it names this issuer (``iss``) and one of
its audiences (``aud``), as a JWT must, unless ``require_iss``/``require_aud``
are turned off for an IdP that leaves them out (a present value must still
match). The answer is parsed as strict JSON (fetch.post_form).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from cachetools import TLRUCache

from proxy.errors import AuthenticationError, IdentityProviderUnavailable, Reason
from proxy.identity.budget import TokenBucket
from proxy.identity.config import IntrospectionConfig, IssuerConfig
from proxy.identity.fetch import basic_auth, post_form
from proxy.identity.jwt_verify import claim_at, identity_from_claims
from proxy.model import Identity
from proxy.outbound import FetchError


@dataclass(slots=True)
class _Result:
    claims: Mapping[str, Any] | None  # None: inactive
    until: float
    # Built from ``claims`` on the first request that passes the checks: the
    # same answer gives the same identity, so later hits reuse it.
    identity: Identity | None = None


def _refused(detail: str) -> AuthenticationError:
    return AuthenticationError(Reason.INVALID_TOKEN, detail=detail)


def _audiences(aud: Any) -> list[Any]:
    return [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []


def check_introspection(claims: Mapping[str, Any], cfg: IssuerConfig, now: float) -> None:
    """What an active introspection response must still satisfy (pure)."""
    assert cfg.introspection is not None
    icfg = cfg.introspection
    if claims.get("active") is not True:
        raise _refused("token is not active")
    if claims.get("token_type") == "refresh_token":
        raise _refused("refresh tokens are not credentials")
    iss = claims.get("iss")
    if iss is None and icfg.require_iss:
        raise _refused("introspection answer names no iss")
    if iss is not None and iss != cfg.issuer:
        raise _refused("introspected iss does not match")
    exp = claims.get("exp")
    if exp is not None and (isinstance(exp, bool) or not isinstance(exp, int | float)):
        raise _refused("introspected exp is not a number")
    if exp is not None and now > exp + cfg.clock_skew:
        raise AuthenticationError(Reason.EXPIRED_TOKEN, detail="token expired")
    aud = claims.get("aud")
    if aud is None and icfg.require_aud:
        raise _refused("introspection answer names no aud")
    if aud is not None and not any(a in cfg.audiences for a in _audiences(aud)):
        raise _refused("introspected aud does not match")
    for name in cfg.required_claims:
        if claim_at(claims, name) in (None, "", [], {}):
            raise _refused(f"required claim {name} missing")


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
        self._inflight: dict[bytes, asyncio.Task[_Result]] = {}
        rate = self.icfg.max_requests_per_second
        self._budget = TokenBucket(capacity=rate, rate=rate, now=clock())
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
            result = await self._single_flight(key, token, now)
        if result.claims is None:
            raise _refused("token is not active")
        check_introspection(result.claims, self.cfg, now)
        if result.identity is not None:
            return result.identity
        claims = dict(result.claims)
        if claim_at(claims, self.cfg.claims.subject) is None and "client_id" in claims:
            # Client-credentials tokens often carry no sub: the client is the caller.
            claims.setdefault("sub", claims["client_id"])
        result.identity = identity_from_claims(claims, self.cfg, "opaque", token)
        return result.identity

    async def _single_flight(self, key: bytes, token: str, now: float) -> _Result:
        """One call per distinct token at a time; the others wait for its answer.

        The call runs as its own task, so a caller that goes away (and is
        cancelled) does not cancel the answer the others are waiting for.
        """
        task = self._inflight.get(key)
        if task is None:
            if not self._budget.take(now):
                raise IdentityProviderUnavailable(
                    detail=f"introspection for {self.cfg.issuer} over max_requests_per_second"
                )
            task = asyncio.get_running_loop().create_task(self._ask(token, now))
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._landed(key, done))
        return await asyncio.shield(task)

    def _landed(self, key: bytes, task: asyncio.Task[_Result]) -> None:
        del self._inflight[key]
        if task.cancelled():
            return
        if task.exception() is None:  # also marks a failure as seen by someone
            self._cache[key] = task.result()

    async def close(self) -> None:
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

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
            return _Result(None, now + self.icfg.negative_cache_ttl)
        until = now + self.icfg.cache_ttl
        exp = body.get("exp")
        if isinstance(exp, int | float) and not isinstance(exp, bool):
            until = min(until, float(exp))
        return _Result(body, until)
