"""The one cache every fetching credential provider goes through.

Behaviour, per key:

* single flight: concurrent misses share one fetch;
* refresh ahead: at ~80% of the token's lifetime a background fetch replaces
  it while the current token keeps being served;
* stale on error: a failed refresh keeps serving the unexpired token and
  retries with exponential backoff and jitter;
* fail closed: once the token has expired and no fetch succeeds, callers get
  :class:`UpstreamCredentialsUnavailable` (503), and repeat failures inside
  the backoff window do not hammer the token endpoint.

Tokens are never logged or put into exception messages; keys are built from
configuration and a hash of any caller token, never the token itself.

Across replicas (optional :class:`SharedFetch`, Redis in ``proxy.state``):
the one fetch per process goes through the shared layer, which lets one
replica fetch and hands the others its token.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from proxy.errors import UpstreamCredentialsUnavailable
from proxy.observability.metrics import CREDENTIAL_CACHE, CREDENTIAL_EXPIRY, CREDENTIAL_FETCH

log = logging.getLogger(__name__)

_MAX_REJECTED = 10_000


@dataclass(frozen=True, slots=True)
class Credential:
    """One header's worth of upstream credential and when it stops being valid (unix time)."""

    header: str
    value: str = field(repr=False)
    expires_at: float


@dataclass(frozen=True, slots=True)
class CacheKey:
    """Everything that shaped a token: never the token or a secret itself."""

    provider: str
    backend: str
    shape: tuple[str, ...] = ()
    caller: str | None = None


class CredentialFetchError(Exception):
    """A provider could not obtain a credential; the message is safe to log (no secrets)."""


Fetch = Callable[[], Awaitable[Credential]]


def value_digest(cred: Credential) -> str:
    """Names a credential value without carrying it (for "not this one again")."""
    return hashlib.sha256(cred.value.encode()).hexdigest()


class SharedFetch(Protocol):
    """Coordinates fetches for one key across processes (replicas)."""

    async def fetch(
        self, key: CacheKey, fetch: Fetch, reject: str | None
    ) -> tuple[Credential, bool]:
        """A credential for ``key`` and whether ``fetch`` produced it (False: shared).

        ``reject`` is the :func:`value_digest` of a value the caller must not get
        back: one the upstream refused, or the one a refresh replaces. Errors of
        ``fetch`` propagate unchanged.
        """


@dataclass(slots=True)
class _Entry:
    fetch: Fetch
    credential: Credential | None = None
    refresh_at: float = 0.0
    inflight: asyncio.Task[Credential] | None = None
    timer: asyncio.TimerHandle | None = None
    failures: int = 0
    retry_at: float = 0.0
    used_since_fetch: bool = False
    last_error: str = ""


