"""Retries: only when repeating cannot hurt, with jittered backoff and a budget.

The pure policy is pinned first; then the same decisions for real, through a
small front server that forwards exactly as the gateway is told to
(``EndpointPool.send`` around ``forward.send``, then ``relay``), to upstreams
on loopback that reset connections, refuse them, or answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import REGISTRY

from proxy.config.schema import BackendConfig
from proxy.errors import Failure, GatehouseError, UpstreamConnectError
from proxy.http.config import Address, ListenConfig
from proxy.http.protocol import HttpServer, Request, Written
from proxy.http.server import bind_socket, start_listener
from proxy.upstream.circuit import CircuitState
from proxy.upstream.client import UpstreamClient, UpstreamResponse
from proxy.upstream.config import (
    RETRY_ON,
    BackendOptions,
    CircuitOptions,
    OutlierOptions,
    RetryOptions,
    Timeouts,
)
from proxy.upstream.forward import relay, send
from proxy.upstream.pool import EndpointPool
from proxy.upstream.retry import (
    IDEMPOTENT_METHODS,
    RetryBudget,
    should_retry,
    status_failure,
)
from proxy.upstream.tally import ExchangeTally

ALL_FAILURES = tuple(Failure)
EVERYTHING = RetryOptions(attempts=5, retry_on=frozenset(RETRY_ON))


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


# -- the policy -----------------------------------------------------------------


@pytest.mark.parametrize("failure", ALL_FAILURES)
def test_a_post_that_reached_the_upstream_is_never_retried(failure: Failure) -> None:
    for method in ("POST", "PATCH", "post", "CONNECT", "PROPFIND"):
        assert not should_retry(EVERYTHING, method, 1, failure, True, True)


def test_idempotent_methods_are_retried_after_a_reset() -> None:
    options = RetryOptions(attempts=3)
    for method in IDEMPOTENT_METHODS:
        assert should_retry(options, method, 1, Failure.RESET, True, True)
        assert should_retry(options, method, 2, Failure.STATUS_503, True, True)


def test_any_method_is_retried_when_the_request_never_reached_the_upstream() -> None:
    options = RetryOptions(attempts=2)
    for method in ("POST", "PATCH", "GET"):
        assert should_retry(options, method, 1, Failure.CONNECT_ERROR, False, True)


def test_a_body_that_was_already_read_is_never_replayed() -> None:
    assert not should_retry(EVERYTHING, "PUT", 1, Failure.RESET, True, False)
    assert not should_retry(EVERYTHING, "POST", 1, Failure.CONNECT_ERROR, False, False)


def test_attempts_count_the_first_try() -> None:
    options = RetryOptions(attempts=3)
    assert should_retry(options, "GET", 2, Failure.RESET, True, True)
    assert not should_retry(options, "GET", 3, Failure.RESET, True, True)
    assert not should_retry(RetryOptions(attempts=1), "GET", 1, Failure.CONNECT_ERROR, False, True)


def test_only_failures_listed_in_retry_on_are_retried() -> None:
    default = RetryOptions(attempts=3)
    assert not should_retry(default, "GET", 1, Failure.TIMEOUT, True, True)
    assert not should_retry(default, "GET", 1, Failure.STATUS_504, True, True)
    assert not should_retry(EVERYTHING, "GET", 1, Failure.PROTOCOL, True, True)
    only_connect = RetryOptions(attempts=3, retry_on=frozenset({"connect_error"}))
    assert not should_retry(only_connect, "GET", 1, Failure.RESET, True, True)


def test_only_gateway_statuses_count_as_failures() -> None:
    assert [status_failure(s) for s in (502, 503, 504)] == [
        Failure.STATUS_502,
        Failure.STATUS_503,
        Failure.STATUS_504,
    ]
    assert [status_failure(s) for s in (200, 404, 500, 501, 505)] == [None] * 5


def test_the_budget_allows_a_floor_plus_a_ratio_of_requests() -> None:
    clock = Clock()
    budget = RetryBudget(ratio=0.2, window=10.0, min_retries=2, clock=clock)
    assert [budget.try_spend() for _ in range(3)] == [True, True, False]
    for _ in range(10):
        budget.record_request()
    assert [budget.try_spend() for _ in range(3)] == [True, True, False]  # 2 + 0.2 × 10 = 4


def test_the_budget_refills_as_the_window_slides() -> None:
    clock = Clock()
    budget = RetryBudget(ratio=0.0, window=10.0, min_retries=1, clock=clock)
    assert budget.try_spend()
    assert not budget.try_spend()
    clock.now += 9.0
    assert not budget.try_spend()
    clock.now += 1.0
    assert budget.try_spend()


def test_requests_older_than_the_window_stop_funding_retries() -> None:
    clock = Clock()
    budget = RetryBudget(ratio=0.5, window=10.0, min_retries=0, clock=clock)
    for _ in range(4):
        budget.record_request()
    clock.now += 10.0
    assert not budget.try_spend()


# -- for real ---------------------------------------------------------------------


class ResettingUpstream:
    """Reads each request completely (headers and declared body), then resets the connection."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if length:
                await reader.readexactly(length)
            self.requests.append(head.split(b"\r\n", 1)[0])
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.transport.abort()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"


