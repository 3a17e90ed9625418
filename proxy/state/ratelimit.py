"""Token buckets shared by every replica, updated atomically in Redis.

Same buckets as :class:`proxy.ratelimit.RateLimiter` (``burst``
tokens, refilled at ``requests / per`` a second, one per request), but one
bucket per route and caller for the whole deployment: a Lua script reads,
refills, takes and writes it in one step, so concurrent replicas never both
spend the last token. A bucket expires once it would be full again, so
expiry never changes an answer.

Redis unreachable: the replica's own in-memory buckets decide (each replica
then admits up to the limit by itself), logged once per outage and counted in
``gatehouse_state_unreachable_total{component="ratelimit"}``. A limit is a
safeguard, not an authorisation, so it degrades instead of failing closed.

Times come from the caller (``now``), as for the local limiter; replicas need
synchronised clocks (NTP), and a bucket never refills backwards in time.
"""

from __future__ import annotations

import hashlib
import logging
import math

from redis.asyncio import Redis

from proxy.observability.metrics import STATE_UNREACHABLE
from proxy.policy.model import RateLimit, Route
from proxy.ratelimit import RateLimiter
from proxy.state.client import StateClient, StateUnreachable

log = logging.getLogger("gatehouse.state")

_UNREACHABLE = STATE_UNREACHABLE.labels(component="ratelimit")

# KEYS[1] bucket; ARGV: rate (tokens/s), capacity, now (s), ttl (ms). Returns 1 if admitted.
_TAKE = """
local rate = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local bucket = redis.call('HMGET', KEYS[1], 't', 'l')
local tokens = tonumber(bucket[1])
local last = tonumber(bucket[2])
if tokens == nil or last == nil then
  tokens, last = capacity, now
elseif now > last then
  tokens = math.min(capacity, tokens + (now - last) * rate)
  last = now
end
local admitted = 0
if tokens >= 1 then
  tokens = tokens - 1
  admitted = 1
end
redis.call('HSET', KEYS[1], 't', string.format('%.17g', tokens), 'l', string.format('%.17g', last))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return admitted
"""


def _limit_id(limit: RateLimit) -> str:
    # A reload that changes a route's limit starts fresh buckets, as in the local limiter.
    return f"{limit.requests}-{limit.per:g}-{limit.burst}"


class SharedRateLimiter:
    """Routes without ``rate_limit`` always pass; ``allow`` is a coroutine here."""

    def __init__(self, client: StateClient, local: RateLimiter | None = None) -> None:
        self._client = client
        self.local = local if local is not None else RateLimiter()
        self._take = client.redis.register_script(_TAKE)
        self._degraded = False

    def _key(self, route: Route, limit: RateLimit, key: str) -> str:
        # Callers are hashed: bounded key length and no identities readable in Redis.
        caller = hashlib.sha256(key.encode()).hexdigest()[:32]
        return self._client.key("rl", route.name, _limit_id(limit), caller)

    async def allow(self, route: Route, key: str, now: float) -> bool:
        limit = route.rate_limit
        if limit is None:
            return True
        if self._client.available():
            rate = limit.requests / limit.per
            capacity = float(limit.burst)
            ttl_ms = max(1000, math.ceil(capacity / rate * 1000) + 1000)
            bucket = self._key(route, limit, key)

            async def take(_redis: Redis) -> object:
                return await self._take(
                    keys=[bucket], args=[repr(rate), repr(capacity), repr(now), ttl_ms]
                )

            try:
                admitted = await self._client.run(take)
            except StateUnreachable:
                pass
            else:
                if self._degraded:
                    self._degraded = False
                    log.info("rate limits shared across replicas again")
                return bool(admitted)
        _UNREACHABLE.inc()
        if not self._degraded:
            self._degraded = True
            log.warning("shared state unreachable: rate limits use this replica's own buckets")
        return self.local.allow(route, key, now)
