"""Server-side sessions in Redis: sealed at rest, shared, revocable, fail closed."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import REGISTRY

from proxy.errors import StateUnavailable
from tests.state.conftest import MakeState
from tests.state.redis_server import RedisServer


def session(sid: str = "sid-1", lifetime: float = 3600.0) -> dict[str, object]:
    now = time.time()
    return {
        "sid": sid,
        "iat": now,
        "exp": now + lifetime,
        "claims": {"sub": "alice", "email": "alice@example.test"},
        "at": "access-token-value",
        "at_exp": now + 300,
        "rt": "refresh-token-value",
    }


async def test_a_session_saved_by_one_replica_is_loaded_by_another(make_state: MakeState) -> None:
    one, two = await make_state(), await make_state()
    await one.sessions.save("sid-1", session())
    loaded = await two.sessions.load("sid-1")
    assert loaded is not None and loaded["claims"]["sub"] == "alice"
    assert await two.sessions.load("sid-2") is None


async def test_deleting_revokes_the_session_for_every_replica(make_state: MakeState) -> None:
    one, two = await make_state(), await make_state()
    await one.sessions.save("sid-1", session())
    await two.sessions.delete("sid-1")
    assert await one.sessions.load("sid-1") is None


async def test_sessions_are_sealed_at_rest_and_keyed_by_a_hash_of_the_id(
    make_state: MakeState, redis_server: RedisServer
) -> None:
    one = await make_state()
    await one.sessions.save("secret-session-id", session("secret-session-id"))
    with redis_server.inspect() as plain:
        (key,) = plain.keys("*")
        value = plain.get(key)
        ttl = plain.pttl(key)
    assert key.startswith(b"gatehouse:session:") and b"secret-session-id" not in key
    assert value is not None
    for secret in (b"access-token-value", b"refresh-token-value", b"alice"):
        assert secret not in value
    assert 3_590_000 < ttl <= 3_600_000  # lives exactly as long as the session


async def test_a_stored_session_copied_under_another_id_is_not_a_session(
    make_state: MakeState, redis_server: RedisServer
) -> None:
    one = await make_state()
    await one.sessions.save("victim", session("victim"))
    await one.sessions.save("attacker", session("attacker"))
    with redis_server.inspect() as plain:
        first, second = plain.keys("*")
        first_value, second_value = plain.get(first), plain.get(second)
        assert first_value is not None and second_value is not None
        plain.set(first, second_value)
        plain.set(second, first_value)
    assert await one.sessions.load("victim") is None
    assert await one.sessions.load("attacker") is None


async def test_a_session_past_its_expiry_is_not_stored(
    make_state: MakeState, redis_server: RedisServer
) -> None:
    one = await make_state()
    await one.sessions.save("old", session("old", lifetime=-1.0))
    assert await one.sessions.load("old") is None
    with redis_server.inspect() as plain:
        assert plain.keys("*") == []


async def test_a_login_state_is_consumed_once_across_replicas(make_state: MakeState) -> None:
    one, two = await make_state(), await make_state()
    assert await one.sessions.consume_once("state-abc", 600)
    assert not await two.sessions.consume_once("state-abc", 600)
    assert not await one.sessions.consume_once("state-abc", 600)
    assert await two.sessions.consume_once("state-other", 600)


SESSION_END = time.time() + 3600


async def test_the_refresh_lock_has_one_holder_and_only_it_releases(
    make_state: MakeState,
) -> None:
    one, two = await make_state(lock_ttl=0.3), await make_state(lock_ttl=0.3)
    token = await one.sessions.lock("sid-1", SESSION_END)
    assert token is not None
    assert await two.sessions.lock("sid-1", SESSION_END) is None
    await two.sessions.unlock("sid-1", "not-the-holder")
    assert await two.sessions.lock("sid-1", SESSION_END) is None
    assert await two.sessions.lock("sid-2", SESSION_END) is not None  # per session
    await one.sessions.unlock("sid-1", token)
    assert await two.sessions.lock("sid-1", SESSION_END) is not None


async def test_a_lock_whose_holder_died_expires_by_itself(make_state: MakeState) -> None:
    one, two = await make_state(lock_ttl=0.2), await make_state(lock_ttl=0.2)
    assert await one.sessions.lock("sid-1", SESSION_END) is not None
    await one.close()  # the holder is gone without releasing
    assert await two.sessions.lock("sid-1", SESSION_END) is None
    deadline = time.monotonic() + 2
    while await two.sessions.lock("sid-1", SESSION_END) is None:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    assert time.monotonic() < deadline


async def test_a_held_lock_renewed_by_its_holder_outlives_its_ttl(make_state: MakeState) -> None:
    one, two = await make_state(lock_ttl=0.2), await make_state(lock_ttl=0.2)
    token = await one.sessions.lock("sid-1", SESSION_END)
    assert token is not None
    for _ in range(5):  # 0.5 s in all, 2.5 times the lock's lifetime
        await asyncio.sleep(0.1)
        assert await one.sessions.extend("sid-1", token)
        assert await two.sessions.lock("sid-1", SESSION_END) is None
    assert not await two.sessions.extend("sid-1", "not-the-holder")


async def test_a_refresh_written_after_a_logout_does_not_bring_the_session_back(
    make_state: MakeState,
) -> None:
    one, two = await make_state(), await make_state()
    await one.sessions.save("sid-1", session())
    token = await one.sessions.lock("sid-1", SESSION_END)
    assert token is not None
    await two.sessions.delete("sid-1")  # logout while the refresh is in flight
    refreshed = {**session(), "rt": "rotated"}
    assert await one.sessions.replace("sid-1", refreshed, token) == "ended"
    assert await one.sessions.load("sid-1") is None
    assert await two.sessions.load("sid-1") is None


async def test_a_refresh_that_outlived_its_lock_cannot_overwrite_the_one_that_took_over(
    make_state: MakeState,
) -> None:
    one, two = await make_state(lock_ttl=0.1), await make_state(lock_ttl=0.1)
    await one.sessions.save("sid-1", session())
    stale = await one.sessions.lock("sid-1", SESSION_END)
    assert stale is not None
    await asyncio.sleep(0.2)  # the first holder stalls past its lock
    fresh = await two.sessions.lock("sid-1", SESSION_END)
    assert fresh is not None
    assert await two.sessions.replace("sid-1", {**session(), "rt": "second"}, fresh) == "written"
    assert await one.sessions.replace("sid-1", {**session(), "rt": "first"}, stale) == "fenced"
    await one.sessions.delete("sid-1", stale)  # a refusal seen by the stale holder
    loaded = await one.sessions.load("sid-1")
    assert loaded is not None and loaded["rt"] == "second"
    await two.sessions.delete("sid-1", fresh)
    assert await one.sessions.load("sid-1") is None


async def test_a_refresh_holding_the_lock_writes_with_the_session_lifetime(
    make_state: MakeState, redis_server: RedisServer
) -> None:
    one = await make_state()
    await one.sessions.save("sid-1", session())
    token = await one.sessions.lock("sid-1", SESSION_END)
    assert token is not None
    assert await one.sessions.replace("sid-1", {**session(), "rt": "new"}, token) == "written"
    loaded = await one.sessions.load("sid-1")
    assert loaded is not None and loaded["rt"] == "new"
    with redis_server.inspect() as plain:
        (key,) = plain.keys("gatehouse:session:*")
        assert 3_590_000 < plain.pttl(key) <= 3_600_000


async def test_an_unreachable_store_fails_closed_with_state_unavailable(
    make_state: MakeState, redis_server: RedisServer
) -> None:
    one = await make_state()
    await one.sessions.save("sid-1", session())
    redis_server.stop()
    sample = ("gatehouse_state_unreachable_total", {"component": "session"})
    before = REGISTRY.get_sample_value(*sample) or 0.0
    for attempt in (
        one.sessions.load("sid-1"),
        one.sessions.save("sid-1", session()),
        one.sessions.delete("sid-1"),
        one.sessions.consume_once("state", 600),
        one.sessions.lock("sid-1", SESSION_END),
    ):
        with pytest.raises(StateUnavailable) as info:
            await attempt
        assert info.value.status == 503 and info.value.reason == "state_unavailable"
    assert REGISTRY.get_sample_value(*sample) == before + 5