class EchoUpstream:
    def __init__(self) -> None:
        self.requests: list[tuple[str, int, str]] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        digest = hashlib.sha256(body).hexdigest()
        self.requests.append((request.method, len(body), digest))
        return web.json_response({"sha256": digest})


async def start_app(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


Front = Callable[[EndpointPool], Awaitable[str]]


@pytest.fixture
async def front() -> AsyncIterator[Front]:
    """Start a front server (the proxy's own listener) that forwards through a given pool,
    exactly as the gateway should."""
    listeners: list[asyncio.Server] = []
    client = UpstreamClient()

    async def start(pool: EndpointPool) -> str:
        backend = BackendConfig("b", pool.urls, Timeouts(connect=1.0, read=2.0, total=3.0))

        async def handle(request: Request) -> web.StreamResponse | Written:
            tally = ExchangeTally()

            async def attempt(endpoint: str, remaining: float | None) -> UpstreamResponse:
                return await send(
                    client,
                    request,
                    backend=backend,
                    base_url=endpoint,
                    method=request.method,
                    path_qs=request.raw_path,
                    headers=[],
                    max_body=2**24,
                    deadline=remaining,
                    tally=tally,
                )

            try:
                exchange = await pool.send(
                    request.method,
                    attempt,
                    body_replayable=lambda: tally.bytes_in == 0,
                    deadline=backend.timeouts.total,
                )
            except GatehouseError as exc:
                return web.Response(status=exc.status, text=exc.reason)
            try:
                return await relay(request, exchange.response, tally, "test")
            finally:
                exchange.release()

        listen = ListenConfig(Address("127.0.0.1", 0), max_body=2**24)
        sock = bind_socket(listen.address, reuse_port=False, backlog=64)
        listeners.append(await start_listener(HttpServer(handle, listen, None), sock, None))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"

    yield start
    for listener in listeners:
        listener.close()
    await client.close()


@pytest.fixture
async def resetting() -> AsyncIterator[tuple[ResettingUpstream, str]]:
    upstream = ResettingUpstream()
    url = await upstream.start()
    yield upstream, url
    assert upstream.server is not None
    upstream.server.close()
    await upstream.server.wait_closed()


@pytest.fixture
async def echo() -> AsyncIterator[tuple[EchoUpstream, str]]:
    upstream = EchoUpstream()
    app = web.Application(client_max_size=2**24)
    app.router.add_route("*", "/{tail:.*}", upstream.handle)
    runner, url = await start_app(app)
    yield upstream, url
    await runner.cleanup()


def options(attempts: int = 3, **retry: object) -> BackendOptions:
    # Ejection and the circuit stay out of the way: these tests are about retries.
    return BackendOptions(
        outlier_detection=OutlierOptions(max_ejection_percent=0),
        retries=RetryOptions(attempts=attempts, backoff_base=0.001, backoff_max=0.002, **retry),  # type: ignore[arg-type]
        circuit_breaker=CircuitOptions(enabled=False),
    )


async def call(url: str, method: str, data: bytes | None = None) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.request(method, url + "/x", data=data) as r:
        return r.status, await r.text()


async def test_a_post_that_reached_the_upstream_is_sent_exactly_once(
    front: Front, resetting: tuple[ResettingUpstream, str], echo: tuple[EchoUpstream, str]
) -> None:
    upstream, url = resetting
    pool = EndpointPool([url, echo[1]], options(), name="retry-post")
    status, _ = await call(await front(pool), "POST", b"pay once")
    assert status == 502
    assert upstream.requests == [b"POST /x HTTP/1.1"]
    assert echo[0].requests == []  # not even "retried elsewhere"


async def test_a_get_reset_by_one_endpoint_is_retried_on_another(
    front: Front, resetting: tuple[ResettingUpstream, str], echo: tuple[EchoUpstream, str]
) -> None:
    upstream, url = resetting
    pool = EndpointPool([url, echo[1]], options(), name="retry-get")
    status, _ = await call(await front(pool), "GET")
    assert status == 200
    assert upstream.requests == [b"GET /x HTTP/1.1"]
    assert echo[0].requests == [("GET", 0, hashlib.sha256(b"").hexdigest())]


async def test_a_put_whose_body_was_already_streamed_is_not_replayed(
    front: Front, resetting: tuple[ResettingUpstream, str], echo: tuple[EchoUpstream, str]
) -> None:
    upstream, url = resetting
    pool = EndpointPool([url, echo[1]], options(), name="retry-put")
    status, _ = await call(await front(pool), "PUT", os.urandom(100_000))
    assert status == 502
    assert len(upstream.requests) == 1
    assert echo[0].requests == []


async def test_a_post_refused_at_connect_is_retried_and_arrives_once_with_its_body(
    front: Front, echo: tuple[EchoUpstream, str], refused_url: Callable[[], str]
) -> None:
    dead = refused_url()
    pool = EndpointPool([dead, echo[1]], options(), name="retry-refused")
    body = os.urandom(300_000)
    status, text = await call(await front(pool), "POST", body)
    assert status == 200, text
    assert echo[0].requests == [("POST", len(body), hashlib.sha256(body).hexdigest())]


async def test_retries_stop_when_every_attempt_fails(
    front: Front, resetting: tuple[ResettingUpstream, str]
) -> None:
    upstream, url = resetting
    pool = EndpointPool([url], options(attempts=3), name="retry-limit")
    status, _ = await call(await front(pool), "GET")
    assert status == 502
    assert len(upstream.requests) == 3


async def test_the_retry_budget_keeps_retries_from_multiplying_an_outage(
    front: Front, resetting: tuple[ResettingUpstream, str]
) -> None:
    upstream, url = resetting
    pool = EndpointPool(
        [url], options(attempts=3, budget_ratio=0.0, budget_min_retries=2), name="retry-budget"
    )
    entry = await front(pool)
    statuses = [(await call(entry, "GET"))[0] for _ in range(10)]
    assert statuses == [502] * 10
    assert len(upstream.requests) == 10 + 2  # not 10 × 3
    assert pool.circuit.state is CircuitState.CLOSED  # disabled here


async def test_a_503_answer_to_a_get_is_retried_but_returned_when_retries_run_out(
    front: Front,
) -> None:
    hits: list[str] = []

    async def unavailable(request: web.Request) -> web.Response:
        hits.append(request.method)
        return web.Response(status=503, text="busy")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", unavailable)
    runner, url = await start_app(app)
    try:
        pool = EndpointPool([url], options(attempts=2), name="retry-503")
        entry = await front(pool)
        assert await call(entry, "GET") == (503, "busy")
        assert await call(entry, "POST", b"x") == (503, "busy")
        assert hits == ["GET", "GET", "POST"]
    finally:
        await runner.cleanup()


async def test_no_retry_starts_that_could_not_finish_before_the_deadline(
    refused_url: Callable[[], str],
) -> None:
    dead = refused_url()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    tries: list[str] = []
    async with aiohttp.ClientSession() as session:

        async def attempt(endpoint: str, _remaining: float | None) -> aiohttp.ClientResponse:
            tries.append(endpoint)
            try:
                return await session.get(endpoint + "/")
            except aiohttp.ClientConnectorError:
                raise UpstreamConnectError(detail="refused") from None

        slow_backoff = BackendOptions(
            retries=RetryOptions(attempts=5, backoff_base=10.0, backoff_max=10.0),
            circuit_breaker=CircuitOptions(enabled=False),
        )
        # rng.random() is never 0 here: the delay is a real, long backoff.
        pool = EndpointPool([dead], slow_backoff, sleep=sleep, rng=random.Random(3))
        with pytest.raises(UpstreamConnectError):
            await pool.send("GET", attempt, deadline=1.0)
        assert tries == [dead] and slept == []

        pool = EndpointPool([dead], options(attempts=5), sleep=sleep, rng=random.Random(3))
        with pytest.raises(UpstreamConnectError):
            await pool.send("GET", attempt, deadline=1.0)
        assert len(tries) == 1 + 5 and len(slept) == 4
        assert all(0 <= s < 0.002 for s in slept)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_each_retry_is_counted_by_how_the_failed_attempt_ended(
    front: Front,
    resetting: tuple[ResettingUpstream, str],
    echo: tuple[EchoUpstream, str],
    refused_url: Callable[[], str],
) -> None:
    dead = refused_url()
    for first, backend in ((resetting[1], "retry-count-reset"), (dead, "retry-count-refused")):
        pool = EndpointPool([first, echo[1]], options(), name=backend)
        assert (await call(await front(pool), "GET"))[0] == 200
    retries = "gatehouse_upstream_retries_total"
    assert sample(retries, backend="retry-count-reset", reason="reset") == 1
    assert sample(retries, backend="retry-count-refused", reason="connect_error") == 1
    assert sample(retries, backend="retry-count-refused", reason="reset") == 0
    assert len(echo[0].requests) == 2


async def test_every_5xx_answer_passed_back_counts_as_an_upstream_error_even_for_a_post(
    front: Front,
) -> None:
    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["status"]), text="no")

    app = web.Application()
    app.router.add_route("*", "/{status}", broken)
    runner, url = await start_app(app)
    try:
        pool = EndpointPool([url], options(attempts=1), name="retry-5xx")
        entry = await front(pool)
        async with aiohttp.ClientSession() as s:
            for method, status in (("POST", 500), ("GET", 503), ("PUT", 404)):
                async with s.request(method, f"{entry}/{status}") as r:
                    assert r.status == status
        errors = "gatehouse_upstream_errors_total"
        assert sample(errors, backend="retry-5xx", kind="upstream_status_500") == 1
        assert sample(errors, backend="retry-5xx", kind="upstream_status_503") == 1
        assert sample(errors, backend="retry-5xx", kind="upstream_status_404") == 0
    finally:
        await runner.cleanup()
