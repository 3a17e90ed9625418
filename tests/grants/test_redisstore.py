"""What the Redis store keeps in Redis: sealed grants, ids and times, nothing readable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis

from proxy.grants import machine
from proxy.grants.redisstore import RedisGrantStore
from proxy.state.client import StateClient
from tests.grants.conftest import LIMITS
from tests.grants.support import ALICE, BOB, T0, pending
from tests.state.conftest import state_config
from tests.state.redis_server import RedisServer


async def test_redis_holds_no_justification_identity_or_route_in_the_clear(
    redis_server: RedisServer, state_key: Path
) -> None:
    client = StateClient(state_config(redis_server, state_key))
    await client.start()
    try:
        store = RedisGrantStore(client, LIMITS)
        grant = pending()
        await store.add(grant, T0)
        await store.replace(grant, machine.decide(grant, "approve", BOB, T0, "ticket OPS-7"))
    finally:
        await client.close()
    with redis_server.inspect() as raw:
        dump = _everything(raw)
    for secret in (b"backfill", b"alice", b"prod-api", b"prod-writers", b"OPS-7", b"bob"):
        assert secret not in dump


async def test_a_grant_altered_in_redis_is_no_grant_at_all(
    redis_server: RedisServer, state_key: Path
) -> None:
    client = StateClient(state_config(redis_server, state_key))
    await client.start()
    try:
        store = RedisGrantStore(client, LIMITS)
        grant = pending()
        await store.add(grant, T0)
        await store.replace(grant, machine.decide(grant, "approve", BOB, T0, "ok"))
        other = pending(BOB)
        await store.add(other, T0)
        raw = redis_server.inspect()
        try:
            # Someone with write access to Redis copies Bob's sealed request over Alice's
            # grant, and Alice's held entry to where Bob's decisions look: neither
            # opens where it now sits.
            raw.hset(
                client.key("grant", grant.id),
                "d",
                raw.hget(client.key("grant", other.id), "d") or b"",
            )
            entry = raw.hgetall(store.held_key(ALICE.issuer, ALICE.subject, "prod-api"))
            assert entry
            for name, value in entry.items():
                raw.hset(store.held_key(BOB.issuer, BOB.subject, "prod-api"), name, value)
        finally:
            raw.close()
        assert await store.get(grant.id) is None
        assert await store.held(BOB.issuer, BOB.subject, "prod-api") == ()
        assert len(await store.held(ALICE.issuer, ALICE.subject, "prod-api")) == 1
    finally:
        await client.close()


def _everything(raw: redis.Redis) -> bytes:
    """Every key and every value in Redis, whatever its type, as one byte string."""
    out: list[Any] = []
    for key in raw.scan_iter("*"):
        out.append(key)
        kind = raw.type(key)
        if kind == b"hash":
            for field, value in raw.hgetall(key).items():
                out += [field, value]
        elif kind == b"string":
            out.append(raw.get(key))
        elif kind == b"zset":
            out += raw.zrange(key, 0, -1)
    return b"\n".join(item for item in out if isinstance(item, bytes))
