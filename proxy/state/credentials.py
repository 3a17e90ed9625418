"""One upstream-credential fetch per token for all replicas.

Each process already fetches once per key (:class:`CredentialCache` single
flight); this layer sits under that one fetch. A replica that needs a token
first reads the shared one from Redis; if there is none it takes a short
``SET NX PX`` lock for the key, fetches, and publishes the token (sealed with
``state.encryption_key``: tokens are bearer credentials and Redis is not
trusted with them) until it expires. Replicas that find the lock taken poll
for the published token instead of calling the token endpoint.

A shared token is taken only before its own refresh point, so refresh-ahead
still replaces it in time: the first replica past that point fetches the next
one for everybody. A value an upstream refused (``reject``) is never taken.

Redis unreachable, or a lock holder that never publishes within the lock's
lifetime: the replica fetches for itself (single flight per process, as
without shared state); counted in ``gatehouse_state_unreachable_total``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable

from redis.asyncio import Redis

from proxy.credentials.cache import CacheKey, Credential, Fetch, value_digest
from proxy.observability.metrics import STATE_UNREACHABLE
from proxy.state.client import StateClient, StateUnreachable
from proxy.state.lock import Locks

log = logging.getLogger("gatehouse.state")

_UNREACHABLE = STATE_UNREACHABLE.labels(component="credentials")
POLL = 0.025


def key_digest(key: CacheKey) -> str:
    parts = [key.provider, key.backend, *key.shape, key.caller or ""]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:40]


class SharedCredentials:
    """:class:`proxy.credentials.cache.SharedFetch` over Redis."""

    def __init__(
        self,
        client: StateClient,
        *,
        refresh_ratio: float = 0.8,
        expiry_margin: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._locks = Locks(client, client.cfg.lock_ttl)
        self._refresh_ratio = refresh_ratio
        self._expiry_margin = expiry_margin
        self._clock = clock

    async def fetch(
        self, key: CacheKey, fetch: Fetch, reject: str | None
    ) -> tuple[Credential, bool]:
        digest = key_digest(key)
        record = self._client.key("cred", digest)
        lock = self._client.key("cred-lock", digest)
        deadline = time.monotonic() + self._locks.ttl
        try:
            while True:
                shared = await self._read(record, reject)
                if shared is not None:
                    return shared, False
                token = await self._locks.acquire(lock)
                if token is not None:
                    break
                if time.monotonic() >= deadline:
                    log.warning(
                        "credential fetch lock not released in time; fetching here",
                        extra={"backend": key.backend, "provider": key.provider},
                    )
                    return await fetch(), True
                await asyncio.sleep(POLL)
        except StateUnreachable:
            _UNREACHABLE.inc()
            return await fetch(), True
        try:
            # Published between our last read and taking the lock?
            try:
                shared = await self._read(record, reject)
            except StateUnreachable:
                shared = None
            if shared is not None:
                return shared, False
            cred = await fetch()
            await self._publish(record, cred)
            return cred, True
        finally:
            await self._locks.release(lock, token)

    async def _read(self, record: str, reject: str | None) -> Credential | None:
        raw = await self._client.run(lambda r: r.get(record))
        if not isinstance(raw, bytes):
            return None
        now = self._clock()
        data = self._client.codec.open(record, raw.decode("ascii", "replace"), now=now)
        if data is None:
            return None
        try:
            cred = Credential(str(data["h"]), str(data["v"]), float(data["exp"]))
            fetched_at = float(data["f"])
        except (KeyError, TypeError, ValueError):
            return None
        refresh_at = fetched_at + (cred.expires_at - fetched_at) * self._refresh_ratio
        if now >= refresh_at or now >= cred.expires_at - self._expiry_margin:
            return None  # due for replacement: whoever gets the lock fetches the next one
        if reject is not None and value_digest(cred) == reject:
            return None
        return cred

    async def _publish(self, record: str, cred: Credential) -> None:
        now = self._clock()
        ttl_ms = int((cred.expires_at - now) * 1000)
        if ttl_ms <= 0:
            return
        value = self._client.codec.seal(
            record, {"h": cred.header, "v": cred.value, "exp": cred.expires_at, "f": now}
        )

        async def put(redis: Redis) -> None:
            await redis.set(record, value, px=ttl_ms)

        try:
            await self._client.run(put)
        except StateUnreachable:
            _UNREACHABLE.inc()  # the others fetch for themselves
