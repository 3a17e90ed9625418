"""Prometheus metrics: the names here are a public contract (dashboards, alerts).

Label values are bounded: route and backend names come from configuration,
reasons from the fixed vocabulary in :mod:`proxy.errors` and the policy
engine, never from raw request data.

With ``--workers N`` > 1 the CLI sets ``PROMETHEUS_MULTIPROC_DIR`` before this
module is imported, so every worker writes to shared files and the admin
listener aggregates them (see :func:`render`).

The metrics every request updates (requests, durations, decisions,
authentication, upstream errors, in-flight) are kept, in a single process, by
this module's own loop families: plain numbers the event loop's thread
updates without a lock, exported to prometheus_client through a registered
collector (its public custom-collector API, so the exposition is the one the
library's own metrics give). With several workers they are prometheus_client
metrics like the rest, whose values live in the shared files.
"""

from __future__ import annotations

import functools
import os
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client import multiprocess as _mp
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
# prometheus_client's own switch for the ``_created`` series, honoured here too.
_CREATED = os.environ.get("PROMETHEUS_DISABLE_CREATED_SERIES", "False").lower() not in (
    "true",
    "1",
)

_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class _CounterValue:
    """One labelled counter: a number the loop's thread adds to."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self.value += amount


class _GaugeValue:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = float(value)


class _HistogramValue:
    """One labelled histogram: a count per bucket (found by bisection) and the sum."""

    __slots__ = ("bounds", "counts", "created", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds  # the upper bounds, +Inf last
        self.counts = [0] * len(bounds)
        self.total = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        self.total += amount
        i = bisect_left(self.bounds, amount)
        # The library's bucket: the first with ``amount <= bound`` (none for NaN).
        if i < len(self.bounds) and amount <= self.bounds[i]:
            self.counts[i] += 1


class LoopFamily:
    """A metric family whose children are plain values, for the event loop's thread only."""

    kind = ""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], Any] = {}
        if not self.labelnames:
            self._children[()] = self._new()

    def _new(self) -> Any:
        raise NotImplementedError

    def labels(self, *values: str, **named: str) -> Any:
        """The child for these label values, given in order or by name (as the library's)."""
        if named:
            if values or set(named) != set(self.labelnames):
                raise ValueError(f"{self.name}: expected labels {self.labelnames}")
            values = tuple(named[name] for name in self.labelnames)
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {values}")
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._new()
        return child

    def describe(self) -> list[Metric]:
        return [Metric(self.name, self.documentation, self.kind)]

    def collect(self) -> Iterator[Metric]:
        raise NotImplementedError


class LoopCounter(LoopFamily):
    kind = "counter"

    def _new(self) -> _CounterValue:
        return _CounterValue()

    def inc(self, amount: float = 1) -> None:
        self._children[()].inc(amount)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in list(self._children.items()):
            family.add_metric(values, child.value, created=child.created if _CREATED else None)
        yield family


class LoopGauge(LoopFamily):
    kind = "gauge"

    def _new(self) -> _GaugeValue:
        return _GaugeValue()

    def inc(self, amount: float = 1) -> None:
        self._children[()].inc(amount)

    def dec(self, amount: float = 1) -> None:
        self._children[()].dec(amount)

    def set(self, value: float) -> None:
        self._children[()].set(value)

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in list(self._children.items()):
            family.add_metric(values, child.value)
        yield family


class LoopHistogram(LoopFamily):
    kind = "histogram"

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = (),
    ) -> None:
        self.bounds = (*buckets, float("inf"))
        super().__init__(name, documentation, labelnames)

    def _new(self) -> _HistogramValue:
        return _HistogramValue(self.bounds)

    def observe(self, amount: float) -> None:
        self._children[()].observe(amount)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        names = [_le(bound) for bound in self.bounds]
        for values, child in list(self._children.items()):
            cumulative = 0.0
            buckets = []
            for le, count in zip(names, child.counts, strict=True):
                cumulative += count
                buckets.append((le, cumulative))
            family.add_metric(values, buckets, child.total)
            if _CREATED:
                labels = dict(zip(self.labelnames, values, strict=True))
                family.add_sample(self.name + "_created", labels, child.created)
        yield family


def _le(bound: float) -> str:
    """A bucket bound as prometheus_client writes it (``0.001``, ``1.0``, ``+Inf``)."""
    if bound == float("inf"):
        return "+Inf"
    return repr(float(bound))


class _LoopCollector:
    """Hands the loop families to prometheus_client at each scrape."""

    def __init__(self) -> None:
        self.families: list[LoopFamily] = []

    def describe(self) -> list[Metric]:
        return [m for family in self.families for m in family.describe()]

    def collect(self) -> Iterator[Metric]:
        for family in self.families:
            yield from family.collect()


