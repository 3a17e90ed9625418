"""The endpoints of one backend, and sending a request to one of them with retries.

:class:`EndpointPool` puts the pure pieces together: the circuit breaker
decides whether to try at all, the health board which endpoints may take
traffic (active checks and outlier ejection), the balancer which of them
does, the retry policy and budget whether a failed attempt is repeated, on
an endpoint not tried yet for this request. Every attempt's outcome goes to
the board first, then to the breaker with the board's verdict on whether any
endpoint is still usable. The forwarder stays in charge of one attempt; this
module never touches request or response bodies.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import aiohttp

from proxy.errors import Failure, Reason, UpstreamConnectError, UpstreamError, upstream_status
from proxy.observability import metrics
from proxy.outbound import backoff_delay
from proxy.upstream.balancer import Balancer
from proxy.upstream.circuit import CircuitBreaker, CircuitState, Outcome, Permit
from proxy.upstream.client import ClientFailure
from proxy.upstream.config import BackendOptions
from proxy.upstream.health import HealthBoard, HealthChecker, publish_gauges
from proxy.upstream.retry import (
    RetryBudget,
    should_retry,
    status_failure,
)
from proxy.upstream.tls import UpstreamTLS, reload_files, upstream_tls

log = logging.getLogger("gatehouse.upstream")


class Answer(Protocol):
    """What an attempt returns: a response whose head has arrived."""

    @property
    def status(self) -> int: ...

    def release(self) -> Any: ...


A = TypeVar("A", bound=Answer)

# One attempt: send to this endpoint (base URL) within ``remaining`` seconds
# (None = the backend's own timeouts), return once response headers arrived.
Attempt = Callable[[str, float | None], Awaitable[A]]

_BUDGET_LOG_EVERY = 10.0
# gatehouse_upstream_circuit_state's values: rising with how much is refused.
CIRCUIT_GAUGE = {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2}


def classify(exc: BaseException) -> tuple[Failure, bool]:
    """The failure an attempt ended with, and whether the request may have reached the upstream.

    The forwarder raises an :class:`UpstreamError` that carries both as
    fields (``from`` the client's own exception). Anything not provably
    "before sending" counts as reached: unknown means unsafe to repeat.
    (aiohttp's exceptions are understood too: health checks use its client.)
    """
    if isinstance(exc, UpstreamError) and exc.failure is not None:
        return exc.failure, exc.reached
    if isinstance(exc, ClientFailure):
        return exc.failure, exc.reached
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        # Covers refused, unreachable, DNS, TLS handshake and certificate
        # failures, and sock_connect timeouts: no request byte was written.
        return Failure.CONNECT_ERROR, False
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return Failure.TIMEOUT, True
    if isinstance(exc, aiohttp.ClientResponseError | aiohttp.ClientPayloadError):
        return Failure.PROTOCOL, True
    return Failure.RESET, True


@dataclass(slots=True)
class Exchange(Generic[A]):
    """A response from one endpoint; call :meth:`release` once it has been relayed."""

    response: A
    endpoint: str
    attempts: int
    _release: Callable[[], None] = field(repr=False)
    _released: bool = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._release()


class EndpointPool:
    """One backend's endpoints with health, balancing, circuit breaking and retries.

    ``EndpointPool(urls).pick()`` keeps working for callers that only need an
    endpoint (the websocket path).
    """

    def __init__(
        self,
        urls: Sequence[str],
        options: BackendOptions | None = None,
        *,
        name: str = "",
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not urls:
            raise ValueError("a backend needs at least one endpoint")
        self.urls = tuple(urls)
        self.name = name
        self.options = options or BackendOptions()
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 (jitter, not security)
        self._sleep = sleep
        opts = self.options
        for note in opts.notes:
            log.warning("%s", note)
        self.tls: UpstreamTLS | None = None
        if any(u.startswith("https:") for u in self.urls):
            self.tls = upstream_tls(opts.tls, name)
        self.board = HealthBoard(
            self.urls,
            opts.health_check,
            clock,
            on_change=publish_gauges(name) if name else None,
            outliers=opts.outlier_detection,
            name=name,
        )
        self.balancer = Balancer(self.urls, opts.load_balancing, self._rng)
        self.circuit = CircuitBreaker(
            opts.circuit_breaker, clock, on_change=self._publish_circuit if name else None
        )
        self.budget = RetryBudget.from_options(opts.retries, clock)
        # A set lookup on every answer rather than a walk over the ranges.
        self._failure_status = frozenset(
            status
            for lo, hi in opts.outlier_detection.failure_status
            for status in range(lo, hi + 1)
        )
        self._budget_logged = -_BUDGET_LOG_EVERY
        self.checker: HealthChecker | None = None
        if opts.health_check.enabled:
            self.checker = HealthChecker(name, self.urls, opts.health_check, self.board, self.tls)

    # -- lifecycle ---------------------------------------------------------
    async def start(self) -> None:
        """Publish the initial verdicts and start active health checks (if configured)."""
        if self.name:
            for url in self.urls:
                metrics.child(metrics.UPSTREAM_HEALTHY, self.name, url).set(
                    1 if self.board.is_healthy(url) else 0
                )
                metrics.child(metrics.UPSTREAM_EJECTED, self.name, url).set(
                    1 if self.board.is_ejected(url) else 0
                )
            self._publish_circuit(self.circuit.state)
        if self.checker is not None:
            await self.checker.start()

    async def close(self) -> None:
        if self.checker is not None:
            await self.checker.close()

    def reload_tls(self) -> bool:
        """Re-read the backend's CA bundle and client certificate (call on SIGHUP)."""
        if self.tls is None:
            return True
        return reload_files(self.tls.context, self.options.tls, self.name)

    def _publish_circuit(self, state: CircuitState) -> None:
        metrics.child(metrics.UPSTREAM_CIRCUIT_STATE, self.name).set(CIRCUIT_GAUGE[state])
        if state is CircuitState.OPEN:
            log.warning(
                "backend %s: no endpoint is usable, circuit open for %gs",
                self.name,
                self.options.circuit_breaker.open_for,
            )

    def ready(self) -> bool:
        """At least one endpoint may take traffic and the circuit is not open."""
        return bool(self.board.healthy_endpoints()) and self.circuit.state is not CircuitState.OPEN

    # -- selection -------------------------------------------------------------
    @property
    def ssl(self) -> ssl.SSLContext | bool:
        """What to pass as aiohttp's ``ssl=`` (the backend's context, or the default)."""
        return self.tls.context if self.tls is not None else True

    @property
    def server_hostname(self) -> str | None:
        return self.tls.server_hostname if self.tls is not None else None

    def pick(self, exclude: Sequence[str] = ()) -> str:
        endpoint = self.balancer.pick(self.board.healthy_endpoints(), exclude)
        if endpoint is None:
            raise UpstreamConnectError(Reason.NO_HEALTHY_UPSTREAM, detail=f"backend {self.name}")
        return endpoint

    # -- sending ---------------------------------------------------------------
    def _admit(self) -> Permit:
        permit = self.circuit.admit()
        if permit is None:
            # 502 like every other "the upstream cannot be had" outcome; the
            # reason tells the operator it was the circuit, not a fresh connect.
            raise UpstreamConnectError(
                Reason.UPSTREAM_CIRCUIT_OPEN,
                detail=f"backend {self.name}: retry in {self.circuit.retry_after():.1f}s",
            )
        return permit

    async def send(
        self,
        method: str,
        attempt: Attempt[A],
        *,
        body_replayable: Callable[[], bool] = lambda: True,
        deadline: float | None = None,
    ) -> Exchange[A]:
        """Send via ``attempt``, retrying where :func:`should_retry` and the budget allow.

        A retry goes to an endpoint this request has not tried yet when there
        is one. Raises the last attempt's error, or ``UpstreamConnectError``
        (502) with reason ``upstream_circuit_open`` when the circuit is open
        (nothing is sent) or ``no_healthy_upstream`` when no endpoint may take
        traffic. A 5xx answer that is not retried is returned like any other.
        """
        started = self._clock()
        self.budget.record_request()
        tried: list[str] = []
        number = 0
        while True:
            number += 1
            permit = self._admit()
            try:
                endpoint = self.pick(tried)
            except UpstreamConnectError:
                self.circuit.record(permit, Outcome.ABANDONED)
                raise
            tried.append(endpoint)
            remaining = None if deadline is None else deadline - (self._clock() - started)
            self.balancer.acquire(endpoint)
            try:
                response = await attempt(endpoint, remaining)
            except UpstreamError as exc:
                self.balancer.release(endpoint)
                failure, reached = classify(exc)
                self._failed(endpoint, permit, failure.value)
                delay = self._retry_delay(
                    method, number, failure, reached, body_replayable, deadline, started
                )
                if delay is None:
                    raise  # counted in gatehouse_upstream_errors_total by the gateway
                self._count_retry(endpoint, method, number, failure, exc.reason)
                await self._sleep(delay)
                continue
            except BaseException:
                # Not the upstream's fault (body too large, client gone, cancelled).
                self.balancer.release(endpoint)
                self.circuit.record(permit, Outcome.ABANDONED)
                raise
            status = response.status
            if status in self._failure_status:
                self._failed(endpoint, permit, f"status {status}")
            else:
                self.board.record_traffic(endpoint, ok=True)
                self.circuit.record(permit, Outcome.SUCCESS)
            retryable = status_failure(status)
            if retryable is not None:
                delay = self._retry_delay(
                    method, number, retryable, True, body_replayable, deadline, started
                )
                if delay is not None:
                    response.release()
                    self.balancer.release(endpoint)
                    self._count_retry(endpoint, method, number, retryable, upstream_status(status))
                    await self._sleep(delay)
                    continue
            if status >= 500 and self.name:
                # Passed back to the caller (not retried): still the upstream failing.
                metrics.child(metrics.UPSTREAM_ERRORS, self.name, upstream_status(status)).inc()
            return Exchange(
                response, endpoint, number, functools.partial(self.balancer.release, endpoint)
            )

    def _failed(self, endpoint: str, permit: Permit, cause: str) -> None:
        """One attempt failed: the endpoint's record first, then the backend's."""
        self.board.record_traffic(endpoint, ok=False, cause=cause)
        self.circuit.record(permit, Outcome.FAILURE, backend_usable=self.board.usable())

    def _count_retry(
        self, endpoint: str, method: str, number: int, failure: Failure, kind: str
    ) -> None:
        log.debug(
            "backend %s: retrying %s after %s from %s (attempt %d)",
            self.name, method, failure.value, endpoint, number,
        )  # fmt: skip
        if self.name:
            metrics.child(metrics.UPSTREAM_ERRORS, self.name, kind).inc()
            metrics.child(metrics.UPSTREAM_RETRIES, self.name, failure.value).inc()

    def _retry_delay(
        self,
        method: str,
        number: int,
        failure: Failure,
        reached: bool,
        body_replayable: Callable[[], bool],
        deadline: float | None,
        started: float,
    ) -> float | None:
        """The backoff before retrying attempt ``number``, or None: no retry."""
        retries = self.options.retries
        if not should_retry(retries, method, number, failure, reached, body_replayable()):
            return None
        if self.circuit.state is not CircuitState.CLOSED:
            # Probe slots are for fresh requests; a retry would only turn the
            # real error into "circuit open".
            return None
        delay = backoff_delay(number, retries.backoff_base, retries.backoff_max, self._rng.random())
        if deadline is not None and self._clock() - started + delay >= deadline:
            return None
        if not self.budget.try_spend():
            now = self._clock()
            if now - self._budget_logged >= _BUDGET_LOG_EVERY:
                # Once in a while, not once per request, during an outage.
                self._budget_logged = now
                log.warning("backend %s: retry budget exhausted, not retrying", self.name)
            return None
        return delay
