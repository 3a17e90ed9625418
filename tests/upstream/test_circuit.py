"""The circuit breaker: closed → open → half-open → closed, on an injected clock and for real."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import REGISTRY

from proxy.errors import UpstreamConnectError
from proxy.upstream.circuit import CircuitBreaker, CircuitState, Outcome
from proxy.upstream.config import BackendOptions, CircuitOptions, OutlierOptions, RetryOptions
from proxy.upstream.pool import EndpointPool
from tests.support.pool_calls import get_statuses


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(
    clock: Clock, open_for: float = 10.0, probes: int = 1, changes: list[CircuitState] | None = None
) -> CircuitBreaker:
    options = CircuitOptions(enabled=True, open_for=open_for, half_open_probes=probes)
    return CircuitBreaker(options, clock, changes.append if changes is not None else None)


def state_of(cb: CircuitBreaker) -> CircuitState:
    # A call, so the type checker does not pin the state across transitions.
    return cb.state


def fail(cb: CircuitBreaker, times: int, *, usable: bool) -> None:
    for _ in range(times):
        permit = cb.admit()
        assert permit is not None
        cb.record(permit, Outcome.FAILURE, backend_usable=usable)


def test_failures_while_some_endpoint_is_usable_never_open_the_circuit() -> None:
    cb = breaker(Clock())
    fail(cb, 1000, usable=True)
    assert state_of(cb) is CircuitState.CLOSED


def test_a_failure_that_leaves_no_endpoint_usable_opens_the_circuit_and_requests_fail_fast() -> (
    None
):
    clock = Clock()
    changes: list[CircuitState] = []
    cb = breaker(clock, changes=changes)
    fail(cb, 1, usable=False)
    assert state_of(cb) is CircuitState.OPEN
    assert cb.admit() is None
    assert cb.retry_after() == pytest.approx(10.0)
    assert changes == [CircuitState.OPEN]


def test_after_open_for_only_the_configured_probes_go_through() -> None:
    clock = Clock()
    cb = breaker(clock, open_for=10.0, probes=2)
    fail(cb, 1, usable=False)
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
    changes: list[CircuitState] = []
    cb = breaker(clock, probes=2, changes=changes)
    fail(cb, 1, usable=False)
    clock.now += 10
    first, second = cb.admit(), cb.admit()
    assert first is not None and second is not None
    cb.record(first, Outcome.SUCCESS)
    assert state_of(cb) is CircuitState.HALF_OPEN
    cb.record(second, Outcome.SUCCESS)
    assert state_of(cb) is CircuitState.CLOSED
    assert cb.admit() is not None
    assert changes == [CircuitState.OPEN, CircuitState.HALF_OPEN, CircuitState.CLOSED]


def test_a_failed_probe_opens_the_circuit_for_another_open_for() -> None:
    clock = Clock()
    cb = breaker(clock, open_for=10.0)
    fail(cb, 1, usable=False)
    clock.now += 10
    probe = cb.admit()
    assert probe is not None
    clock.now += 3
    cb.record(probe, Outcome.FAILURE, backend_usable=False)
    assert state_of(cb) is CircuitState.OPEN
    clock.now += 9.9
    assert cb.admit() is None
    clock.now += 0.1
    assert state_of(cb) is CircuitState.HALF_OPEN


def test_an_abandoned_probe_gives_its_slot_back() -> None:
    clock = Clock()
    cb = breaker(clock)
    fail(cb, 1, usable=False)
    clock.now += 10
    probe = cb.admit()
    assert probe is not None
    assert cb.admit() is None
    cb.record(probe, Outcome.ABANDONED)
    assert state_of(cb) is CircuitState.HALF_OPEN
    assert cb.admit() is not None


def test_a_slow_success_admitted_before_the_circuit_opened_does_not_close_it() -> None:
    clock = Clock()
    cb = breaker(clock)
    slow = cb.admit()
    assert slow is not None
    fail(cb, 1, usable=False)
    assert state_of(cb) is CircuitState.OPEN
    cb.record(slow, Outcome.SUCCESS)
    assert state_of(cb) is CircuitState.OPEN
    clock.now += 10
    probe = cb.admit()
    assert probe is not None
    # Stale: must not reopen the half-open circuit.
    cb.record(slow, Outcome.FAILURE, backend_usable=False)
    assert state_of(cb) is CircuitState.HALF_OPEN


def test_a_disabled_circuit_never_opens() -> None:
    cb = CircuitBreaker(CircuitOptions(enabled=False), Clock())
    fail(cb, 50, usable=False)
    assert state_of(cb) is CircuitState.CLOSED


# -- for real: a pool in front of a real upstream that fails, then recovers --------


class FlakyUpstream:
    def __init__(self) -> None:
        self.status = 503
        self.hits = 0

    async def handle(self, _request: web.Request) -> web.Response:
        self.hits += 1
        return web.Response(status=self.status, text="x")


@asynccontextmanager
async def serving(upstream: FlakyUpstream) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/", upstream.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def flaky() -> AsyncIterator[tuple[FlakyUpstream, str]]:
    upstream = FlakyUpstream()
    async with serving(upstream) as url:
        yield upstream, url


@pytest.fixture
async def three() -> AsyncIterator[list[tuple[FlakyUpstream, str]]]:
    upstreams = [FlakyUpstream() for _ in range(3)]
    async with contextlib.AsyncExitStack() as stack:
        urls = [await stack.enter_async_context(serving(u)) for u in upstreams]
        yield list(zip(upstreams, urls, strict=True))


def circuit_gauge(backend: str) -> float | None:
    return REGISTRY.get_sample_value("gatehouse_upstream_circuit_state", {"backend": backend})


async def test_the_circuit_opens_on_a_failing_upstream_and_closes_once_it_recovers(
    flaky: tuple[FlakyUpstream, str],
) -> None:
    upstream, url = flaky
    clock = Clock()
    # One endpoint: it cannot be ejected (the last in service), so its third
    # failure in a row leaves nothing usable.
    options = BackendOptions(
        outlier_detection=OutlierOptions(consecutive_failures=3),
        retries=RetryOptions(attempts=1),
        circuit_breaker=CircuitOptions(open_for=5.0),
    )
    pool = EndpointPool([url], options, name="circuit-test", clock=clock)
    async with aiohttp.ClientSession() as session:

        async def status() -> int:
            return (await get_statuses(pool, session))[0]

        assert [await status() for _ in range(3)] == [503, 503, 503]
        assert state_of(pool.circuit) is CircuitState.OPEN
        with pytest.raises(UpstreamConnectError) as err:
            await get_statuses(pool, session)
        assert (err.value.status, err.value.reason) == (502, "upstream_circuit_open")
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
        outlier_detection=OutlierOptions(consecutive_failures=1),
        retries=RetryOptions(attempts=3, backoff_base=0.001, backoff_max=0.001),
        circuit_breaker=CircuitOptions(open_for=60.0),
    )
    pool = EndpointPool([url], options, name="circuit-retry")
    async with aiohttp.ClientSession() as session:
        assert await get_statuses(pool, session) == [503]  # the upstream's own answer
    assert upstream.hits == 1
    assert state_of(pool.circuit) is CircuitState.OPEN


async def test_one_failing_endpoint_of_three_is_ejected_and_the_circuit_stays_closed(
    three: list[tuple[FlakyUpstream, str]],
) -> None:
    (bad, bad_url), (one, _), (two, _) = three
    one.status = two.status = 200
    clock = Clock()
    options = BackendOptions(
        outlier_detection=OutlierOptions(consecutive_failures=3),
        retries=RetryOptions(backoff_base=0.001, backoff_max=0.001),
    )
    pool = EndpointPool([u for _, u in three], options, name="circuit-one-of-three", clock=clock)
    await pool.start()
    assert circuit_gauge("circuit-one-of-three") == 0
    async with aiohttp.ClientSession() as session:
        statuses = await get_statuses(pool, session, times=30)
        # Each 503 was retried on another endpoint; after three the bad one is out.
        assert statuses == [200] * 30
        assert bad.hits == 3 and one.hits + two.hits == 30
        assert pool.board.is_ejected(bad_url)
        assert state_of(pool.circuit) is CircuitState.CLOSED

        # Now every endpoint fails: the remaining two become outliers (one
        # ejection at most of three at 50 %), nothing is usable, the circuit opens:
        # three requests of two attempts each, alternating between the two.
        one.status = two.status = 503
        assert await get_statuses(pool, session, times=3) == [503] * 3
        assert state_of(pool.circuit) is CircuitState.OPEN
        assert circuit_gauge("circuit-one-of-three") == 2
        with pytest.raises(UpstreamConnectError) as err:
            await get_statuses(pool, session)
        assert err.value.reason == "upstream_circuit_open"
    await pool.close()