_LOOP = _LoopCollector()
if not MULTIPROCESS:
    REGISTRY.register(_LOOP)


def _register(family: LoopFamily) -> Any:
    _LOOP.families.append(family)
    return family


def loop_counter(name: str, documentation: str, labelnames: Sequence[str] = ()) -> Any:
    """A counter the request path updates: a loop family, or with several workers a
    prometheus_client Counter (whose values the admin process aggregates)."""
    if MULTIPROCESS:
        return Counter(name, documentation, labelnames)
    return _register(LoopCounter(name, documentation, labelnames))


def loop_histogram(
    name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float]
) -> Any:
    if MULTIPROCESS:
        return Histogram(name, documentation, labelnames, buckets=buckets)
    return _register(LoopHistogram(name, documentation, labelnames, buckets))


def loop_gauge(name: str, documentation: str, multiprocess_mode: str) -> Any:
    if MULTIPROCESS:
        return Gauge(name, documentation, multiprocess_mode=multiprocess_mode)  # type: ignore[arg-type]
    return _register(LoopGauge(name, documentation))


# -- core request path ------------------------------------------------------
REQUESTS = loop_counter("gatehouse_requests", "Requests handled.", ["route", "status_class"])
REQUEST_DURATION = loop_histogram(
    "gatehouse_request_duration_seconds",
    "Time from request headers received to response finished.",
    ["route"],
    _LATENCY_BUCKETS,
)
UPSTREAM_DURATION = loop_histogram(
    "gatehouse_upstream_duration_seconds",
    "Time from sending the request upstream to receiving response headers.",
    ["backend"],
    _LATENCY_BUCKETS,
)
UPSTREAM_ERRORS = loop_counter(
    "gatehouse_upstream_errors", "Upstream failures by kind.", ["backend", "kind"]
)
INFLIGHT = loop_gauge("gatehouse_inflight_requests", "Requests being handled.", "livesum")
BUILD_INFO = Gauge(
    "gatehouse_build_info",
    "Build and configuration in use (value is always 1).",
    ["version", "config_hash"],
    multiprocess_mode="liveall",
)
CONFIG_RELOADS = Counter("gatehouse_config_reload", "Configuration/policy reloads.", ["result"])
POLICY_VERSION = Gauge(
    "gatehouse_policy_version_info",
    "1 for the policy version this process decides with (0 for the one it replaced).",
    ["version"],
    multiprocess_mode="liveall",
)
CONFIG_LAST_RELOAD_SUCCESS = Gauge(
    "gatehouse_config_last_reload_success_timestamp_seconds",
    "Unix time of the last successful configuration or policy load.",
    multiprocess_mode="max",
)

# -- audit ------------------------------------------------------------------
AUDIT_DROPPED = Counter(
    "gatehouse_audit_dropped_records",
    "Audit records lost: audit.max_buffer was full while the file could not be "
    "written, or the file was still unwritable at exit.",
)
AUDIT_WRITABLE = Gauge(
    "gatehouse_audit_writable",
    "1 while the audit output is written; 0 while records are held and the open is retried.",
    multiprocess_mode="livemin",
)

# -- policy -----------------------------------------------------------------
DECISIONS = loop_counter(
    "gatehouse_decisions", "Policy decisions.", ["route", "decision", "reason"]
)

# -- identity ---------------------------------------------------------------
AUTH = loop_counter("gatehouse_auth", "Authentication attempts.", ["issuer", "method", "result"])
JWKS_REFRESH = Counter("gatehouse_jwks_refresh", "JWKS fetches.", ["issuer", "result"])
TOKEN_CACHE = loop_counter("gatehouse_token_cache", "Verified-token cache lookups.", ["result"])

# -- shared state (Redis) ----------------------------------------------------
_state_available: Gauge | None = None


def state_available() -> Gauge:
    """``gatehouse_state_available``, registered on first use: only with ``state:``.

    A 0 exported by a gateway without Redis would read as an outage.
    """
    global _state_available
    if _state_available is None:
        _state_available = Gauge(
            "gatehouse_state_available",
            "1 while the shared state store (Redis) answers; 0 while replicas use their fallbacks.",
            multiprocess_mode="livemin",
        )
    return _state_available


STATE_UNREACHABLE = Counter(
    "gatehouse_state_unreachable",
    "Operations that found shared state unreachable: sessions fail closed, "
    "rate limits and credential fetches fall back to the replica's own.",
    ["component"],
)

