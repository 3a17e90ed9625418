"""The Redis connection every shared-state component goes through.

Availability is tracked here, once per replica: the first connection error
marks Redis unreachable and every component switches to its fallback at
once, without each request paying a connect timeout; a background probe
pings Redis and switches back when it answers again (no restart needed).
One command that times out proves less (a slow command, a blocking one, a
stalled connection): it fails alone, and a ping sent at once decides;
only if that goes unanswered too is Redis marked unreachable.
Each flip is logged and shown by ``gatehouse_state_available``.

Values that hold secrets (sessions, upstream tokens) are sealed with
AES-GCM under ``state.encryption_key`` before they leave the process, the
Redis key as associated data so a value cannot be moved to another key.
Redis is shared infrastructure (snapshots on disk, replicas, ``MONITOR``,
operators with access): it is not trusted with bearer material.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from proxy.identity.session import CookieCodec, parse_cookie_keys
from proxy.observability.metrics import state_available
from proxy.state.config import StateConfig

log = logging.getLogger("gatehouse.state")

T = TypeVar("T")

# Errors that say "Redis is not there" (down, refused, timed out, loading, failed over),
# as opposed to a command that Redis answered with an error.
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, ReadOnlyError, OSError)


class StateUnreachable(Exception):
    """Redis did not answer; each component applies its documented fallback."""


class StateClient:
    def __init__(self, cfg: StateConfig) -> None:
        self.cfg = cfg
        self.codec = CookieCodec(parse_cookie_keys(cfg.encryption_key.read()))
        options: dict[str, Any] = {
            # Room for the probe beyond the slots requests use (see ``run``).
            "max_connections": cfg.max_connections + 2,
            "socket_timeout": cfg.timeout,
            "socket_connect_timeout": cfg.timeout,
            # One immediate retry on a fresh connection absorbs pooled connections
            # that died while Redis restarted; anything longer is our probe's job.
            "retry": Retry(NoBackoff(), 1, (RedisConnectionError,)),
            "client_name": "gatehouse",
        }
        if cfg.username is not None:
            options["username"] = cfg.username
        if cfg.password is not None:
            options["password"] = cfg.password.read()
        if cfg.tls_ca_file is not None:
            options["ssl_ca_certs"] = str(cfg.tls_ca_file)
        if cfg.redis_url.startswith("rediss://"):
            options["ssl_check_hostname"] = True  # redis-py 5 (our floor) defaults to False
        self.redis: Redis = Redis.from_url(cfg.redis_url, **options)
        self._up = False
        self._known = False
        self._closed = False
        self._probe: asyncio.Task[None] | None = None
        self._check: asyncio.Task[bool] | None = None  # the ping after a command timed out
        self._tasks: set[asyncio.Task[None]] = set()
        # redis-py fails a command at once when its pool is exhausted; a burst of
        # requests must queue for a connection instead, and that is not an outage.
        self._slots = asyncio.Semaphore(cfg.max_connections)
        state_available().set(0)

    def key(self, *parts: str) -> str:
        return self.cfg.key_prefix + ":".join(parts)

    def available(self) -> bool:
        return self._up

    # -- lifecycle ---------------------------------------------------------------
    async def start(self) -> None:
        """Ping once and start probing; an unreachable Redis does not stop start-up."""
        await self.ping()
        if self._probe is None:
            self._probe = asyncio.get_running_loop().create_task(self._watch())

    async def close(self) -> None:
        self._closed = True
        probe, self._probe = self._probe, None
        check, self._check = self._check, None
        if check is not None:
            check.cancel()
            await asyncio.wait({check}, timeout=self.cfg.timeout)
        if probe is not None:
            probe.cancel()
            # A cancel landing inside the Redis client's own timeout can be swallowed
            # there (Python 3.11 asyncio.timeout); the closed flag then ends the loop
            # after its sleep, and shutdown never waits longer than that.
            await asyncio.wait({probe}, timeout=self.cfg.timeout + self.cfg.reconnect_interval)
        with contextlib.suppress(RedisError, OSError):
            await self.redis.aclose()

    async def ping(self) -> bool:
        try:
            await self.redis.ping()
        except _UNREACHABLE as exc:
            self._mark(False, type(exc).__name__)
        else:
            self._mark(True)
        return self._up

    async def _watch(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.cfg.reconnect_interval)
            if not self._closed:
                await self.ping()

    # -- commands ------------------------------------------------------------------
    async def run(self, op: Callable[[Redis], Awaitable[T]]) -> T:
        """Run ``op`` against Redis; StateUnreachable (at once while marked down) otherwise."""
        if not self._up:
            raise StateUnreachable("shared state is unreachable")
        try:
            async with asyncio.timeout(self.cfg.timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise StateUnreachable("no free Redis connection in time") from None
        try:
            return await op(self.redis)
        except RedisTimeoutError as exc:
            self._check_now()
            raise StateUnreachable(type(exc).__name__) from exc
        except _UNREACHABLE as exc:
            self._mark(False, type(exc).__name__)
            raise StateUnreachable(type(exc).__name__) from exc
        except RedisError as exc:
            # Redis answered, with an error: not an outage, but this operation failed.
            log.warning("shared state command failed: %s", type(exc).__name__)
            raise StateUnreachable(type(exc).__name__) from exc
        finally:
            self._slots.release()

    def _check_now(self) -> None:
        """Ping in the background (once at a time): it marks Redis down if unanswered."""
        if self._closed or (self._check is not None and not self._check.done()):
            return
        self._check = asyncio.get_running_loop().create_task(self.ping())

    def _mark(self, up: bool, why: str = "") -> None:
        if up == self._up and self._known:
            return
        was_known, self._known, self._up = self._known, True, up
        state_available().set(1 if up else 0)
        if up:
            log.info("shared state (Redis) reachable: sessions, rate limits and fetch locks shared")
            return
        log.warning(
            "shared state (Redis) unreachable (%s): browser sessions answer 503, "
            "rate limits use this replica's buckets, credentials are fetched per replica",
            why,
        )
        if was_known:
            # Pooled connections are dead now; reconnect from scratch once Redis is back.
            task = asyncio.get_running_loop().create_task(self._drop_connections())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _drop_connections(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self.redis.connection_pool.disconnect()
