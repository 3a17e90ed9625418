"""Endpoint selection: round robin and least request over healthy endpoints, failing closed."""

from __future__ import annotations

import asyncio
import collections
import random
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from proxy.errors import UpstreamConnectError
from proxy.upstream.balancer import Balancer
from proxy.upstream.config import BackendOptions, HealthCheckOptions, OutlierOptions
from proxy.upstream.health import HealthBoard
from proxy.upstream.pool import EndpointPool

A, B, C, D = "http://a", "http://b", "http://c", "http://d"


def test_round_robin_takes_every_endpoint_in_turn() -> None:
    balancer = Balancer([A, B, C])
    healthy = {A, B, C}
    assert [balancer.pick(healthy) for _ in range(6)] == [A, B, C, A, B, C]


def test_round_robin_skips_unhealthy_endpoints() -> None:
    balancer = Balancer([A, B, C])
    picks = [balancer.pick({A, C}) for _ in range(6)]
    assert B not in picks
    assert collections.Counter(picks) == {A: 3, C: 3}


def test_no_healthy_endpoint_means_no_pick() -> None:
    assert Balancer([A, B]).pick(set()) is None
    assert Balancer([A, B], "least_request").pick(set()) is None


def test_the_pool_fails_closed_when_no_endpoint_is_healthy() -> None:
    clock = lambda: 0.0  # noqa: E731
    pool = EndpointPool(
        [A], BackendOptions(health_check=HealthCheckOptions(enabled=True)), clock=clock
    )
    pool.board.record_probe(A, ok=False)
    with pytest.raises(UpstreamConnectError) as err:
        pool.pick()
    assert (err.value.status, err.value.reason) == (502, "no_healthy_upstream")


def test_a_retry_avoids_endpoints_already_tried_unless_nothing_else_is_healthy() -> None:
    balancer = Balancer([A, B, C])
    assert all(balancer.pick({A, B, C}, exclude={A, B}) == C for _ in range(5))
    assert balancer.pick({A}, exclude={A}) == A


def test_least_request_between_two_takes_the_one_with_fewer_in_flight() -> None:
    balancer = Balancer([A, B], "least_request", random.Random(7))
    balancer.acquire(A)
    assert all(balancer.pick({A, B}) == B for _ in range(20))
    balancer.acquire(B)
    balancer.acquire(B)
    assert all(balancer.pick({A, B}) == A for _ in range(20))


def test_least_request_never_picks_the_single_most_loaded_endpoint() -> None:
    balancer = Balancer([A, B, C, D], "least_request", random.Random(1))
    for endpoint, load in ((A, 0), (B, 1), (C, 2), (D, 3)):
        for _ in range(load):
            balancer.acquire(endpoint)
    picks = collections.Counter(balancer.pick({A, B, C, D}) for _ in range(2000))
    assert picks[D] == 0
    assert picks[A] > picks[B] > picks[C] > 0


def test_release_balances_acquire_and_never_goes_negative() -> None:
    balancer = Balancer([A])
    balancer.acquire(A)
    balancer.acquire(A)
    balancer.release(A)
    assert balancer.inflight(A) == 1
    balancer.release(A)
    balancer.release(A)
    assert balancer.inflight(A) == 0


def test_a_board_verdict_changes_what_the_pool_picks() -> None:
    now = [0.0]
    options = BackendOptions(
        outlier_detection=OutlierOptions(consecutive_failures=2, base_ejection_time=5)
    )
    pool = EndpointPool([A, B], options, clock=lambda: now[0])
    board: HealthBoard = pool.board
    board.record_traffic(A, ok=False)
    board.record_traffic(A, ok=False)
    assert {pool.pick() for _ in range(4)} == {B}
    now[0] = 5.0
    assert {pool.pick() for _ in range(4)} == {A, B}


# -- for real: a slow and a fast upstream ----------------------------------------


@pytest.fixture
async def slow_and_fast() -> AsyncIterator[tuple[str, str, collections.Counter[str]]]:
    hits: collections.Counter[str] = collections.Counter()

    def app(name: str, delay: float) -> web.Application:
        async def handle(_request: web.Request) -> web.Response:
            hits[name] += 1
            await asyncio.sleep(delay)
            return web.Response(text=name)

        application = web.Application()
        application.router.add_get("/", handle)
        return application

    runners = []
    urls = []
    for name, delay in (("slow", 0.2), ("fast", 0.002)):
        runner = web.AppRunner(app(name, delay), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        urls.append(f"http://127.0.0.1:{runner.addresses[0][1]}")
    yield urls[0], urls[1], hits
    for runner in runners:
        await runner.cleanup()


async def drive(pool: EndpointPool, workers: int, seconds: float) -> None:
    """``workers`` callers, each sending one request after another, for ``seconds``."""
    async with aiohttp.ClientSession() as session:

        async def attempt(endpoint: str, _remaining: float | None) -> aiohttp.ClientResponse:
            return await session.get(endpoint + "/")

        async def worker() -> None:
            loop = asyncio.get_running_loop()
            stop = loop.time() + seconds
            while loop.time() < stop:
                exchange = await pool.send("GET", attempt)
                try:
                    await exchange.response.read()
                finally:
                    exchange.response.release()
                    exchange.release()

        await asyncio.gather(*(worker() for _ in range(workers)))


async def test_least_request_sends_most_traffic_to_the_less_loaded_endpoint(
    slow_and_fast: tuple[str, str, collections.Counter[str]],
) -> None:
    slow, fast, hits = slow_and_fast
    await drive(EndpointPool([slow, fast], BackendOptions(load_balancing="least_request")), 4, 0.6)
    assert hits["fast"] >= 10 * hits["slow"], hits
    assert hits["slow"] >= 1  # a pick, not a blacklist

    # The same load, round robin: the slow endpoint takes its share, so the
    # difference above is the balancer's doing.
    hits.clear()
    await drive(EndpointPool([slow, fast], BackendOptions(load_balancing="round_robin")), 4, 0.6)
    assert abs(hits["fast"] - hits["slow"]) <= 4, hits


def test_a_healthy_set_changed_in_place_between_picks_is_read_afresh() -> None:
    balancer = Balancer([A, B, C])
    healthy = {A, B, C}
    balancer.pick(healthy)
    healthy.discard(A)
    assert A not in {balancer.pick(healthy) for _ in range(6)}
    frozen = frozenset({A, C})
    assert {balancer.pick(frozen) for _ in range(4)} == {A, C}
    assert {balancer.pick(frozenset({B})) for _ in range(3)} == {B}
