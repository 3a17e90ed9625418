"""One issuer's signing keys, fetched and kept fresh without hammering the IdP.

* Cached for the JWKS response's Cache-Control max-age, clamped to configured
  bounds; once expired, a background refresh runs while the old keys serve.
* An unknown ``kid`` triggers one single-flight refetch, at most once per
  ``refetch_interval`` (10 s) per issuer, so junk tokens cannot flood the IdP.
* A failed fetch keeps the known keys (stale-on-error) until ``stale_max_age``
  after the last good fetch; after that there are no keys and callers fail
  closed with 503.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import aiohttp

from proxy.identity.config import IssuerConfig
from proxy.identity.fetch import check_url, discover, get_json, max_age
from proxy.identity.jwt_verify import EMPTY_KEYS, KeySet, keys_from_jwks
from proxy.observability.metrics import JWKS_REFRESH
from proxy.outbound import FetchError

log = logging.getLogger(__name__)


class JwksClient:
    def __init__(
        self,
        cfg: IssuerConfig,
        session: aiohttp.ClientSession,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self._session = session
        self._clock = clock
        self._jwks_uri = check_url(cfg.jwks_uri) if cfg.jwks_uri else None
        self._keys: KeySet = EMPTY_KEYS
        self._fetched_at: float | None = None
        self._expires_at = 0.0
        self._last_attempt: float | None = None
        self._last_kid_refetch: float | None = None
        self._inflight: asyncio.Task[bool] | None = None
        self.healthy = False
        self.fetches = 0

    # -- reading -----------------------------------------------------------
    def ready(self) -> bool:
        return len(self.current(refresh=False)) > 0

    def current(self, *, refresh: bool = True) -> KeySet:
        """The usable keys now; schedules a background refresh once they expire."""
        now = self._clock()
        if self._fetched_at is None or now - self._fetched_at > self.cfg.jwks_cache.stale_max_age:
            keys = EMPTY_KEYS
        else:
            keys = self._keys
        if refresh and now >= self._expires_at and self._may_attempt(now):
            self._spawn()
        return keys

    def _may_attempt(self, now: float) -> bool:
        if self._inflight is not None:
            return False
        last = self._last_attempt
        return last is None or now - last >= self.cfg.jwks_cache.refetch_interval

    # -- fetching ----------------------------------------------------------
    async def refresh(self) -> bool:
        """Fetch now (joining a fetch in flight); True when the keys are fresh."""
        task = self._inflight or self._spawn()
        return await asyncio.shield(task)

    async def refresh_for_unknown_kid(self) -> bool:
        """Refetch for an unknown kid, unless one happened in the last interval.

        Tracked apart from scheduled refreshes so a rotation right after a
        scheduled fetch is still picked up by the first token with the new kid.
        """
        if self._inflight is not None:
            return await asyncio.shield(self._inflight)
        now = self._clock()
        last = self._last_kid_refetch
        if last is not None and now - last < self.cfg.jwks_cache.refetch_interval:
            return False
        self._last_kid_refetch = now
        return await self.refresh()

    def _spawn(self) -> asyncio.Task[bool]:
        self._last_attempt = self._clock()
        task = asyncio.get_running_loop().create_task(self._fetch())
        self._inflight = task
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[bool]) -> None:
        if self._inflight is task:
            self._inflight = None

    async def _fetch(self) -> bool:
        self.fetches += 1
        try:
            if self._jwks_uri is None:
                self._jwks_uri = (await discover(self._session, self.cfg.issuer)).jwks_uri
            document, cache_control = await get_json(self._session, self._jwks_uri)
            keys = keys_from_jwks(document)
            if not len(keys):
                raise FetchError("JWKS has no usable signature keys")
        except (FetchError, ValueError) as exc:
            self.healthy = False
            JWKS_REFRESH.labels(issuer=self.cfg.issuer, result="error").inc()
            log.warning("JWKS fetch for %s failed: %s", self.cfg.issuer, exc)
            return False
        bounds = self.cfg.jwks_cache
        ttl = max_age(cache_control)
        ttl = bounds.default_ttl if ttl is None else ttl
        ttl = min(max(ttl, bounds.min_ttl), bounds.max_ttl)
        now = self._clock()
        self._keys = keys
        self._fetched_at = now
        self._expires_at = now + ttl
        self.healthy = True
        JWKS_REFRESH.labels(issuer=self.cfg.issuer, result="ok").inc()
        return True

    async def close(self) -> None:
        task = self._inflight
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
