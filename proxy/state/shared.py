"""Everything the runtime builds from ``state:``: one Redis client per worker
and the three shared components over it."""

from __future__ import annotations

from proxy.ratelimit import RateLimiter
from proxy.state.client import StateClient
from proxy.state.config import StateConfig
from proxy.state.credentials import SharedCredentials
from proxy.state.ratelimit import SharedRateLimiter
from proxy.state.sessions import RedisSessionStore


class SharedState:
    def __init__(self, cfg: StateConfig) -> None:
        self.client = StateClient(cfg)
        self.sessions = RedisSessionStore(self.client)
        self.credentials = SharedCredentials(self.client)

    def rate_limiter(self, local: RateLimiter | None = None) -> SharedRateLimiter:
        """Shared buckets, falling back to ``local`` while Redis is unreachable."""
        return SharedRateLimiter(self.client, local)

    def available(self) -> bool:
        return self.client.available()

    async def start(self) -> None:
        """Connect (an unreachable Redis does not stop start-up: fallbacks apply)."""
        await self.client.start()

    async def close(self) -> None:
        await self.client.close()