class CredentialCache:
    def __init__(
        self,
        *,
        refresh_ratio: float = 0.8,
        expiry_margin: float = 10.0,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        clock: Callable[[], float] = time.time,
        shared: SharedFetch | None = None,
        invalidations_per_minute: int = 3,
    ) -> None:
        self._refresh_ratio = refresh_ratio
        self._expiry_margin = expiry_margin
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._clock = clock
        self._entries: dict[CacheKey, _Entry] = {}
        self._closed = False
        self._shared = shared
        # Values an upstream refused, per key, until a different one has been obtained.
        self._rejected: dict[CacheKey, str] = {}
        # When each key was recently invalidated: an upstream that refuses
        # every token must not turn each request into a token-endpoint call.
        self._invalidations_per_minute = invalidations_per_minute
        self._invalidated: dict[CacheKey, list[float]] = {}

    # -- public -------------------------------------------------------------
    async def get(self, key: CacheKey, fetch: Fetch) -> Credential:
        """The cached credential for ``key``, fetching (once, however many callers) if needed."""
        now = self._clock()
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry(fetch)
        else:
            entry.fetch = fetch
        cred = entry.credential
        if cred is not None and now < self._usable_until(cred):
            entry.used_since_fetch = True
            result = "hit"
            if now >= entry.refresh_at:
                if entry.inflight is None and now >= entry.retry_at:
                    result = "refresh"
                    self._start_fetch(key, entry)
                if entry.failures:
                    # Past the refresh point and the refresh keeps failing.
                    result = "stale"
            CREDENTIAL_CACHE.labels(key.backend, result).inc()
            # Kept current on use so the gauge shows time left now, not at fetch time.
            CREDENTIAL_EXPIRY.labels(key.backend).set(cred.expires_at - now)
            return cred
        CREDENTIAL_CACHE.labels(key.backend, "miss").inc()
        task = entry.inflight
        if task is None:
            if entry.failures and now < entry.retry_at:
                # The last attempt failed moments ago: fail fast instead of piling onto
                # an endpoint that is down.
                raise UpstreamCredentialsUnavailable(detail=self._describe(key, entry))
            task = self._start_fetch(key, entry)
        try:
            return await asyncio.shield(task)
        except CredentialFetchError:
            raise UpstreamCredentialsUnavailable(detail=self._describe(key, entry)) from None

    def invalidate(self, backend: str, caller: str | None = None) -> int:
        """Drop ``backend``'s shared credentials and ``caller``'s own; returns the count.

        Other callers' per-caller tokens stay: one caller's rejected token says
        nothing about theirs.

        The core calls this after the upstream answered 401, then retries once.
        An in-flight fetch is left to finish: it started after the rejected
        token was issued, so its result is fresh. A key is invalidated at most
        ``invalidations_per_minute`` times a minute: an upstream that rejects
        every token (a wrong audience, say) then gets the same token for a
        while, rather than a fetch from the token endpoint for each request.
        """
        dropped = 0
        now = self._clock()
        for key, entry in list(self._entries.items()):
            if key.backend != backend or (key.caller is not None and key.caller != caller):
                continue
            recent = [t for t in self._invalidated.get(key, ()) if 0 <= now - t < 60.0]
            if len(recent) >= self._invalidations_per_minute:
                continue
            self._invalidated[key] = [*recent, now]
            if len(self._invalidated) > _MAX_REJECTED:
                del self._invalidated[next(iter(self._invalidated))]
            if entry.timer is not None:
                entry.timer.cancel()
            if self._shared is not None and entry.credential is not None:
                self._rejected[key] = value_digest(entry.credential)
                if len(self._rejected) > _MAX_REJECTED:
                    # Bounded: per-caller keys whose callers left never clear theirs.
                    del self._rejected[next(iter(self._rejected))]
            if entry.inflight is None:
                del self._entries[key]
            else:
                entry.credential = None
            dropped += 1
        return dropped

    def credentials(self) -> list[tuple[CacheKey, Credential]]:
        """What is cached now (for ``gatehouse credentials check``); values stay in-process."""
        return [(k, e.credential) for k, e in self._entries.items() if e.credential is not None]

    def __len__(self) -> int:
        return len(self._entries)

    async def close(self) -> None:
        self._closed = True
        tasks = []
        for entry in self._entries.values():
            if entry.timer is not None:
                entry.timer.cancel()
            if entry.inflight is not None:
                entry.inflight.cancel()
                tasks.append(entry.inflight)
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._entries.clear()
        self._rejected.clear()

    # -- internals ----------------------------------------------------------
    def _usable_until(self, cred: Credential) -> float:
        return cred.expires_at - self._expiry_margin

    def _describe(self, key: CacheKey, entry: _Entry) -> str:
        why = f": {entry.last_error}" if entry.last_error else ""
        return f"no valid {key.provider} credential for backend {key.backend}{why}"

    def _start_fetch(self, key: CacheKey, entry: _Entry) -> asyncio.Task[Credential]:
        task = asyncio.get_running_loop().create_task(self._fetch(key, entry))
        entry.inflight = task
        # A background refresh nobody awaits must not warn "exception never retrieved".
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return task

    async def _fetch(self, key: CacheKey, entry: _Entry) -> Credential:
        try:
            started = self._clock()
            try:
                if self._shared is None:
                    cred, fetched = await entry.fetch(), True
                else:
                    held = entry.credential
                    reject = self._rejected.get(key)
                    if reject is None and held is not None:
                        reject = value_digest(held)
                    cred, fetched = await self._shared.fetch(key, entry.fetch, reject)
                    self._rejected.pop(key, None)
            except asyncio.CancelledError:
                raise
            except CredentialFetchError as exc:
                self._failed(key, entry, str(exc))
                raise
            except Exception as exc:  # a provider bug or SDK error: same handling, safe text
                self._failed(key, entry, type(exc).__name__)
                raise CredentialFetchError(type(exc).__name__) from None
            now = self._clock()
            if fetched:
                CREDENTIAL_FETCH.labels(key.backend, key.provider, "ok").inc()
            else:
                CREDENTIAL_CACHE.labels(key.backend, "shared").inc()
            CREDENTIAL_EXPIRY.labels(key.backend).set(max(0.0, cred.expires_at - now))
            lifetime = max(0.0, cred.expires_at - started)
            entry.credential = cred
            entry.refresh_at = started + lifetime * self._refresh_ratio
            entry.failures = 0
            entry.retry_at = 0.0
            entry.last_error = ""
            entry.used_since_fetch = False
            if self._entries.get(key) is entry:
                self._schedule(key, entry, entry.refresh_at)
            return cred
        finally:
            entry.inflight = None

    def _failed(self, key: CacheKey, entry: _Entry, why: str) -> None:
        CREDENTIAL_FETCH.labels(key.backend, key.provider, "error").inc()
        entry.failures += 1
        delay = min(self._backoff_max, self._backoff_base * 2 ** (entry.failures - 1))
        delay *= random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not security
        now = self._clock()
        entry.retry_at = now + delay
        entry.last_error = why
        log.warning(
            "credential fetch failed",
            extra={
                "backend": key.backend,
                "provider": key.provider,
                "error": why,
                "failures": entry.failures,
                "retry_in": round(delay, 3),
            },
        )
        cred = entry.credential
        if cred is not None and entry.retry_at < self._usable_until(cred):
            self._schedule(key, entry, entry.retry_at)
        elif cred is None and key.caller is not None:
            # A caller whose token cannot be had leaves no entry behind for long.
            self._schedule(key, entry, entry.retry_at)

    def _schedule(self, key: CacheKey, entry: _Entry, at: float) -> None:
        if self._closed:
            return
        if entry.timer is not None:
            entry.timer.cancel()
        loop = asyncio.get_running_loop()
        delay = max(0.0, at - self._clock())
        entry.timer = loop.call_later(delay, self._on_timer, key, entry)

    def _on_timer(self, key: CacheKey, entry: _Entry) -> None:
        entry.timer = None
        if self._closed or self._entries.get(key) is not entry or entry.inflight is not None:
            return
        cred = entry.credential
        now = self._clock()
        if cred is None or now >= self._usable_until(cred):
            if key.caller is not None:
                del self._entries[key]
            return
        # Shared tokens are few and always kept warm, so no request waits for one.
        # A per-caller token is refreshed only while in use: one for a caller who
        # left lapses (and is dropped) instead of being refreshed forever.
        if key.caller is None or entry.used_since_fetch or entry.failures:
            CREDENTIAL_CACHE.labels(key.backend, "refresh").inc()
            self._start_fetch(key, entry)
        else:
            del self._entries[key]
