"""Browser sessions kept in Redis, so every replica sees the same ones.

The browser holds only a sealed, random session id; the session itself
(claims, access and refresh tokens) is sealed again and stored under a hash
of that id, living exactly as long as the session. Deleting it revokes the
session on every replica at once.

Unreachable Redis: every operation raises StateUnavailable (503
``state_unavailable``). Sessions fail closed: a replica cannot tell a live
session from a revoked one without the store.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from redis.asyncio import Redis

from proxy.errors import StateUnavailable
from proxy.observability.metrics import STATE_UNREACHABLE
from proxy.state.client import StateClient, StateUnreachable
from proxy.state.lock import Locks

T = TypeVar("T")
_UNREACHABLE = STATE_UNREACHABLE.labels(component="session")


def _digest(text: str) -> str:
    # Keys never hold a usable session id or login state, even for someone reading Redis.
    return hashlib.sha256(text.encode()).hexdigest()[:40]


class RedisSessionStore:
    """:class:`proxy.identity.session.SessionStore` over Redis."""

    def __init__(self, client: StateClient, *, clock: Callable[[], float] = time.time) -> None:
        self._client = client
        self._clock = clock
        self._locks = Locks(client, client.cfg.lock_ttl)

    @property
    def lock_ttl(self) -> float:
        return self._locks.ttl

    def _key(self, sid: str) -> str:
        return self._client.key("session", _digest(sid))

    async def _run(self, op: Callable[[Redis], Awaitable[T]]) -> T:
        try:
            return await self._client.run(op)
        except StateUnreachable as exc:
            _UNREACHABLE.inc()
            raise StateUnavailable(detail=f"session store: {exc}") from None

    async def load(self, sid: str) -> dict[str, Any] | None:
        key = self._key(sid)
        raw = await self._run(lambda r: r.get(key))
        if not isinstance(raw, bytes):
            return None
        return self._client.codec.open(key, raw.decode("ascii", "replace"), now=self._clock())

    async def save(self, sid: str, session: Mapping[str, Any]) -> None:
        key = self._key(sid)
        ttl_ms = int((float(session["exp"]) - self._clock()) * 1000)
        if ttl_ms <= 0:
            await self.delete(sid)
            return
        value = self._client.codec.seal(key, session)
        await self._run(lambda r: r.set(key, value, px=ttl_ms))

    async def delete(self, sid: str) -> None:
        key = self._key(sid)
        await self._run(lambda r: r.delete(key))

    async def consume_once(self, token: str, ttl: float) -> bool:
        """True the first time ``token`` is seen by any replica within ``ttl`` seconds."""
        key = self._client.key("login-state", _digest(token))
        ttl_ms = max(1, int(ttl * 1000))
        return bool(await self._run(lambda r: r.set(key, b"1", nx=True, px=ttl_ms)))

    async def lock(self, sid: str) -> str | None:
        """Take the refresh lock for ``sid``: a token, or None while another replica holds it."""
        key = self._client.key("session-lock", _digest(sid))
        try:
            return await self._locks.acquire(key)
        except StateUnreachable as exc:
            _UNREACHABLE.inc()
            raise StateUnavailable(detail=f"session store: {exc}") from None

    async def unlock(self, sid: str, token: str) -> None:
        await self._locks.release(self._client.key("session-lock", _digest(sid)), token)
