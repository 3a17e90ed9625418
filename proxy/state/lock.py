"""Short Redis locks (``SET NX PX``) that only their holder can release.

A lock expires by itself after ``ttl``, so a replica that dies holding it
delays the others by at most that long; release compares the holder's random
token, so a holder whose lock already expired never frees someone else's.
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


class Locks:
    def __init__(self, client: StateClient, ttl: float) -> None:
        self._client = client
        self._ttl_ms = max(1, int(ttl * 1000))
        self._release = client.redis.register_script(_RELEASE)

    @property
    def ttl(self) -> float:
        return self._ttl_ms / 1000.0

    async def acquire(self, key: str) -> str | None:
        """The holder's token, or None when someone else holds ``key`` (StateUnreachable)."""
        token = secrets.token_hex(16)

        async def take(redis: Redis) -> bool:
            return bool(await redis.set(key, token, nx=True, px=self._ttl_ms))

        return token if await self._client.run(take) else None

    async def release(self, key: str, token: str) -> None:
        """Best effort: an unreachable Redis lets the lock expire by itself."""

        async def free(_redis: Redis) -> None:
            await self._release(keys=[key], args=[token])

        with contextlib.suppress(StateUnreachable):
            await self._client.run(free)
