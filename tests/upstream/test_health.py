"""Health: thresholds and passive ejection on an injected clock; real probes against real servers."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import REGISTRY

from proxy.upstream.config import BackendOptions, HealthCheckOptions
from proxy.upstream.health import HealthBoard
from proxy.upstream.pool import EndpointPool

A, B = "http://a", "http://b"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def board(
    clock: Clock, changes: list[tuple[str, bool]] | None = None, **options: object
) -> HealthBoard:
    opts = HealthCheckOptions(**options)  # type: ignore[arg-type]
    listener = (lambda e, h: changes.append((e, h))) if changes is not None else None
    return HealthBoard([A, B], opts, clock, listener)


def test_the_first_probe_decides_at_once() -> None:
    b = board(Clock(), enabled=True, unhealthy_threshold=3)
    b.record_probe(A, ok=False)
    assert b.healthy_endpoints() == {B}


def test_thresholds_take_an_endpoint_out_and_bring_it_back() -> None:
    changes: list[tuple[str, bool]] = []
    b = board(Clock(), changes, enabled=True, unhealthy_threshold=2, healthy_threshold=3)
    b.record_probe(A, ok=True)
    b.record_probe(A, ok=False)
    assert b.is_healthy(A)
    b.record_probe(A, ok=False)
    assert not b.is_healthy(A)
    b.record_probe(A, ok=True)
    b.record_probe(A, ok=True)
    assert not b.is_healthy(A)
    b.record_probe(A, ok=True)
    assert b.is_healthy(A)
    assert changes == [(A, False), (A, True)]  # transitions only


def test_passive_failures_eject_until_the_next_good_probe() -> None:
    clock = Clock()
    b = board(clock, enabled=True, passive_failures=3)
    b.record_traffic(A, ok=False)
    b.record_traffic(A, ok=False)
    b.record_traffic(A, ok=True)  # not consecutive any more
    b.record_traffic(A, ok=False)
    b.record_traffic(A, ok=False)
    assert b.is_healthy(A)
    b.record_traffic(A, ok=False)
    assert not b.is_healthy(A)
    clock.now += 3600
    assert not b.is_healthy(A)  # time alone does not bring it back when probes can
    b.record_probe(A, ok=True)
    assert b.is_healthy(A)


def test_without_active_checks_a_passive_ejection_lasts_passive_ejection() -> None:
    clock = Clock()
    changes: list[tuple[str, bool]] = []
    b = board(clock, changes, enabled=False, passive_failures=2, passive_ejection=30.0)
    b.record_traffic(B, ok=False)
    b.record_traffic(B, ok=False)
    assert b.healthy_endpoints() == {A}
    clock.now += 29.9
    assert b.healthy_endpoints() == {A}
    clock.now += 0.1
    assert b.healthy_endpoints() == {A, B}
    assert changes == [(B, False), (B, True)]


def test_passive_detection_can_be_switched_off() -> None:
    b = board(Clock(), passive_failures=0)
    for _ in range(100):
        b.record_traffic(A, ok=False)
    assert b.is_healthy(A)


# -- for real ---------------------------------------------------------------------


class Switchable:
    """An upstream whose health endpoint can be flipped; it counts real traffic."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.health_status = 200
        self.traffic = 0

    def app(self) -> web.Application:
        async def health(_request: web.Request) -> web.Response:
            return web.Response(status=self.health_status, text="ok")

        async def work(_request: web.Request) -> web.Response:
            self.traffic += 1
            return web.Response(text=self.name)

        app = web.Application()
        app.router.add_get("/healthz", health)
        app.router.add_get("/work", work)
        return app


