"""The Redis connection: availability flips on outages, recovers by itself, says so."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from proxy.config.reader import SecretRef
from proxy.state.client import StateClient, StateUnreachable
from proxy.state.shared import SharedState
from tests.state.conftest import MakeState, state_config
from tests.state.redis_server import RedisServer
from tests.support.waiting import eventually


def available_gauge() -> float | None:
    return REGISTRY.get_sample_value("gatehouse_state_available")


async def ping(redis: Redis) -> bool:
    return bool(await redis.ping())


async def test_an_outage_flips_availability_and_recovery_needs_no_restart(
    redis_server: RedisServer, make_state: MakeState, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "gatehouse.state")
    state = await make_state()
    assert state.available() and available_gauge() == 1.0
    assert await state.client.run(ping)

    redis_server.stop()
    with pytest.raises(StateUnreachable):
        await state.client.run(ping)
    assert not state.available() and available_gauge() == 0.0
    # While marked down, callers do not wait on connection attempts.
    started = time.perf_counter()
    with pytest.raises(StateUnreachable):
        await state.client.run(ping)
    assert time.perf_counter() - started < 0.01

    redis_server.start()
    await eventually(state.available)
    assert await state.client.run(ping)
    assert available_gauge() == 1.0
    messages = [r.getMessage() for r in caplog.records]
    assert sum("unreachable" in m for m in messages) == 1
    assert "reachable: sessions" in messages[-1]


async def test_the_probe_notices_an_outage_without_any_traffic(
    redis_server: RedisServer, make_state: MakeState
) -> None:
    state = await make_state(reconnect_interval=0.05)
    redis_server.stop()
    await eventually(lambda: not state.available())
    redis_server.start()
    await eventually(state.available)


async def test_start_with_redis_down_serves_fallbacks_then_connects_when_it_appears(
    redis_server: RedisServer, make_state: MakeState
) -> None:
    redis_server.stop()
    state = await make_state()
    assert not state.available()
    redis_server.start()
    await eventually(state.available)


async def test_pooled_connections_from_before_a_restart_do_not_fail_requests_after_it(
    redis_server: RedisServer, make_state: MakeState
) -> None:
    state = await make_state(reconnect_interval=5.0)  # the probe stays out of this
    # Fill the pool with several connections, then restart Redis under them.
    assert all(await asyncio.gather(*(state.client.run(ping) for _ in range(8))))
    redis_server.stop()
    redis_server.start()
    results = await asyncio.gather(*(state.client.run(ping) for _ in range(8)))
    assert all(results) and state.available()


async def test_a_burst_beyond_the_connection_limit_queues_and_is_not_an_outage(
    make_state: MakeState,
) -> None:
    state = await make_state(max_connections=4)
    results = await asyncio.gather(*(state.client.run(ping) for _ in range(500)))
    assert all(results) and state.available()


async def test_a_request_waits_for_a_free_connection_at_most_the_timeout_and_is_not_an_outage(
    make_state: MakeState,
) -> None:
    state = await make_state(max_connections=2, timeout=0.2)
    release = asyncio.Event()

    async def held(redis: Redis) -> bool:
        await release.wait()  # keeps its connection slot until released
        return bool(await redis.ping())

    holders = [asyncio.ensure_future(state.client.run(held)) for _ in range(2)]
    await asyncio.sleep(0)  # both slots taken
    with pytest.raises(StateUnreachable, match="no free Redis connection in time"):
        await state.client.run(ping)
    assert state.available()
    release.set()
    assert await asyncio.gather(*holders) == [True, True]
    assert await state.client.run(ping)


async def test_password_comes_by_reference_and_a_wrong_one_means_unavailable(
    tmp_path: Path, state_key: Path
) -> None:
    server = RedisServer(tmp_path / "redis-auth", None, "--requirepass", "right-password")
    server.start()
    try:
        good = tmp_path / "pw"
        good.write_text("right-password\n")
        bad = tmp_path / "bad-pw"
        bad.write_text("wrong-password\n")
        ok = SharedState(state_config(server, state_key, password=SecretRef("file", str(good))))
        denied = StateClient(state_config(server, state_key, password=SecretRef("file", str(bad))))
        try:
            await ok.start()
            await denied.start()
            assert ok.available()
            assert not denied.available()
        finally:
            await ok.close()
            await denied.close()
    finally:
        server.stop()


async def test_one_command_timing_out_fails_alone_while_redis_answers_pings(
    make_state: MakeState, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "gatehouse.state")
    state = await make_state(timeout=0.3, reconnect_interval=60.0)

    async def blocking_pop(redis: Redis) -> object:
        # Waits on Redis's side for longer than the client's timeout: a slow
        # command, not a silent server.
        return await redis.blpop(["nothing-will-come"], timeout=2)

    with pytest.raises(StateUnreachable, match="TimeoutError"):
        await state.client.run(blocking_pop)
    assert state.available() and available_gauge() == 1.0
    assert await state.client.run(ping)
    assert await state.client.ping()  # the check a timeout starts has an answer too
    assert state.available()
    assert not any("unreachable" in r.getMessage() for r in caplog.records)


async def test_a_silent_redis_is_marked_down_after_a_command_and_a_ping_time_out(
    redis_server: RedisServer, make_state: MakeState
) -> None:
    state = await make_state(timeout=0.3, reconnect_interval=60.0)
    assert redis_server.process is not None
    os.kill(redis_server.process.pid, signal.SIGSTOP)
    try:
        with pytest.raises(StateUnreachable, match="TimeoutError"):
            await state.client.run(ping)
        await eventually(lambda: not state.available())
        assert available_gauge() == 0.0
    finally:
        os.kill(redis_server.process.pid, signal.SIGCONT)
    assert await state.client.ping()
    assert state.available()
