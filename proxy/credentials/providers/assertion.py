"""Gatehouse-signed assertions telling a backend who the original caller is."""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

import jwt

from proxy.credentials.config import AssertionSigningConfig, AssertionSpec
from proxy.credentials.providers.base import HeaderProvider
from proxy.credentials.signing import (
    SigningKey,
    SigningKeyError,
    jwks_document,
    load_signing_keys,
)
from proxy.errors import UpstreamCredentialsUnavailable
from proxy.model import Identity, RouteView

log = logging.getLogger(__name__)

RESERVED = frozenset({"iss", "aud", "sub", "exp", "iat", "nbf", "jti", "email", "groups"})
RECHECK_SECONDS = 1.0
# Signed assertions kept per provider (one backend): callers active within half a lifetime.
MAX_CACHED_ASSERTIONS = 4096


def claims_within_budget(
    identity: Identity, names: tuple[str, ...], budget: int
) -> tuple[dict[str, Any], list[str]]:
    """The route's ``pass_claims`` that fit ``budget`` bytes of JSON, in the route's order.

    Returns (claims, names dropped for size). A claim that does not fit is
    dropped whole, never truncated: half a group list would mislead the backend.
    """
    out: dict[str, Any] = {}
    dropped: list[str] = []
    used = 0
    for name in names:
        if name in RESERVED or name in out or name not in identity.claims:
            continue
        value = identity.claims[name]
        size = len(json.dumps({name: value}, separators=(",", ":"), default=str)) - 1
        if used + size > budget:
            dropped.append(name)
            continue
        out[name] = value
        used += size
    return out, dropped


class AssertionSigner:
    """Signs assertions with the first key of the key file, re-reading it when it changes.

    Rotation: put a new key first and keep the old one listed. The new key is
    published at once and signs after ``publish_before_use``; the old one stays
    published as long as it is listed, covering assertions already issued.
    """

    def __init__(self, config: AssertionSigningConfig, issuer: str) -> None:
        self.config = config
        self.issuer = issuer
        self._keys: tuple[SigningKey, ...] = ()
        self._jwks = b'{"keys":[]}'
        self._mtime: int | None = None
        self._checked = 0.0
        self._first_seen: dict[str, float] = {}

    def load(self) -> None:
        """Read the key file now; raises SigningKeyError when there is no usable key at all."""
        self._checked = time.monotonic()
        path = self.config.signing_keys_file
        try:
            mtime = os.stat(path).st_mtime_ns
        except OSError as exc:
            if self._keys:
                log.warning("assertion key file unreadable, keeping loaded keys")
                return
            raise SigningKeyError(f"cannot read: {exc.strerror}") from None
        if mtime == self._mtime:
            return
        try:
            keys = load_signing_keys(path)
        except SigningKeyError as exc:
            if not self._keys:
                raise
            log.warning(
                "assertion key file invalid, keeping loaded keys", extra={"error": str(exc)}
            )
            return
        now = time.monotonic()
        for key in keys:
            # Keys present at start count as long published: they were, before a restart.
            self._first_seen.setdefault(key.kid, now if self._keys else float("-inf"))
        self._keys, self._mtime = keys, mtime
        self._jwks = jwks_document(keys)
        log.info("assertion signing keys loaded", extra={"kids": [k.kid for k in keys]})

    def _maybe_reload(self) -> None:
        if time.monotonic() - self._checked >= RECHECK_SECONDS:
            self.load()

    @property
    def loaded(self) -> bool:
        return bool(self._keys)

    def jwks(self) -> bytes:
        self._maybe_reload()
        return self._jwks

    def signing_key(self) -> SigningKey:
        """The first key in file order that has been published long enough, else the first."""
        now = time.monotonic()
        for key in self._keys:
            if now - self._first_seen.get(key.kid, now) >= self.config.publish_before_use:
                return key
        return self._keys[0]

    def current_key(self) -> SigningKey:
        """The key :meth:`sign` would use now (after the periodic key-file check)."""
        self._maybe_reload()
        if not self._keys:
            raise UpstreamCredentialsUnavailable(detail="no assertion signing key loaded")
        return self.signing_key()

    def sign(self, claims: dict[str, Any], key: SigningKey | None = None) -> str:
        if key is None:
            key = self.current_key()
        return jwt.encode(
            claims, key.private_key, algorithm="ES256", headers={"kid": key.kid, "typ": "JWT"}
        )


class AssertionProvider(HeaderProvider):
    """One signed assertion per caller, reused while more than half its lifetime is left.

    Signing costs far more than the rest of a request, and the assertion says
    nothing about the request itself: only who the caller is. So it is cached
    under everything it does say (signing key, subject, issuer, email, groups
    and the route's ``pass_claims`` values): a different caller, or the same
    caller with different claims, gets its own. Its ``jti`` therefore names
    one assertion that may travel with several requests of that caller, not
    one request; backends must not treat it as a one-time nonce.
    """

    type = "assertion"

    def __init__(
        self,
        spec: AssertionSpec,
        signer: AssertionSigner | None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.spec = spec
        self.signer = signer
        self._clock = clock
        # key → (assertion, issued at, reuse until); insertion order evicts the oldest.
        self._cache: dict[tuple[Any, ...], tuple[str, float, float]] = {}

    @property
    def cached(self) -> int:
        return len(self._cache)

    def forget(self) -> None:
        """Sign afresh from now on (after the backend refused an assertion)."""
        self._cache.clear()

    def headers(self, route: RouteView, identity: Identity | None) -> list[tuple[str, str]]:
        signer = self.signer
        if signer is None:
            raise UpstreamCredentialsUnavailable(detail="assertions are not configured")
        key = signer.current_key()
        extra: dict[str, Any] = {}
        dropped: list[str] = []
        if identity is None:
            cache_key: tuple[Any, ...] = (key.kid,)
        else:
            shown = b""
            if route.pass_claims:
                extra, dropped = claims_within_budget(
                    identity, route.pass_claims, route.pass_claims_max_bytes
                )
                shown = json.dumps(extra, separators=(",", ":"), default=str).encode()
            cache_key = (
                key.kid,
                identity.subject,
                identity.issuer,
                identity.email,
                identity.groups,
                shown,
            )
        now = self._clock()
        cached = self._cache.get(cache_key)
        # A clock stepped back must not hand out an assertion issued "in the future".
        if cached is not None and cached[1] <= now < cached[2]:
            return [(self.spec.header, cached[0])]
        if dropped:
            log.info(
                "pass_claims over budget, dropped",
                extra={"route": route.name, "claims": dropped},
            )
        issued = int(now)
        lifetime = int(signer.config.lifetime)
        claims: dict[str, Any] = {
            "iss": signer.issuer,
            "aud": self.spec.audience,
            "iat": issued,
            "nbf": issued,
            "exp": issued + lifetime,
            "jti": uuid.uuid4().hex,
        }
        if identity is not None:
            claims["sub"] = identity.subject
            claims["idp"] = identity.issuer
            if identity.email:
                claims["email"] = identity.email
            claims["groups"] = sorted(identity.groups)
            for name, value in extra.items():
                claims.setdefault(name, value)
        assertion = signer.sign(claims, key)
        cache = self._cache
        cache.pop(cache_key, None)
        if len(cache) >= MAX_CACHED_ASSERTIONS:
            del cache[next(iter(cache))]
        cache[cache_key] = (assertion, float(issued), issued + lifetime / 2)
        return [(self.spec.header, assertion)]
