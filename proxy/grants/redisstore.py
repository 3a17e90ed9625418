"""Grants in Redis, shared by every replica, sealed like sessions.

Each grant is a hash ``{v: version, d: sealed JSON}`` under ``grant:<id>``;
the JSON is sealed (AES-GCM under ``state.encryption_key``, the Redis key as
associated data), so whoever can write Redis still cannot mint or alter a
grant, and whoever can read it learns nothing of justifications. Indexes hold
only ids and times: one sorted set per open state (scored by the next clock
event, so the sweeper reads only what is due), one per caller, and a hash per
caller and route of sealed *held* entries: the one key a decision reads.

Every write is a Lua script: the compare-and-set on the version and all index
updates happen at once, so a revocation deletes the held entry in the same
step that records it, and the very next decision on any replica sees it.

Redis unreachable: every operation raises StateUnavailable (503
``state_unavailable``); a decision on a route with grant rules fails closed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from redis.asyncio import Redis

from proxy.errors import GrantConflict, GrantLimit, Reason, StateUnavailable
from proxy.grants.model import Grant, grant_dict, grant_from, held
from proxy.grants.store import OPEN_STATES, Limits, finished_at, next_version
from proxy.model import HeldGrant
from proxy.observability.metrics import STATE_UNREACHABLE
from proxy.state.client import StateClient, StateUnreachable

T = TypeVar("T")
_UNREACHABLE = STATE_UNREACHABLE.labels(component="grants")

_HELPERS = """
local function extend(key, ttl)
  if redis.call('PTTL', key) < tonumber(ttl) then redis.call('PEXPIRE', key, ttl) end
end
"""

# KEYS: grant, pending, approved, active, caller, waiting, marker
# ARGV: id, sealed, ttl_ms, decide_by, requested_at, now, max_pending, max_open, wait_ttl_ms
_ADD = (
    _HELPERS
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return -3 end
local open = redis.call('ZCARD', KEYS[2]) + redis.call('ZCARD', KEYS[3])
  + redis.call('ZCARD', KEYS[4])
if open >= tonumber(ARGV[8]) then return -1 end
if redis.call('EXISTS', KEYS[7]) == 1 then return -2 end
redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', ARGV[6])
if redis.call('ZCARD', KEYS[6]) >= tonumber(ARGV[7]) then return -4 end
redis.call('HSET', KEYS[1], 'v', '0', 'd', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
redis.call('ZADD', KEYS[5], ARGV[5], ARGV[1])
extend(KEYS[5], ARGV[3])
redis.call('ZADD', KEYS[6], ARGV[4], ARGV[1])
extend(KEYS[6], ARGV[9])
redis.call('SET', KEYS[7], ARGV[1], 'PX', ARGV[9])
return 1
"""
)

# KEYS: grant, pending, approved, active, caller, waiting, marker, held
# ARGV: expected version, new version, sealed, ttl_ms, id, new state, score,
#       held op (set|del), held sealed, held ttl_ms
_REPLACE = (
    _HELPERS
    + """
if redis.call('HGET', KEYS[1], 'v') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'd', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
extend(KEYS[5], ARGV[4])
redis.call('ZREM', KEYS[2], ARGV[5])
redis.call('ZREM', KEYS[3], ARGV[5])
redis.call('ZREM', KEYS[4], ARGV[5])
local target = ({pending = KEYS[2], approved = KEYS[3], active = KEYS[4]})[ARGV[6]]
if target then redis.call('ZADD', target, ARGV[7], ARGV[5]) end
if ARGV[6] ~= 'pending' then
  redis.call('ZREM', KEYS[6], ARGV[5])
  if redis.call('GET', KEYS[7]) == ARGV[5] then redis.call('DEL', KEYS[7]) end
end
if ARGV[8] == 'set' then
  redis.call('HSET', KEYS[8], ARGV[5], ARGV[9])
  extend(KEYS[8], ARGV[10])
else
  redis.call('HDEL', KEYS[8], ARGV[5])
end
return 1
"""
)


