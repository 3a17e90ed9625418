"""Establish who is calling, from the first credential the request carries.

Order: verified client certificate (when mTLS identity is enabled), API key,
Bearer token (a JWT by shape, otherwise introspection), browser session
cookie. No credential at all yields ``None`` (policy decides whether anonymous
access is allowed); a credential that fails raises AuthenticationError (401),
and an IdP that cannot be consulted raises IdentityProviderUnavailable (503).
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from proxy.errors import AuthenticationError, GatehouseError, IdentityProviderUnavailable, Reason
from proxy.http.protocol import RequestView
from proxy.identity.apikeys import KEY_PREFIX, ApiKeyStore
from proxy.identity.browser import BrowserLogin
from proxy.identity.config import HMAC_ALGORITHMS, IdentityConfig, IssuerConfig
from proxy.identity.fetch import identity_session
from proxy.identity.introspection import Introspector
from proxy.identity.jwks import JwksClient
from proxy.identity.jwt_verify import (
    TokenHeader,
    UnknownKey,
    VerificationKey,
    check_claims,
    hmac_key,
    identity_from_claims,
    invalid,
    looks_like_jwe,
    looks_like_jwt,
    parse_header,
    select_key,
    unverified_claims,
    verify_signature,
)
from proxy.identity.mtls import MTLS_ISSUER, identity_from_certificate
from proxy.model import AuthMethod, Identity, RequestFacts
from proxy.observability.metrics import AUTH, TOKEN_CACHE, child

log = logging.getLogger(__name__)

_UNKNOWN_ISSUER = "unknown"
_CACHE_HIT = child(TOKEN_CACHE, "hit")
_CACHE_MISS = child(TOKEN_CACHE, "miss")


@dataclass(frozen=True, slots=True)
class Authentication:
    """An identity plus cookies the response must set (a refreshed browser session)."""

    identity: Identity | None
    set_cookies: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _Cached:
    identity: Identity
    issuer: str
    cache_id: str
    kid: str | None
    expires_at: float
    # Earliest time the time claims (nbf, iat, with clock skew) admit the token.
    # Every other claim check depends only on the claims and the issuer config,
    # both fixed for an entry (``cache_id``), and passed when it was stored.
    valid_from: float
    authentication: Authentication


def _valid_from(claims: Mapping[str, object], skew: float) -> float:
    times = [v for v in (claims.get("nbf"), claims.get("iat")) if isinstance(v, int | float)]
    return max(times) - skew if times else -math.inf


class _TokenCache:
    """Verified tokens by the token itself: LRU, an entry never outliving its ``exp``.

    Keyed by the token string rather than a digest of it: the entry's identity
    holds the token anyway, and a dict lookup is cheaper than hashing it again.
    """

    __slots__ = ("_entries", "_maxsize")

    def __init__(self, maxsize: int) -> None:
        self._maxsize = maxsize
        self._entries: OrderedDict[str, _Cached] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token: str, now: float) -> _Cached | None:
        entries = self._entries
        hit = entries.get(token)
        if hit is None:
            return None
        if now >= hit.expires_at:
            del entries[token]
            return None
        entries.move_to_end(token)
        return hit

    def put(self, token: str, entry: _Cached) -> None:
        entries = self._entries
        entries[token] = entry
        entries.move_to_end(token)
        while len(entries) > self._maxsize:
            entries.popitem(last=False)


class _Issuer:
    """One configured issuer with its key source and optional introspection."""

    def __init__(self, cfg: IssuerConfig, session: aiohttp.ClientSession, cache_size: int) -> None:
        self.cfg = cfg
        self.cache_id = cfg.cache_identity
        self.ok = child(AUTH, cfg.issuer, "jwt", "ok")
        self.jwks = JwksClient(cfg, session)
        # An HMAC-only issuer has no JWKS to fetch (and must not need one to be ready).
        self.needs_jwks = any(a not in HMAC_ALGORITHMS for a in cfg.algorithms)
        self.secret: VerificationKey | None = None
        if cfg.hs256_secret is not None:
            self.secret = hmac_key(cfg.hs256_secret.read().encode(), cfg.algorithms)
        self.introspector = (
            Introspector(cfg, session, cache_size=cache_size) if cfg.introspection else None
        )


class Authenticator:
    def __init__(self, config: IdentityConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._issuers: dict[str, _Issuer] = {}
        self._introspectors: list[Introspector] = []
        self._cache: _TokenCache | None = None
        if config.token_cache_size > 0:
            self._cache = _TokenCache(config.token_cache_size)
        self.api_keys: ApiKeyStore | None = None
        if config.api_keys is not None:
            pepper = config.api_keys.pepper
            self.api_keys = ApiKeyStore(
                config.api_keys.file,
                pepper=pepper.read().encode() if pepper is not None else None,
                max_failures_per_minute=config.api_keys.max_failures_per_minute,
            )
        self.browser: BrowserLogin | None = None

    # -- lifecycle -----------------------------------------------------------
    async def start(self) -> None:
        self._session = identity_session()
        cache_size = max(self.config.token_cache_size, 1)
        for cfg in self.config.issuers:
            self._issuers[cfg.issuer] = _Issuer(cfg, self._session, cache_size)
        self._introspectors = [
            i.introspector for i in self._issuers.values() if i.introspector is not None
        ]
        for issuer in self._issuers.values():
            if issuer.needs_jwks:
                await issuer.jwks.refresh()
        if self.config.browser is not None:
            shared = self._issuers.get(self.config.browser.issuer)
            self.browser = BrowserLogin(
                self.config.browser,
                self._session,
                issuer_config=shared.cfg if shared else None,
                jwks=shared.jwks if shared else None,
                max_token_bytes=self.config.max_token_bytes,
            )
            await self.browser.start()

    async def close(self) -> None:
        for issuer in self._issuers.values():
            await issuer.jwks.close()
            if issuer.introspector is not None:
                await issuer.introspector.close()
        if self.browser is not None:
            await self.browser.close()
        if self.api_keys is not None:
            self.api_keys.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def ready(self) -> bool:
        """True when every issuer has usable keys (and browser login its metadata)."""
        if not all(i.jwks.ready() for i in self._issuers.values() if i.needs_jwks):
            return False
        return self.browser is None or self.browser.ready()

    def jwks_client(self, issuer: str) -> JwksClient | None:
        found = self._issuers.get(issuer)
        return found.jwks if found else None

    def introspector(self, issuer: str) -> Introspector | None:
        found = self._issuers.get(issuer)
        return found.introspector if found else None

    # -- browser login hooks for the core's handler -----------------------------------
    async def local_endpoint(
        self, request: RequestView, facts: RequestFacts
    ) -> web.StreamResponse | None:
        """``/.gatehouse/*`` login endpoints; None when not ours (or no browser login)."""
        if self.browser is None:
            return None
        return await self.browser.handle(request, facts)

    async def login_response(self, facts: RequestFacts) -> web.Response | None:
        """For an unauthenticated request: IdP redirect (pages) or 401 JSON (API calls).

        None when browser login is not configured: the core answers 401 itself.
        """
        if self.browser is None:
            return None
        return await self.browser.login_response(facts)

    # -- entry points ----------------------------------------------------------
    async def authenticate(self, facts: RequestFacts) -> Identity | None:
        return (await self.authenticate_full(facts)).identity

    def _credential(self, facts: RequestFacts) -> tuple[str, str] | None:
        """The credential that counts, by precedence: the client certificate (with
        mTLS on), then the API key header, then a bearer token; None: none of them."""
        if self.config.mtls.enabled and facts.client_cert is not None:
            return "mtls", ""
        headers = facts.headers
        if self.api_keys is not None and self.config.api_keys is not None:
            key = headers.get(self.config.api_keys.header)
            if key is not None:
                return "apikey", key.strip()
        authorization = headers.get("authorization")
        if authorization is not None:
            scheme, _, credential = authorization.strip().partition(" ")
            if scheme.lower() == "bearer":
                return "bearer", credential.strip()
        return None

    def cached(self, facts: RequestFacts) -> Authentication | None:
        """What :meth:`authenticate_full` would answer, when that is a cached bearer
        verification that still holds; else None. Synchronous, so the common
        request needs no coroutine here."""
        found = self._credential(facts)
        return self._hot(found[1]) if found is not None and found[0] == "bearer" else None

    async def authenticate_full(self, facts: RequestFacts) -> Authentication:
        """Like :meth:`authenticate`, plus Set-Cookie values for a refreshed session."""
        found = self._credential(facts)
        if found is not None:
            kind, value = found
            cert = facts.client_cert
            if kind == "mtls" and cert is not None:
                return Authentication(
                    self._counted(MTLS_ISSUER, "mtls", lambda: identity_from_certificate(cert))
                )
            if kind == "apikey":
                return Authentication(await self._api_key(value))
            hot = self._hot(value)
            return hot if hot is not None else Authentication(await self._bearer(value))
        if self.browser is not None:
            session = await self.browser.authenticate(facts)
            if session is not None:
                return Authentication(session.identity, session.set_cookies)
        return Authentication(None)

    def _counted(self, issuer: str, method: AuthMethod, fn: Callable[[], Identity]) -> Identity:
        try:
            identity = fn()
        except GatehouseError as exc:
            AUTH.labels(issuer=issuer, method=method, result=exc.reason).inc()
            raise
        AUTH.labels(issuer=issuer, method=method, result="ok").inc()
        return identity

    async def _api_key(self, key: str) -> Identity:
        assert self.api_keys is not None
        try:
            identity = await self.api_keys.authenticate(key)
        except GatehouseError as exc:
            AUTH.labels(issuer="apikey", method="apikey", result=exc.reason).inc()
            raise
        AUTH.labels(issuer="apikey", method="apikey", result="ok").inc()
        return identity

    async def _bearer(self, token: str) -> Identity:
        if not token:
            AUTH.labels(issuer=_UNKNOWN_ISSUER, method="jwt", result=Reason.INVALID_TOKEN).inc()
            raise invalid("empty bearer token")
        if len(token) > self.config.max_token_bytes:
            AUTH.labels(issuer=_UNKNOWN_ISSUER, method="jwt", result=Reason.INVALID_TOKEN).inc()
            raise invalid("token exceeds max_token_bytes")
        if token.startswith(KEY_PREFIX):
            if self.api_keys is None:
                # Never forward something shaped like an API key to an introspection endpoint.
                AUTH.labels(issuer="apikey", method="apikey", result=Reason.INVALID_API_KEY).inc()
                raise AuthenticationError(Reason.INVALID_API_KEY, detail="API keys are not enabled")
            return await self._api_key(token)
        if looks_like_jwt(token):
            return await self._jwt(token)
        if looks_like_jwe(token):
            AUTH.labels(issuer=_UNKNOWN_ISSUER, method="jwt", result=Reason.INVALID_TOKEN).inc()
            raise invalid("encrypted tokens (JWE) are not accepted")
        return await self._opaque(token)

    def _hot(self, token: str) -> Authentication | None:
        """A cached verification that holds now, without leaving the caller's frame.

        Anything short of a clean hit returns None and the full path (which
        counts misses and failures) runs instead; this path counts only hits.
        """
        cache = self._cache
        if cache is None:
            return None
        now = self._clock()
        hit = cache.get(token, now)
        if hit is None or now < hit.valid_from:
            return None
        issuer = self._issuers.get(hit.issuer)
        if issuer is None or issuer.cache_id != hit.cache_id or not self._still_keyed(hit, issuer):
            return None
        _CACHE_HIT.inc()
        issuer.ok.inc()
        return hit.authentication

    async def _jwt(self, token: str) -> Identity:
        now = self._clock()
        if self._cache is not None:
            hit = self._cache.get(token, now)
            if hit is not None:
                issuer = self._issuers.get(hit.issuer)
                # The entry counts only for the exact config that produced it, and only
                # while its key is still published; claims are re-checked every time.
                if (
                    issuer is not None
                    and issuer.cache_id == hit.cache_id
                    and self._still_keyed(hit, issuer)
                ):
                    _CACHE_HIT.inc()
                    try:
                        check_claims(hit.identity.claims, issuer.cfg, now)
                    except GatehouseError as exc:
                        AUTH.labels(issuer=issuer.cfg.issuer, method="jwt", result=exc.reason).inc()
                        raise
                    issuer.ok.inc()
                    return hit.identity
            _CACHE_MISS.inc()
        label = _UNKNOWN_ISSUER
        try:
            header = parse_header(token, self.config.max_token_bytes)
            unverified = unverified_claims(token, self.config.max_token_bytes)
            found = self._issuers.get(unverified["iss"])
            if found is None:
                raise invalid("token issuer is not configured")
            label = found.cfg.issuer
            key = await self._key_for(header, found)
            claims = verify_signature(token, header, key, found.cfg, now, unverified)
            identity = identity_from_claims(claims, found.cfg, "jwt", token)
        except GatehouseError as exc:
            AUTH.labels(issuer=label, method="jwt", result=exc.reason).inc()
            raise
        if self._cache is not None and identity.expires_at is not None:
            self._cache.put(
                token,
                _Cached(
                    identity,
                    found.cfg.issuer,
                    found.cache_id,
                    key.kid,
                    identity.expires_at,
                    _valid_from(claims, found.cfg.clock_skew),
                    Authentication(identity),
                ),
            )
        found.ok.inc()
        return identity

    def _still_keyed(self, hit: _Cached, issuer: _Issuer) -> bool:
        """A cached verification only counts while its key is still published."""
        if hit.kid is None:
            return True
        return hit.kid in issuer.jwks.current().by_kid

    async def _key_for(self, header: TokenHeader, issuer: _Issuer) -> VerificationKey:
        if header.alg in HMAC_ALGORITHMS:
            return select_key(header, issuer.cfg, issuer.jwks.current(), issuer.secret)
        try:
            return select_key(header, issuer.cfg, issuer.jwks.current(), issuer.secret)
        except UnknownKey:
            pass
        await issuer.jwks.refresh_for_unknown_kid()
        keys = issuer.jwks.current(refresh=False)
        try:
            return select_key(header, issuer.cfg, keys, issuer.secret)
        except UnknownKey:
            if not len(keys) or not issuer.jwks.healthy:
                # The key source could not be reached (or gave no usable JWKS): a
                # forged kid cannot be told from a rotated one, so 503.
                raise IdentityProviderUnavailable(detail="no usable key for token") from None
            # The IdP answered (now, or within the refetch interval) without it.
            raise invalid("token kid is not in the issuer's JWKS") from None

    def _introspector_for(self, token: str) -> Introspector | None:
        """The one issuer an opaque token may be sent to: the one whose token_prefix
        it starts with, else the one without a prefix (configuration guarantees at
        most one of each); None: no issuer takes it, and nothing is sent anywhere."""
        fallback: Introspector | None = None
        for introspector in self._introspectors:
            prefix = introspector.icfg.token_prefix
            if prefix is None:
                fallback = introspector
            elif token.startswith(prefix):
                return introspector
        return fallback

    async def _opaque(self, token: str) -> Identity:
        introspector = self._introspector_for(token)
        if introspector is None:
            AUTH.labels(issuer=_UNKNOWN_ISSUER, method="opaque", result=Reason.INVALID_TOKEN).inc()
            raise invalid("opaque token and no introspecting issuer takes it")
        issuer = introspector.cfg
        try:
            identity = await introspector.introspect(token)
        except GatehouseError as exc:
            AUTH.labels(issuer=issuer.issuer, method="opaque", result=exc.reason).inc()
            raise
        AUTH.labels(issuer=issuer.issuer, method="opaque", result="ok").inc()
        return identity
