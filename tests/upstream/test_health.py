"""Health: thresholds and outlier ejection on an injected clock; real probes against real servers."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from proxy.upstream.config import BackendOptions, HealthCheckOptions, OutlierOptions
from proxy.upstream.health import HealthBoard
from proxy.upstream.pool import EndpointPool
from tests.support.pool_calls import get_statuses

A, B, C, D = "http://a", "http://b", "http://c", "http://d"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


Change = tuple[str, bool, bool]  # endpoint, in service, ejected


def board(
    clock: Clock,
    changes: list[Change] | None = None,
    endpoints: tuple[str, ...] = (A, B),
    outliers: OutlierOptions | None = None,
    **options: object,
) -> HealthBoard:
    opts = HealthCheckOptions(**options)  # type: ignore[arg-type]
    listener = (lambda e, h, x: changes.append((e, h, x))) if changes is not None else None
    return HealthBoard(endpoints, opts, clock, listener, outliers or OutlierOptions())


def fail(b: HealthBoard, endpoint: str, times: int) -> None:
    for _ in range(times):
        b.record_traffic(endpoint, ok=False, cause="reset")


# -- active checks ------------------------------------------------------------------


def test_the_first_probe_decides_at_once() -> None:
    b = board(Clock(), enabled=True, unhealthy_threshold=3)
    b.record_probe(A, ok=False)
    assert b.healthy_endpoints() == {B}


def test_thresholds_take_an_endpoint_out_and_bring_it_back() -> None:
    changes: list[Change] = []
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
    assert changes == [(A, False, False), (A, True, False)]  # transitions only


# -- outlier detection -----------------------------------------------------------


def test_consecutive_failures_in_real_traffic_eject_an_endpoint_at_once() -> None:
    changes: list[Change] = []
    b = board(Clock(), changes, outliers=OutlierOptions(consecutive_failures=3))
    fail(b, A, 2)
    b.record_traffic(A, ok=True)  # not consecutive any more
    fail(b, A, 2)
    assert b.is_healthy(A)
    fail(b, A, 1)
    assert not b.is_healthy(A) and b.is_ejected(A)
    assert b.healthy_endpoints() == {B}
    assert changes == [(A, False, True)]


def test_an_ejection_lasts_the_base_time_and_longer_each_time_it_recurs() -> None:
    clock = Clock()
    outliers = OutlierOptions(consecutive_failures=1, base_ejection_time=30, max_ejection_time=70)
    b = board(clock, outliers=outliers)
    out_for = []
    for _ in range(4):
        fail(b, A, 1)
        started = clock.now
        while b.is_ejected(A):
            clock.now += 1
        out_for.append(clock.now - started)
    assert out_for == [30, 60, 70, 70]  # base × ejections, at most max_ejection_time


def test_time_in_service_forgives_one_ejection_per_base_time() -> None:
    clock = Clock()
    b = board(clock, outliers=OutlierOptions(consecutive_failures=1, base_ejection_time=10))
    fail(b, A, 1)
    clock.now += 10  # back after 10 s
    assert not b.is_ejected(A)
    fail(b, A, 1)
    clock.now += 20  # back after 2 × 10 s
    assert not b.is_ejected(A)
    clock.now += 10  # one base time in service: one ejection forgiven
    fail(b, A, 1)
    clock.now += 19.9
    assert b.is_ejected(A)
    clock.now += 0.1
    assert not b.is_ejected(A)


def test_probes_that_saw_an_ejected_endpoint_fail_bring_it_back_once_it_passes_again() -> None:
    clock = Clock()
    b = board(clock, enabled=True, healthy_threshold=2, unhealthy_threshold=2)
    b.record_probe(A, ok=True)
    fail(b, A, 5)
    assert b.is_ejected(A)
    b.record_probe(A, ok=False)  # down (a crash): the probe sees it too
    b.record_probe(A, ok=True)
    assert b.is_ejected(A)  # one good probe is not healthy_threshold
    b.record_probe(A, ok=True)
    assert not b.is_ejected(A) and b.is_healthy(A)
    assert clock.now == 0  # well before base_ejection_time


def test_probes_that_never_failed_do_not_cut_an_ejection_short() -> None:
    clock = Clock()
    b = board(clock, enabled=True, outliers=OutlierOptions(base_ejection_time=30))
    b.record_probe(A, ok=True)
    fail(b, A, 5)  # e.g. 503s to real requests while /healthz says 200
    for _ in range(10):
        clock.now += 2
        b.record_probe(A, ok=True)
    assert b.is_ejected(A)
    clock.now = 30
    assert not b.is_ejected(A) and b.is_healthy(A)


def test_max_ejection_percent_keeps_endpoints_in_service_as_outliers() -> None:
    outliers = OutlierOptions(consecutive_failures=2, max_ejection_percent=50)
    b = board(Clock(), endpoints=(A, B, C, D), outliers=outliers)
    for endpoint in (A, B, C):
        fail(b, endpoint, 2)
    assert b.healthy_endpoints() == {C, D}  # 50 % of four: two ejected
    assert b.usable()  # D has not failed
    fail(b, D, 2)
    assert b.healthy_endpoints() == {C, D}
    assert not b.usable()  # C and D are in service, but both outliers


def test_one_ejection_is_allowed_whatever_the_percentage_and_zero_disables_ejection() -> None:
    few = board(Clock(), endpoints=(A, B, C), outliers=OutlierOptions(max_ejection_percent=10))
    fail(few, A, 5)
    fail(few, B, 5)
    assert few.healthy_endpoints() == {B, C}
    none = board(Clock(), outliers=OutlierOptions(max_ejection_percent=0))
    fail(none, A, 50)
    assert none.healthy_endpoints() == {A, B}
    assert none.usable()  # B still is; A is an outlier


def test_outlier_detection_never_ejects_the_last_endpoint_in_service() -> None:
    b = board(Clock(), outliers=OutlierOptions(consecutive_failures=1, max_ejection_percent=100))
    fail(b, A, 1)
    assert b.healthy_endpoints() == {B}
    fail(b, B, 10)
    assert b.healthy_endpoints() == {B}  # the circuit breaker's job from here
    assert not b.usable()
    b.record_traffic(B, ok=True)
    assert b.usable()


def test_the_healthy_set_is_reused_until_a_probe_or_an_ejection_changes_it() -> None:
    clock = Clock()
    b = board(
        clock, enabled=True, healthy_threshold=1, outliers=OutlierOptions(consecutive_failures=1)
    )
    first = b.healthy_endpoints()
    clock.now += 10
    assert b.healthy_endpoints() is first  # nothing changed: no new set per request
    b.record_probe(A, ok=False)
    assert b.healthy_endpoints() == {B}
    b.record_probe(A, ok=True)
    assert b.healthy_endpoints() == {A, B}
    fail(b, B, 1)
    assert b.healthy_endpoints() == {A}


Event = tuple[str, int, bool]  # kind (traffic, probe, wait), endpoint index, ok


@settings(max_examples=300, deadline=None)
@given(
    endpoints=st.integers(min_value=1, max_value=6),
    percent=st.integers(min_value=0, max_value=100),
    events=st.lists(
        st.tuples(
            st.sampled_from(["traffic", "probe", "wait"]),
            st.integers(min_value=0, max_value=5),
            st.booleans(),
        ),
        max_size=120,
    ),
)
def test_ejections_never_exceed_the_cap_nor_empty_the_service(
    endpoints: int, percent: int, events: list[Event]
) -> None:
    names = tuple(f"http://e{i}" for i in range(endpoints))
    clock = Clock()
    outliers = OutlierOptions(
        consecutive_failures=2, base_ejection_time=5, max_ejection_percent=percent
    )
    b = board(clock, endpoints=names, outliers=outliers, enabled=True, unhealthy_threshold=1)
    allowed = 0 if percent == 0 else max(1, endpoints * percent // 100)
    for kind, index, ok in events:
        endpoint = names[index % endpoints]
        if kind == "traffic":
            in_service_before = b.healthy_endpoints()
            b.record_traffic(endpoint, ok=ok)
            in_service = b.healthy_endpoints()
            # Traffic alone never takes out the last endpoint in service.
            assert in_service or not in_service_before
        elif kind == "probe":
            b.record_probe(endpoint, ok=ok)
        else:
            clock.now += 3
        assert sum(b.is_ejected(e) for e in names) <= allowed


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


def ejected_gauge(backend: str, endpoint: str) -> float | None:
    return REGISTRY.get_sample_value(
        "gatehouse_upstream_ejected", {"backend": backend, "endpoint": endpoint}
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
        outlier_detection=OutlierOptions(consecutive_failures=2, base_ejection_time=10.0)
    )
    pool = EndpointPool([bad, url_two], options, name="health-passive", clock=clock)
    try:
        async with aiohttp.ClientSession() as session:
            statuses = await get_statuses(pool, session, "/work", times=8)
            # Each 503 is retried on the other endpoint; after two the bad one is out.
            assert statuses == [200] * 8
            assert not pool.board.is_healthy(bad)
            assert gauge("health-passive", bad) == 0.0
            assert ejected_gauge("health-passive", bad) == 1.0
            assert two.traffic == 8
            clock.now += 10.0
            assert pool.board.is_healthy(bad)
            assert ejected_gauge("health-passive", bad) == 0.0
            assert one.traffic == 0
    finally:
        await runner.cleanup()