def _digest(*parts: str) -> str:
    # Keys never show who holds what to someone listing Redis keys.
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:40]


class RedisGrantStore:
    def __init__(
        self, client: StateClient, limits: Limits, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._client = client
        self._limits = limits
        self._clock = clock
        self._add = client.redis.register_script(_ADD)
        self._replace = client.redis.register_script(_REPLACE)

    # -- keys ------------------------------------------------------------------------
    def _grant_key(self, grant_id: str) -> str:
        return self._client.key("grant", grant_id)

    def _state_keys(self) -> list[str]:
        return [self._client.key("grants", state) for state in OPEN_STATES]

    def _caller_keys(self, grant: Grant) -> list[str]:
        who = (grant.requester.issuer, grant.requester.subject)
        return [
            self._client.key("grants-of", _digest(*who)),
            self._client.key("grants-waiting", _digest(*who)),
            self._client.key("grant-pending", _digest(*who, grant.route, grant.rule)),
        ]

    def held_key(self, issuer: str, subject: str, route: str) -> str:
        return self._client.key("grants-held", _digest(issuer, subject, route))

    # -- sealing -------------------------------------------------------------------------
    def _purge_at(self, grant: Grant) -> float:
        at = grant.next_clock_event()
        return (at if at is not None else finished_at(grant)) + self._limits.retention

    def _ttl_ms(self, until: float) -> int:
        return max(1000, int((until - self._clock()) * 1000))

    def _seal(self, grant: Grant) -> str:
        data = {**grant_dict(grant), "exp": self._purge_at(grant)}
        return self._client.codec.seal(self._grant_key(grant.id), data)

    def _open(self, grant_id: str, version: object, sealed: object) -> Grant | None:
        if not isinstance(sealed, bytes) or not isinstance(version, bytes):
            return None
        data = self._client.codec.open(
            self._grant_key(grant_id), sealed.decode("ascii", "replace"), now=self._clock()
        )
        grant = grant_from(data) if data is not None else None
        if grant is None or grant.id != grant_id:
            return None
        return _with_version(grant, version)

    async def _run(self, op: Callable[[Redis], Awaitable[T]]) -> T:
        try:
            return await self._client.run(op)
        except StateUnreachable as exc:
            _UNREACHABLE.inc()
            raise StateUnavailable(detail=f"grant store: {exc}") from None

    async def _fetch(self, ids: Sequence[str]) -> list[Grant]:
        if not ids:
            return []

        async def read(redis: Redis) -> list[Any]:
            async with redis.pipeline(transaction=False) as pipe:
                for grant_id in ids:
                    pipe.hmget(self._grant_key(grant_id), ["v", "d"])
                return list(await pipe.execute())

        rows = await self._run(read)
        out = []
        for grant_id, (version, sealed) in zip(ids, rows, strict=True):
            grant = self._open(grant_id, version, sealed)
            if grant is not None:
                out.append(grant)
        return out

    # -- the store contract ----------------------------------------------------------------
    async def start(self) -> None:
        return None

    async def add(self, grant: Grant, now: float) -> None:
        caller, waiting, marker = self._caller_keys(grant)
        keys = [self._grant_key(grant.id), *self._state_keys(), caller, waiting, marker]
        args: list[str | int] = [
            grant.id,
            self._seal(grant),
            self._ttl_ms(self._purge_at(grant)),
            repr(grant.decide_by),
            repr(grant.requested_at),
            repr(now),
            self._limits.max_pending_per_caller,
            self._limits.max_open,
            self._ttl_ms(grant.decide_by),
        ]
        result = await self._run(lambda _r: self._add(keys=keys, args=args))
        if result == -2:
            raise GrantConflict(Reason.REQUEST_PENDING, detail="a request for this rule is pending")
        if result in (-1, -4):
            raise GrantLimit(detail="max_open or max_pending_per_caller reached")
        if result != 1:
            raise GrantConflict(Reason.GRANT_EXISTS, detail="grant id taken")

    async def get(self, grant_id: str) -> Grant | None:
        found = await self._fetch([grant_id])
        return found[0] if found else None

    async def replace(self, old: Grant, new: Grant) -> Grant | None:
        stored = next_version(old, new)
        caller, waiting, marker = self._caller_keys(stored)
        held_key = self.held_key(stored.requester.issuer, stored.requester.subject, stored.route)
        hold = held(stored)
        held_sealed, held_ttl = "", 0
        if hold is not None:
            held_sealed = self._client.codec.seal(
                f"{held_key}:{hold.id}",
                {
                    "id": hold.id,
                    "rule": hold.rule,
                    "s": hold.starts_at,
                    "e": hold.ends_at,
                    "exp": hold.ends_at,
                },
            )
            held_ttl = self._ttl_ms(hold.ends_at)
        at = stored.next_clock_event()
        keys = [
            self._grant_key(stored.id),
            *self._state_keys(),
            caller,
            waiting,
            marker,
            held_key,
        ]
        args: list[str | int] = [
            str(old.version),
            str(stored.version),
            self._seal(stored),
            self._ttl_ms(self._purge_at(stored)),
            stored.id,
            stored.state,
            repr(at if at is not None else 0.0),
            "set" if hold is not None else "del",
            held_sealed,
            held_ttl,
        ]
        done = await self._run(lambda _r: self._replace(keys=keys, args=args))
        return stored if done == 1 else None

    async def of_caller(self, issuer: str, subject: str, limit: int) -> list[Grant]:
        key = self._client.key("grants-of", _digest(issuer, subject))
        raw = await self._run(lambda r: r.zrevrange(key, 0, limit - 1))
        ids = [_text(item) for item in raw]
        grants = await self._fetch(ids)
        found = {g.id for g in grants}
        gone = [i for i in ids if i not in found]
        if gone:  # purged after their retention: drop them from the index too
            await self._run(lambda r: r.zrem(key, *gone))
        return grants

    async def _ids(self, lowest: str, highest: str) -> list[str]:
        async def read(redis: Redis) -> list[Any]:
            async with redis.pipeline(transaction=False) as pipe:
                for key in self._state_keys():
                    pipe.zrangebyscore(key, lowest, highest)
                return list(await pipe.execute())

        return [_text(item) for batch in await self._run(read) for item in batch]

    async def open_grants(self) -> list[Grant]:
        return await self._fetch(await self._ids("-inf", "+inf"))

    async def due(self, now: float) -> list[Grant]:
        return await self._fetch(await self._ids("-inf", repr(now)))

    async def counts(self) -> tuple[int, int]:
        pending, _, active = self._state_keys()

        async def read(redis: Redis) -> list[Any]:
            async with redis.pipeline(transaction=False) as pipe:
                pipe.zcard(pending)
                pipe.zcard(active)
                return list(await pipe.execute())

        counted = await self._run(read)
        return int(counted[0]), int(counted[1])

    async def held(self, issuer: str, subject: str, route: str) -> tuple[HeldGrant, ...]:
        key = self.held_key(issuer, subject, route)
        raw = await self._run(lambda r: r.hgetall(key))
        if not raw:
            return ()
        now = self._clock()
        out = []
        for field, value in raw.items():
            grant_id = _text(field)
            data = self._client.codec.open(f"{key}:{grant_id}", _text(value), now=now)
            if data is None or data.get("id") != grant_id:
                continue  # ended (its exp passed), or not sealed by us for this place
            try:
                out.append(
                    HeldGrant(grant_id, str(data["rule"]), float(data["s"]), float(data["e"]))
                )
            except (KeyError, TypeError, ValueError):
                continue
        return tuple(out)

    async def close(self) -> None:
        return None


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    return str(value)


def _with_version(grant: Grant, version: bytes) -> Grant:
    """The stored version counts (the compare-and-set reads it), not the sealed copy's."""
    try:
        number = int(version)
    except ValueError:
        number = grant.version
    return dataclasses.replace(grant, version=number)
