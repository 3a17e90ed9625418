"""Which endpoints of a backend take traffic: active probes plus what real traffic shows.

Active: every ``interval`` each endpoint gets ``GET <path>`` on a fresh
connection; ``unhealthy_threshold`` failed probes in a row take it out,
``healthy_threshold`` good ones bring it back. The very first probe decides
at once, so a dead endpoint at start-up is out after one probe, not N.

Passive (outlier detection, as Envoy's): ``consecutive_failures`` failed
attempts in a row from real traffic (connect failures, resets, timeouts,
malformed answers, answers in ``failure_status``) make an endpoint an
*outlier*, and an outlier is *ejected* at once, no waiting for a probe:

* for ``base_ejection_time`` × the number of times it was ejected lately
  (at most ``max_ejection_time``); the count drops by one for every
  ``base_ejection_time`` spent in service, so a flapping endpoint stays out
  longer each time and a long-stable one starts again from the base;
* it returns when that time is over, or earlier when active probes saw it
  fail during the ejection and then pass ``healthy_threshold`` times in a
  row (an endpoint that crashed and came back). Probes that never failed
  prove nothing about what real traffic saw, so they do not cut it short;
* at most ``max_ejection_percent`` of the endpoints are ejected at a time
  (at least one when the percentage is above 0), and never the last endpoint
  in service. An outlier kept in service that way still takes traffic.

An endpoint is *usable* when it is in service and not an outlier. The
backend's circuit breaker opens only when no endpoint is usable.

:class:`HealthBoard` is the pure state (injected clock, no I/O);
:class:`HealthChecker` does the probing. ``gatehouse_upstream_healthy`` (in
service) and ``gatehouse_upstream_ejected`` are published per endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from proxy.observability import metrics
from proxy.upstream.client import (
    ClientFailure,
    ConnectTimeout,
    ResponseTimeout,
    UpstreamClient,
    parse_origin,
)
from proxy.upstream.config import HealthCheckOptions, OutlierOptions, StatusRanges
from proxy.upstream.tls import UpstreamTLS

log = logging.getLogger("gatehouse.upstream.health")

_PROBE_HEADERS = (("User-Agent", "gatehouse-health-check"),)

# (endpoint, in service, ejected): called when either changes.
ChangeListener = Callable[[str, bool, bool], None]


@dataclass(slots=True)
class _Endpoint:
    # -- active checks
    active_ok: bool = True
    probed: bool = False
    probe_successes: int = 0  # in a row
    probe_failures: int = 0  # in a row
    # -- outlier detection
    consecutive: int = 0  # failed attempts in a row from real traffic
    ejected_until: float = 0.0  # 0: not ejected
    ejections: int = 0  # the multiplier of the next ejection time (before decay)
    returned_at: float = 0.0  # when the last ejection ended
    probe_failed_while_ejected: bool = False
    # -- last published verdicts
    in_service: bool = True
    ejected: bool = False


class HealthBoard:
    """Health and outlier verdicts for one backend's endpoints."""

    def __init__(
        self,
        endpoints: Sequence[str],
        options: HealthCheckOptions,
        clock: Callable[[], float],
        on_change: ChangeListener | None = None,
        outliers: OutlierOptions | None = None,
        name: str = "",
    ) -> None:
        self.options = options
        self.outliers = outliers or OutlierOptions()
        self.name = name
        self._clock = clock
        self._on_change = on_change
        self._state = {e: _Endpoint() for e in endpoints}
        # The in-service set, asked for on every request, changes only on a probe,
        # an ejection, or when an ejection runs out: kept until one of those.
        self._healthy: frozenset[str] | None = None
        self._healthy_until = 0.0

    # -- verdicts --------------------------------------------------------------
    def _settle(self, endpoint: str, state: _Endpoint, now: float) -> bool:
        """End an ejection whose time is over; publish changed verdicts; in service?"""
        if state.ejected_until and now >= state.ejected_until:
            self._end_ejection(state, now)
        ejected = state.ejected_until > 0.0
        in_service = state.active_ok and not ejected
        if in_service != state.in_service or ejected != state.ejected:
            self._healthy = None
            if in_service != state.in_service:
                log.warning(
                    "backend %s: endpoint %s is now %s",
                    self.name,
                    endpoint,
                    "in service" if in_service else "OUT OF SERVICE",
                )
            state.in_service, state.ejected = in_service, ejected
            if self._on_change is not None:
                self._on_change(endpoint, in_service, ejected)
        return in_service

    def is_healthy(self, endpoint: str) -> bool:
        """In service: passing its active checks (if any) and not ejected."""
        return self._settle(endpoint, self._state[endpoint], self._clock())

    def is_ejected(self, endpoint: str) -> bool:
        state = self._state[endpoint]
        self._settle(endpoint, state, self._clock())
        return state.ejected

    def healthy_endpoints(self) -> frozenset[str]:
        """The endpoints in service (the balancer's candidates)."""
        now = self._clock()
        healthy = self._healthy
        if healthy is not None and now < self._healthy_until:
            return healthy
        healthy = frozenset(e for e, s in self._state.items() if self._settle(e, s, now))
        # Valid until the next ejection runs out (an endpoint then returns).
        self._healthy_until = min(
            (s.ejected_until for s in self._state.values() if s.ejected_until > now),
            default=math.inf,
        )
        self._healthy = healthy
        return healthy

    def usable(self) -> bool:
        """Some endpoint is in service and not an outlier (else the circuit may open)."""
        threshold = self.outliers.consecutive_failures
        in_service = self.healthy_endpoints()
        return any(s.consecutive < threshold and e in in_service for e, s in self._state.items())

    # -- active checks ---------------------------------------------------------
    def record_probe(self, endpoint: str, ok: bool) -> None:
        self._healthy = None
        state = self._state[endpoint]
        first = not state.probed
        state.probed = True
        now = self._clock()
        if ok:
            state.probe_failures = 0
            state.probe_successes += 1
            recovered = first or state.probe_successes >= self.options.healthy_threshold
            if recovered and not state.active_ok:
                state.consecutive = 0  # probes show it is back: a fresh start
            if recovered and state.ejected_until and state.probe_failed_while_ejected:
                log.warning(
                    "backend %s: endpoint %s passes its health checks again, ejection ended",
                    self.name,
                    endpoint,
                )
                self._end_ejection(state, now)
            state.active_ok = state.active_ok or recovered
        else:
            state.probe_successes = 0
            state.probe_failures += 1
            if state.ejected_until:
                state.probe_failed_while_ejected = True
            if first or state.probe_failures >= self.options.unhealthy_threshold:
                state.active_ok = False
        self._settle(endpoint, state, now)

    # -- outlier detection -----------------------------------------------------
    def record_traffic(self, endpoint: str, ok: bool, cause: str = "") -> None:
        """Feed the outcome of one attempt of a real request (``cause`` names a failure)."""
        state = self._state[endpoint]
        if ok:
            state.consecutive = 0
            return
        state.consecutive += 1
        if state.consecutive < self.outliers.consecutive_failures or state.ejected_until:
            return
        now = self._clock()
        if self._may_eject(endpoint, now):
            self._eject(endpoint, state, now, cause)

    def _may_eject(self, endpoint: str, now: float) -> bool:
        percent = self.outliers.max_ejection_percent
        if percent == 0:
            return False
        # Envoy's rule: the percentage rounds down, but one ejection is always allowed.
        allowed = max(1, len(self._state) * percent // 100)
        ejected = 0
        others_in_service = False
        for other, state in self._state.items():
            in_service = self._settle(other, state, now)
            ejected += state.ejected
            others_in_service = others_in_service or (other != endpoint and in_service)
        # Never the last one in service: an outlier kept there still answers
        # some requests, and a backend failing as a whole is the circuit's.
        return ejected < allowed and others_in_service

    def _eject(self, endpoint: str, state: _Endpoint, now: float, cause: str) -> None:
        base = self.outliers.base_ejection_time
        if state.returned_at:
            # One ejection forgiven per base_ejection_time spent in service since.
            state.ejections = max(0, state.ejections - int((now - state.returned_at) // base))
        state.ejections += 1
        duration = min(self.outliers.max_ejection_time, base * state.ejections)
        state.ejected_until = now + duration
        state.probe_failed_while_ejected = False
        self._healthy = None
        log.warning(
            "backend %s: endpoint %s ejected for %gs after %d failures in a row (last: %s)",
            self.name,
            endpoint,
            duration,
            state.consecutive,
            cause or "failure",
        )
        self._settle(endpoint, state, now)

    def _end_ejection(self, state: _Endpoint, now: float) -> None:
        state.ejected_until = 0.0
        state.returned_at = now
        state.consecutive = 0
        state.probe_failed_while_ejected = False
        self._healthy = None


def publish_gauges(backend: str) -> ChangeListener:
    def publish(endpoint: str, in_service: bool, ejected: bool) -> None:
        metrics.child(metrics.UPSTREAM_HEALTHY, backend, endpoint).set(1 if in_service else 0)
        metrics.child(metrics.UPSTREAM_EJECTED, backend, endpoint).set(1 if ejected else 0)

    return publish


def _describe(ranges: StatusRanges) -> str:
    return ", ".join(f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi in ranges)


class HealthChecker:
    """Runs the active probes of one backend in the background."""

    def __init__(
        self,
        backend: str,
        endpoints: Sequence[str],
        options: HealthCheckOptions,
        board: HealthBoard,
        tls: UpstreamTLS | None = None,
    ) -> None:
        self.backend = backend
        self.endpoints = tuple(endpoints)
        self.options = options
        self.board = board
        self.tls = tls
        self._client: UpstreamClient | None = None
        self._task: asyncio.Task[None] | None = None
        # Why each endpoint's last probe failed (None: it passed), to log a
        # failure once when it starts or changes, not every interval.
        self._failing: dict[str, str | None] = dict.fromkeys(self.endpoints)

    async def probe(self, endpoint: str) -> bool:
        """One probe of one endpoint; True when the status is an expected one.

        One attempt on the proxy's own client (no retry of a reset GET), and
        the connection is closed after the status line and head: a probe shows
        that a new connection is answered, and the body is never read.
        """
        assert self._client is not None, "start() the checker first"
        tls = self.tls
        timeout = self.options.timeout
        try:
            response = await self._client.request(
                parse_origin(endpoint),
                "GET",
                self.options.path,
                _PROBE_HEADERS,
                connect_timeout=timeout,
                read_timeout=timeout,
                deadline=timeout,
                ssl_context=None if tls is None else tls.context,
                server_hostname=None if tls is None else tls.server_hostname,
            )
        except (ConnectTimeout, ResponseTimeout):
            return self._failed(endpoint, f"no answer within {timeout:g}s")
        except (ClientFailure, OSError) as exc:
            return self._failed(endpoint, str(exc) or type(exc).__name__)
        status = response.status
        response.close()
        if not self.options.status_ok(status):
            expected = _describe(self.options.expected_status)
            return self._failed(endpoint, f"answered {status} (expected {expected})")
        self._failing[endpoint] = None
        return True

    def _failed(self, endpoint: str, why: str) -> bool:
        level = logging.DEBUG if self._failing.get(endpoint) == why else logging.WARNING
        self._failing[endpoint] = why
        log.log(
            level,
            "backend %s: health probe GET %s%s failed: %s",
            self.backend,
            endpoint,
            self.options.path,
            why,
        )
        return False

    async def check_once(self) -> None:
        results = await asyncio.gather(*(self.probe(e) for e in self.endpoints))
        for endpoint, ok in zip(self.endpoints, results, strict=True):
            self.board.record_probe(endpoint, ok)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self.check_once()
            except Exception:
                log.exception("health checks of backend %s failed", self.backend)
            # Keep the cadence: a slow probe round must not stretch the interval.
            await asyncio.sleep(max(0.0, self.options.interval - (loop.time() - started)))

    async def start(self) -> None:
        if self._task is not None:
            return
        self._client = UpstreamClient()
        self._task = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        client, self._client = self._client, None
        if client is not None:
            await client.close()