@pytest.fixture
async def pair() -> AsyncIterator[list[tuple[Switchable, str]]]:
    out = []
    runners = []
    for name in ("one", "two"):
        upstream = Switchable(name)
        runner = web.AppRunner(upstream.app(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        out.append((upstream, f"http://127.0.0.1:{runner.addresses[0][1]}"))
    yield out
    for runner in runners:
        await runner.cleanup()


def gauge(backend: str, endpoint: str) -> float | None:
    return REGISTRY.get_sample_value(
        "gatehouse_upstream_healthy", {"backend": backend, "endpoint": endpoint}
    )


async def wait_until(predicate: collections.abc.Callable[[], bool], limit: float) -> float:
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not predicate():
        if loop.time() - started > limit:
            raise AssertionError(f"condition not met within {limit}s")
        await asyncio.sleep(0.01)
    return loop.time() - started


INTERVAL = 0.3


async def test_an_endpoint_failing_its_check_leaves_within_one_interval_and_returns_after_recovery(
    pair: list[tuple[Switchable, str]],
) -> None:
    (one, url_one), (two, url_two) = pair
    options = BackendOptions(
        health_check=HealthCheckOptions(
            enabled=True,
            path="/healthz",
            interval=INTERVAL,
            timeout=0.2,
            healthy_threshold=1,
            unhealthy_threshold=1,
        )
    )
    pool = EndpointPool([url_one, url_two], options, name="health-flip")
    await pool.start()
    try:
        async with aiohttp.ClientSession() as session:

            async def traffic(n: int) -> None:
                for _ in range(n):
                    async with session.get(pool.pick() + "/work") as r:
                        assert r.status == 200

            await traffic(10)
            assert one.traffic == 5 and two.traffic == 5
            assert gauge("health-flip", url_one) == 1.0

            one.health_status = 500
            took = await wait_until(lambda: not pool.board.is_healthy(url_one), 2 * INTERVAL)
            assert took <= INTERVAL + 0.15, took
            assert gauge("health-flip", url_one) == 0.0
            before = one.traffic
            await traffic(10)
            assert one.traffic == before  # no traffic while failing
            assert pool.ready()  # the other endpoint still serves

            one.health_status = 200
            took = await wait_until(lambda: pool.board.is_healthy(url_one), 2 * INTERVAL)
            assert took <= INTERVAL + 0.15, took
            assert gauge("health-flip", url_one) == 1.0
            await traffic(10)
            assert one.traffic == before + 5
    finally:
        await pool.close()


async def test_an_endpoint_that_stops_listening_is_taken_out_and_readiness_follows() -> None:
    runner = web.AppRunner(Switchable("alone").app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    options = BackendOptions(
        health_check=HealthCheckOptions(enabled=True, interval=INTERVAL, timeout=0.2)
    )
    pool = EndpointPool([url], options, name="health-stop")
    await pool.start()
    try:
        await asyncio.sleep(INTERVAL)
        assert pool.ready()
        assert gauge("health-stop", url) == 1.0
        await runner.cleanup()  # connections are now refused
        # Default thresholds: two failed probes in a row.
        took = await wait_until(lambda: not pool.ready(), 3 * INTERVAL)
        assert took <= 2 * INTERVAL + 0.15, took
        assert gauge("health-stop", url) == 0.0
    finally:
        await pool.close()
        await runner.cleanup()


async def test_real_traffic_failures_eject_an_endpoint_before_any_probe_notices(
    pair: list[tuple[Switchable, str]],
) -> None:
    (one, _), (two, url_two) = pair
    failing = web.Application()

    async def unavailable(_request: web.Request) -> web.Response:
        return web.Response(status=503)

    failing.router.add_get("/work", unavailable)
    runner = web.AppRunner(failing, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    bad = f"http://127.0.0.1:{runner.addresses[0][1]}"
    clock = Clock()
    options = BackendOptions(
        health_check=HealthCheckOptions(enabled=False, passive_failures=2, passive_ejection=10.0)
    )
    pool = EndpointPool([bad, url_two], options, name="health-passive", clock=clock)
    try:
        async with aiohttp.ClientSession() as session:

            async def attempt(endpoint: str, _remaining: float | None) -> aiohttp.ClientResponse:
                return await session.get(endpoint + "/work")

            statuses = []
            for _ in range(8):
                exchange = await pool.send("GET", attempt)
                statuses.append(exchange.response.status)
                exchange.response.release()
                exchange.release()
            # Each 503 is retried on the other endpoint; after two the bad one is out.
            assert statuses == [200] * 8
            assert not pool.board.is_healthy(bad)
            assert gauge("health-passive", bad) == 0.0
            assert two.traffic == 8
            clock.now += 10.0
            assert pool.board.is_healthy(bad)
            assert one.traffic == 0
    finally:
        await runner.cleanup()


def test_passive_detection_never_ejects_the_last_healthy_endpoint() -> None:
    b = board(Clock(), enabled=False, passive_failures=1)
    b.record_traffic(A, ok=False)
    assert b.healthy_endpoints() == {B}
    for _ in range(10):
        b.record_traffic(B, ok=False)
    assert b.healthy_endpoints() == {B}  # the circuit breaker's job from here


def test_the_healthy_set_is_reused_until_a_probe_or_an_ejection_changes_it() -> None:
    clock = Clock()
    b = board(clock, enabled=True, passive_failures=1, healthy_threshold=1)
    first = b.healthy_endpoints()
    clock.now += 10
    assert b.healthy_endpoints() is first  # nothing changed: no new set per request
    b.record_probe(A, ok=False)
    assert b.healthy_endpoints() == {B}
    b.record_probe(A, ok=True)
    assert b.healthy_endpoints() == {A, B}
    b.record_traffic(B, ok=False)
    assert b.healthy_endpoints() == {A}
