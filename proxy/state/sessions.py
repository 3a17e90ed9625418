"""Browser sessions kept in Redis, so every replica sees the same ones.

The browser holds only a sealed, random session id; the session itself
(claims, access and refresh tokens) is sealed again and stored under a hash
of that id, living exactly as long as the session. Deleting it revokes the
session on every replica at once.

A refresh runs under a fenced lock (:mod:`proxy.state.lock`) and writes its
result with :meth:`RedisSessionStore.replace`: one Lua script that writes only
while the session still exists (so a logout that deleted it meanwhile wins:
the session never comes back) and while the fence still names this refresh's
lock token (so a refresh that outlived its lock never overwrites the result
of the replica that took over).

Unreachable Redis: every operation raises StateUnavailable (503
``state_unavailable``). Sessions fail closed: a replica cannot tell a live
session from a revoked one without the store.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal, TypeVar

from redis.asyncio import Redis

from proxy.errors import StateUnavailable
from proxy.observability.metrics import STATE_UNREACHABLE
from proxy.state.client import StateClient, StateUnreachable
from proxy.state.lock import Locks

T = TypeVar("T")
_UNREACHABLE = STATE_UNREACHABLE.labels(component="session")

# KEYS: session, fence. ARGV: lock token, sealed value, ttl ms.
_REPLACE = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return -1
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""
# KEYS: session, fence. ARGV: lock token.
_DELETE_FENCED = """
if redis.call('GET', KEYS[2]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
_OUTCOMES: dict[int, Literal["written", "ended", "fenced"]] = {
    1: "written",
    0: "ended",
    -1: "fenced",
}


def _digest(text: str) -> str:
    # Keys never hold a usable session id or login state, even for someone reading Redis.
    return hashlib.sha256(text.encode()).hexdigest()[:40]


class RedisSessionStore:
    """:class:`proxy.identity.session.SessionStore` over Redis."""

    def __init__(self, client: StateClient, *, clock: Callable[[], float] = time.time) -> None:
        self._client = client
        self._clock = clock
        self._locks = Locks(client, client.cfg.lock_ttl)
        self._replace = client.redis.register_script(_REPLACE)
        self._delete_fenced = client.redis.register_script(_DELETE_FENCED)

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

    async def replace(
        self, sid: str, session: Mapping[str, Any], token: str
    ) -> Literal["written", "ended", "fenced"]:
        """Write a refreshed session under the refresh lock ``token``.

        ``ended``: the session is gone (logged out or expired), nothing written;
        ``fenced``: another replica took the lock since, nothing written.
        """
        key = self._key(sid)
        ttl_ms = int((float(session["exp"]) - self._clock()) * 1000)
        if ttl_ms <= 0:
            await self.delete(sid)
            return "ended"
        value = self._client.codec.seal(key, session)
        fence = self._fence_key(sid)

        async def write(_redis: Redis) -> int:
            return int(await self._replace(keys=[key, fence], args=[token, value, ttl_ms]))

        return _OUTCOMES[await self._run(write)]

    async def delete(self, sid: str, token: str | None = None) -> None:
        """Revoke the session; with a refresh lock ``token``, only while it fences the lock."""
        key = self._key(sid)
        if token is None:
            await self._run(lambda r: r.delete(key))
            return
        fence = self._fence_key(sid)

        async def delete(_redis: Redis) -> None:
            await self._delete_fenced(keys=[key, fence], args=[token])

        await self._run(delete)

    async def consume_once(self, token: str, ttl: float) -> bool:
        """True the first time ``token`` is seen by any replica within ``ttl`` seconds."""
        key = self._client.key("login-state", _digest(token))
        ttl_ms = max(1, int(ttl * 1000))
        return bool(await self._run(lambda r: r.set(key, b"1", nx=True, px=ttl_ms)))

    def _lock_key(self, sid: str) -> str:
        return self._client.key("session-lock", _digest(sid))

    def _fence_key(self, sid: str) -> str:
        return self._client.key("session-fence", _digest(sid))

    async def lock(self, sid: str, expires_at: float) -> str | None:
        """Take the refresh lock for ``sid`` (a session ending at ``expires_at``): a
        token, or None while another replica holds it."""
        fence_ttl = expires_at - self._clock()
        try:
            return await self._locks.acquire_fenced(
                self._lock_key(sid), self._fence_key(sid), fence_ttl
            )
        except StateUnreachable as exc:
            _UNREACHABLE.inc()
            raise StateUnavailable(detail=f"session store: {exc}") from None

    async def extend(self, sid: str, token: str) -> bool:
        """Keep holding the refresh lock while a refresh is still running."""
        return await self._locks.extend(self._lock_key(sid), token)

    async def unlock(self, sid: str, token: str) -> None:
        await self._locks.release(self._lock_key(sid), token)