# -- upstream credentials ---------------------------------------------------
CREDENTIAL_FETCH = Counter(
    "gatehouse_credential_fetch", "Upstream credential fetches.", ["backend", "provider", "result"]
)
CREDENTIAL_CACHE = Counter(
    "gatehouse_credential_cache", "Upstream credential cache lookups.", ["backend", "result"]
)
CREDENTIAL_EXPIRY = Gauge(
    "gatehouse_credential_expiry_seconds",
    "Seconds until the cached upstream credential expires.",
    ["backend"],
    multiprocess_mode="min",
)
UPSTREAM_HEALTHY = Gauge(
    "gatehouse_upstream_healthy",
    "1 when the endpoint takes traffic: it passes its health check and is not ejected.",
    ["backend", "endpoint"],
    multiprocess_mode="min",
)
UPSTREAM_EJECTED = Gauge(
    "gatehouse_upstream_ejected",
    "1 while outlier detection keeps the endpoint out after failures in real traffic.",
    ["backend", "endpoint"],
    multiprocess_mode="max",
)
UPSTREAM_CIRCUIT_STATE = Gauge(
    "gatehouse_upstream_circuit_state",
    "The backend's circuit breaker: 0 closed, 1 half-open (probing), 2 open (failing fast).",
    ["backend"],
    multiprocess_mode="max",
)
UPSTREAM_RETRIES = Counter(
    "gatehouse_upstream_retries",
    "Attempts repeated (on another endpoint when there is one), by how the failed one ended.",
    ["backend", "reason"],
)

# -- just-in-time access -------------------------------------------------------
GRANTS_PENDING = Gauge(
    "gatehouse_grants_pending",
    "Access requests waiting for a decision (as stored, shared by replicas).",
    multiprocess_mode="livemax",
)
GRANTS_ACTIVE = Gauge(
    "gatehouse_grants_active",
    "Approved grants in force now (as stored, shared by replicas).",
    multiprocess_mode="livemax",
)
GRANT_EVENTS = Counter(
    "gatehouse_grant_events",
    "Grant requests, approvals, denials, revocations and expiries recorded by this replica.",
    ["event"],
)
GRANT_DECISION_DURATION = Histogram(
    "gatehouse_grant_decision_seconds",
    "Time from an access request to its approval or denial.",
    ["decision"],
    buckets=(10, 30, 60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600, 86400, 3 * 86400),
)
GRANT_WEBHOOK_DELIVERIES = Counter(
    "gatehouse_grant_webhook_deliveries",
    "Grant webhook notifications by outcome: delivered, failed (gave up after "
    "every attempt) or dropped (too many undelivered).",
    ["result"],
)
GRANT_WEBHOOK_FAILURES = Counter(
    "gatehouse_grant_webhook_failures",
    "Failed grant webhook attempts (each retried with backoff): status, connect, timeout.",
    ["kind"],
)


def fast_gauge(metric: Any) -> Any:
    """The value an unlabelled gauge's ``inc``/``dec`` move (the gauge itself with
    several workers). For the event loop's thread only."""
    if isinstance(metric, LoopGauge):
        return metric.labels()
    return metric


@functools.lru_cache(maxsize=65536)
def child(metric: Any, *values: str) -> Any:
    """``metric.labels(*values)``, looked up once: label values are bounded by design.

    A loop family's child is a plain value with ``inc`` / ``observe`` (for the
    event loop's thread only: it is not locked); other metrics' children are
    prometheus_client's.
    """
    return metric.labels(*values)


class WorkerProcessCollector(Collector):
    """``process_*`` of each worker, labelled with its ``pid``.

    prometheus_client's multiprocess mode aggregates the metric files the
    workers write and leaves out process metrics (they cannot be summed), so
    the admin process reads each live worker's from /proc itself, with the
    library's own ProcessCollector pointed at that pid.
    """

    def __init__(self, pids: Iterable[int], proc: str = "/proc") -> None:
        self._pids = sorted(pids)
        self._proc = proc

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for pid in self._pids:
            one = ProcessCollector(pid=_constant(pid), proc=self._proc, registry=None)
            for family in one.collect():
                merged = families.get(family.name)
                if merged is None:
                    merged = Metric(family.name, family.documentation, family.type, family.unit)
                    families[family.name] = merged
                for sample in family.samples:
                    labels = {**sample.labels, "pid": str(pid)}
                    merged.add_sample(sample.name, labels, sample.value)
        yield from families.values()


def _constant(pid: int) -> Callable[[], int]:
    return lambda: pid


def render(worker_pids: Iterable[int] = ()) -> tuple[bytes, str]:
    """The exposition text for /metrics, aggregated across workers when forked.

    ``worker_pids``: the live workers, whose process metrics are added per pid.
    """
    if MULTIPROCESS:
        registry = CollectorRegistry()
        _mp.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        registry.register(WorkerProcessCollector(worker_pids))
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


def mark_process_dead(pid: int) -> None:
    if MULTIPROCESS:
        _mp.mark_process_dead(pid)  # type: ignore[no-untyped-call]
