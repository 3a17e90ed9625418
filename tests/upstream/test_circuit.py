"""The circuit breaker: closed → open → half-open → closed, on an injected clock and for real."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from proxy.errors import UpstreamConnectError
from proxy.upstream.circuit import CircuitBreaker, CircuitState, Outcome
from proxy.upstream.config import BackendOptions, CircuitOptions, HealthCheckOptions, RetryOptions
from proxy.upstream.pool import CIRCUIT_OPEN, EndpointPool


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(
    clock: Clock, failures: int = 3, open_for: float = 10.0, probes: int = 1
) -> CircuitBreaker:
    return CircuitBreaker(CircuitOptions(True, failures, open_for, probes), clock)


def state_of(cb: CircuitBreaker) -> CircuitState:
    # A call, so the type checker does not pin the state across transitions.
    return cb.state


def fail(cb: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        permit = cb.admit()
        assert permit is not None
        cb.record(permit, Outcome.FAILURE)


def test_consecutive_failures_open_the_circuit_and_requests_fail_fast() -> None:
    clock = Clock()
    cb = breaker(clock, failures=3)
    fail(cb, 2)
    assert state_of(cb) is CircuitState.CLOSED
    fail(cb, 1)
    assert state_of(cb) is CircuitState.OPEN
    assert cb.admit() is None
    assert cb.retry_after() == pytest.approx(10.0)


def test_a_success_resets_the_consecutive_failure_count() -> None:
    cb = breaker(Clock(), failures=3)
    fail(cb, 2)
    permit = cb.admit()
    assert permit is not None
    cb.record(permit, Outcome.SUCCESS)
    fail(cb, 2)
    assert state_of(cb) is CircuitState.CLOSED


def test_after_open_for_only_the_configured_probes_go_through() -> None:
    clock = Clock()
    cb = breaker(clock, failures=1, open_for=10.0, probes=2)
    fail(cb, 1)
    clock.now += 9.9
    assert cb.admit() is None
    clock.now += 0.1
    assert state_of(cb) is CircuitState.HALF_OPEN
    first, second = cb.admit(), cb.admit()
    assert first is not None and first.probe
    assert second is not None and second.probe
    assert cb.admit() is None  # both probe slots taken


def test_successful_probes_close_the_circuit() -> None:
    clock = Clock()
    cb = breaker(clock, failures=1, probes=2)
    fail(cb, 1)
    clock.now += 10
    first, second = cb.admit(), cb.admit()
    assert first is not None and second is not None
    cb.record(first, Outcome.SUCCESS)
    assert state_of(cb) is CircuitState.HALF_OPEN
    cb.record(second, Outcome.SUCCESS)
    assert state_of(cb) is CircuitState.CLOSED
    assert cb.admit() is not None


def test_a_failed_probe_opens_the_circuit_for_another_open_for() -> None:
    clock = Clock()
    cb = breaker(clock, failures=1, open_for=10.0)
    fail(cb, 1)
    clock.now += 10
    probe = cb.admit()
    assert probe is not None
    clock.now += 3
    cb.record(probe, Outcome.FAILURE)
    assert state_of(cb) is CircuitState.OPEN
    clock.now += 9.9
    assert cb.admit() is None
    clock.now += 0.1
    assert state_of(cb) is CircuitState.HALF_OPEN


def test_an_abandoned_probe_gives_its_slot_back() -> None:
    clock = Clock()
    cb = breaker(clock, failures=1)
    fail(cb, 1)
    clock.now += 10
    probe = cb.admit()
    assert probe is not None
    assert cb.admit() is None
    cb.record(probe, Outcome.ABANDONED)
    assert state_of(cb) is CircuitState.HALF_OPEN
    assert cb.admit() is not None


def test_a_slow_success_admitted_before_the_circuit_opened_does_not_close_it() -> None:
    clock = Clock()
    cb = breaker(clock, failures=2)
    slow = cb.admit()
    assert slow is not None
    fail(cb, 2)
    assert state_of(cb) is CircuitState.OPEN
    cb.record(slow, Outcome.SUCCESS)
    assert state_of(cb) is CircuitState.OPEN
    clock.now += 10
    probe = cb.admit()
    assert probe is not None
    cb.record(slow, Outcome.FAILURE)  # stale: must not reopen the half-open circuit
    assert state_of(cb) is CircuitState.HALF_OPEN


def test_a_disabled_circuit_never_opens() -> None:
    cb = CircuitBreaker(CircuitOptions(enabled=False, consecutive_failures=1), Clock())
    fail(cb, 50)
    assert state_of(cb) is CircuitState.CLOSED


# -- for real: a pool in front of a real upstream that fails, then recovers --------


class FlakyUpstream:
    def __init__(self) -> None:
        self.status = 503
        self.hits = 0

    async def handle(self, _request: web.Request) -> web.Response:
        self.hits += 1
        return web.Response(status=self.status, text="x")


@pytest.fixture
async def flaky() -> AsyncIterator[tuple[FlakyUpstream, str]]:
    upstream = FlakyUpstream()
    app = web.Application()
    app.router.add_get("/", upstream.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield upstream, f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_the_circuit_opens_on_a_failing_upstream_and_closes_once_it_recovers(
    flaky: tuple[FlakyUpstream, str],
) -> None:
    upstream, url = flaky
    clock = Clock()
    options = BackendOptions(
        health_check=HealthCheckOptions(passive_failures=0),
        retries=RetryOptions(attempts=1),
        circuit_breaker=CircuitOptions(consecutive_failures=3, open_for=5.0),
    )
    pool = EndpointPool([url], options, name="circuit-test", clock=clock)
    async with aiohttp.ClientSession() as session:

        async def attempt(endpoint: str, _remaining: float | None) -> aiohttp.ClientResponse:
            return await session.get(endpoint + "/")

        async def status() -> int:
            exchange = await pool.send("GET", attempt)
            try:
                return exchange.response.status
            finally:
                exchange.response.release()
                exchange.release()

        assert [await status() for _ in range(3)] == [503, 503, 503]
        assert state_of(pool.circuit) is CircuitState.OPEN
        with pytest.raises(UpstreamConnectError) as err:
            await pool.send("GET", attempt)
        assert (err.value.status, err.value.reason) == (502, CIRCUIT_OPEN)
        assert upstream.hits == 3  # failing fast: the upstream saw nothing more
        assert not pool.ready()

        upstream.status = 200
        clock.now += 5.0
        assert await status() == 200  # the half-open probe
        assert state_of(pool.circuit) is CircuitState.CLOSED
        assert [await status() for _ in range(3)] == [200, 200, 200]
        assert upstream.hits == 7


async def test_a_failure_that_opens_the_circuit_is_reported_as_itself_not_retried_into_circuit_open(
    flaky: tuple[FlakyUpstream, str],
) -> None:
    upstream, url = flaky
    options = BackendOptions(
        retries=RetryOptions(attempts=3, backoff_base=0.001, backoff_max=0.001),
        circuit_breaker=CircuitOptions(consecutive_failures=1, open_for=60.0),
    )
    pool = EndpointPool([url], options, name="circuit-retry")
    async with aiohttp.ClientSession() as session:

        async def attempt(endpoint: str, _remaining: float | None) -> aiohttp.ClientResponse:
            return await session.get(endpoint + "/")

        exchange = await pool.send("GET", attempt)
        assert exchange.response.status == 503  # the upstream's own answer
        exchange.response.release()
        exchange.release()
    assert upstream.hits == 1
    assert state_of(pool.circuit) is CircuitState.OPEN
