"""Short Redis locks (``SET NX PX``) that only their holder can release.

A lock expires by itself after ``ttl``, so a replica that dies holding it
delays the others by at most that long; release compares the holder's random
token, so a holder whose lock already expired never frees someone else's.

A holder doing slow work keeps its lock with :meth:`Locks.extend` (a
heartbeat), and a *fenced* lock also records its token under a fence key that
outlives the lock: a write made on the strength of the lock checks, in the
same Lua script as the write, that the fence still names its token. A holder
that stalled past its lock's expiry while another replica took over (a pause,
a network partition) can then no longer overwrite that replica's result.
"""

from __future__ import annotations

import contextlib
import secrets

from redis.asyncio import Redis

from proxy.state.client import StateClient, StateUnreachable

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS: lock, fence. ARGV: token, lock ttl ms, fence ttl ms.
_ACQUIRE_FENCED = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
  return 1
end
return 0
"""


class Locks:
    def __init__(self, client: StateClient, ttl: float) -> None:
        self._client = client
        self._ttl_ms = max(1, int(ttl * 1000))
        self._release = client.redis.register_script(_RELEASE)
        self._extend = client.redis.register_script(_EXTEND)
        self._acquire_fenced = client.redis.register_script(_ACQUIRE_FENCED)

    @property
    def ttl(self) -> float:
        return self._ttl_ms / 1000.0

    async def acquire(self, key: str) -> str | None:
        """The holder's token, or None when someone else holds ``key`` (StateUnreachable)."""
        token = secrets.token_hex(16)

        async def take(redis: Redis) -> bool:
            return bool(await redis.set(key, token, nx=True, px=self._ttl_ms))

        return token if await self._client.run(take) else None

    async def acquire_fenced(self, key: str, fence: str, fence_ttl: float) -> str | None:
        """Like :meth:`acquire`, and the token becomes the one ``fence`` admits.

        ``fence_ttl`` must cover every write the lock guards (the guarded
        value's own lifetime): a fence that lapsed admits no one.
        """
        token = secrets.token_hex(16)
        fence_ms = max(self._ttl_ms, int(fence_ttl * 1000))

        async def take(_redis: Redis) -> bool:
            taken = await self._acquire_fenced(
                keys=[key, fence], args=[token, self._ttl_ms, fence_ms]
            )
            return bool(taken)

        return token if await self._client.run(take) else None

    async def extend(self, key: str, token: str) -> bool:
        """Renew the holder's lock for another ``ttl``; False when it is no longer held
        (expired, or taken by another) or Redis did not answer."""

        async def renew(_redis: Redis) -> bool:
            return bool(await self._extend(keys=[key], args=[token, self._ttl_ms]))

        try:
            return await self._client.run(renew)
        except StateUnreachable:
            return False

    async def release(self, key: str, token: str) -> None:
        """Best effort: an unreachable Redis lets the lock expire by itself."""

        async def free(_redis: Redis) -> None:
            await self._release(keys=[key], args=[token])

        with contextlib.suppress(StateUnreachable):
            await self._client.run(free)
