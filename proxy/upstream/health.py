"""Which endpoints of a backend are healthy: active probes plus what real traffic shows.

Active: every ``interval`` each endpoint gets ``GET <path>`` on a fresh
connection; ``unhealthy_threshold`` failed probes in a row take it out,
``healthy_threshold`` good ones bring it back. The very first probe decides
at once, so a dead endpoint at start-up is out after one probe, not N.

Passive: ``passive_failures`` consecutive transport failures or 502/503/504
answers from real traffic eject an endpoint at once (no waiting for the next
probe). With active checks it returns on its next good probe; without them
it returns after ``passive_ejection``. Passive ejection never takes out the
last healthy endpoint; a backend failing as a whole is the circuit breaker's.

:class:`HealthBoard` is the pure state (injected clock, no I/O);
:class:`HealthChecker` does the probing and publishes
``gatehouse_upstream_healthy{backend,endpoint}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiohttp
from yarl import URL

from proxy.observability import metrics
from proxy.upstream.config import HealthCheckOptions
from proxy.upstream.tls import UpstreamTLS

log = logging.getLogger("gatehouse.upstream.health")

ChangeListener = Callable[[str, bool], None]


@dataclass(slots=True)
class _Endpoint:
    active_ok: bool = True
    probed: bool = False
    successes: int = 0
    failures: int = 0
    passive_failures: int = 0
    ejected_until: float = 0.0  # passive ejection; math.inf = until the next good probe
    healthy: bool = True  # last published verdict


class HealthBoard:
    """Health verdicts for one backend's endpoints."""

    def __init__(
        self,
        endpoints: Sequence[str],
        options: HealthCheckOptions,
        clock: Callable[[], float],
        on_change: ChangeListener | None = None,
    ) -> None:
        self.options = options
        self._clock = clock
        self._on_change = on_change
        self._state = {e: _Endpoint() for e in endpoints}
        # The healthy set, asked for on every request, changes only on a probe, an
        # ejection, or when an ejection runs out: kept until one of those.
        self._healthy: frozenset[str] | None = None
        self._healthy_until = 0.0

    def _settle(self, endpoint: str, state: _Endpoint, now: float) -> bool:
        healthy = state.active_ok and now >= state.ejected_until
        if healthy != state.healthy:
            self._healthy = None
            state.healthy = healthy
            log.warning(
                "upstream endpoint %s is now %s", endpoint, "healthy" if healthy else "UNHEALTHY"
            )
            if self._on_change is not None:
                self._on_change(endpoint, healthy)
        return healthy

    def is_healthy(self, endpoint: str) -> bool:
        return self._settle(endpoint, self._state[endpoint], self._clock())

    def healthy_endpoints(self) -> frozenset[str]:
        now = self._clock()
        healthy = self._healthy
        if healthy is not None and now < self._healthy_until:
            return healthy
        healthy = frozenset(e for e, s in self._state.items() if self._settle(e, s, now))
        # Valid until the next passive ejection runs out (an endpoint then returns).
        states = self._state.values()
        self._healthy_until = min(
            (s.ejected_until for s in states if s.active_ok and s.ejected_until > now),
            default=math.inf,
        )
        self._healthy = healthy
        return healthy

    def record_probe(self, endpoint: str, ok: bool) -> None:
        self._healthy = None
        state = self._state[endpoint]
        first = not state.probed
        state.probed = True
        if ok:
            state.failures = 0
            state.successes += 1
            state.passive_failures = 0
            state.ejected_until = 0.0
            if first or state.successes >= self.options.healthy_threshold:
                state.active_ok = True
        else:
            state.successes = 0
            state.failures += 1
            if first or state.failures >= self.options.unhealthy_threshold:
                state.active_ok = False
        self._settle(endpoint, state, self._clock())

    def record_traffic(self, endpoint: str, ok: bool) -> None:
        """Feed the outcome of one real request (passive outlier detection)."""
        if self.options.passive_failures == 0:
            return
        state = self._state[endpoint]
        if ok:
            state.passive_failures = 0
            return
        state.passive_failures += 1
        now = self._clock()
        if state.passive_failures < self.options.passive_failures or now < state.ejected_until:
            return
        state.passive_failures = 0
        others = [e for e, s in self._state.items() if e != endpoint and self._settle(e, s, now)]
        if not others:
            # Never the last one: when the whole backend fails, the circuit
            # breaker (which probes its way back) is the right tool, not a
            # blind ejection that would fail every request for a fixed time.
            return
        state.ejected_until = (
            math.inf if self.options.enabled else now + self.options.passive_ejection
        )
        self._healthy = None
        self._settle(endpoint, state, now)


def publish_gauge(backend: str) -> ChangeListener:
    def publish(endpoint: str, healthy: bool) -> None:
        metrics.child(metrics.UPSTREAM_HEALTHY, backend, endpoint).set(1 if healthy else 0)

    return publish


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
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    async def probe(self, endpoint: str) -> bool:
        """One probe of one endpoint; True when the status is an expected one."""
        assert self._session is not None, "start() the checker first"
        url = URL(endpoint + self.options.path, encoded=True)
        kwargs: dict[str, object] = {}
        if url.scheme == "https" and self.tls is not None:
            kwargs["ssl"] = self.tls.context
            if self.tls.server_hostname is not None:
                kwargs["server_hostname"] = self.tls.server_hostname
        try:
            async with asyncio.timeout(self.options.timeout):
                async with self._session.get(
                    url,
                    allow_redirects=False,
                    headers={"User-Agent": "gatehouse-health-check"},
                    **kwargs,  # type: ignore[arg-type]
                ) as response:
                    await response.read()
                    return self.options.status_ok(response.status)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.debug("health probe %s%s failed: %s", endpoint, self.options.path, exc)
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
        # A fresh connection per probe: a probe must show that new connections
        # succeed, not that an old keep-alive one is still open.
        connector = aiohttp.TCPConnector(force_close=True, limit=0)
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            timeout=aiohttp.ClientTimeout(total=self.options.timeout),
        )
        # aiohttp would repeat a reset GET once on its own; one probe is one try.
        self._session._retry_connection = False
        self._task = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        session, self._session = self._session, None
        if session is not None:
            await session.close()
