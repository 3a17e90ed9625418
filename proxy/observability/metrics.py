"""Prometheus metrics: the names here are a public contract (dashboards, alerts).

Label values are bounded: route and backend names come from configuration,
reasons from the fixed vocabulary in :mod:`proxy.errors` and the policy
engine, never from raw request data.

With ``--workers N`` > 1 the CLI sets ``PROMETHEUS_MULTIPROC_DIR`` before this
module is imported, so every worker writes to shared files and the admin
listener aggregates them (see :func:`render`).
"""

from __future__ import annotations

import functools
import os
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client import multiprocess as _mp
from prometheus_client import values as _values
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

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

# -- core request path ------------------------------------------------------
REQUESTS = Counter("gatehouse_requests", "Requests handled.", ["route", "status_class"])
REQUEST_DURATION = Histogram(
    "gatehouse_request_duration_seconds",
    "Time from request headers received to response finished.",
    ["route"],
    buckets=_LATENCY_BUCKETS,
)
UPSTREAM_DURATION = Histogram(
    "gatehouse_upstream_duration_seconds",
    "Time from sending the request upstream to receiving response headers.",
    ["backend"],
    buckets=_LATENCY_BUCKETS,
)
UPSTREAM_ERRORS = Counter(
    "gatehouse_upstream_errors", "Upstream failures by kind.", ["backend", "kind"]
)
INFLIGHT = Gauge(
    "gatehouse_inflight_requests", "Requests being handled.", multiprocess_mode="livesum"
)
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
DECISIONS = Counter("gatehouse_decisions", "Policy decisions.", ["route", "decision", "reason"])

# -- identity ---------------------------------------------------------------
AUTH = Counter("gatehouse_auth", "Authentication attempts.", ["issuer", "method", "result"])
JWKS_REFRESH = Counter("gatehouse_jwks_refresh", "JWKS fetches.", ["issuer", "result"])
TOKEN_CACHE = Counter("gatehouse_token_cache", "Verified-token cache lookups.", ["result"])

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


class _CounterChild:
    """A counter child's ``inc`` without the checks that cannot fail for a child.

    prometheus_client re-checks on every call that the metric has its labels
    (a child always has) and looks for an exemplar; on the request path that
    is most of the cost. The value object updated is the child's own, so the
    exposition is exactly what ``labels(...).inc()`` produces.
    """

    __slots__ = ("_add",)

    def __init__(self, add: Callable[[float], None]) -> None:
        self._add = add

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self._add(amount)


class _HistogramChild:
    """A histogram child's ``observe``: the bucket found by bisection, not a linear scan."""

    __slots__ = ("_bounds", "_buckets", "_sum")

    def __init__(self, bounds: list[float], buckets: list[Any], add_sum: Callable[[float], None]):
        self._bounds = bounds
        self._buckets = buckets
        self._sum = add_sum

    def observe(self, amount: float) -> None:
        self._sum(amount)
        bounds = self._bounds
        i = bisect_left(bounds, amount)
        # The same bucket as the library's first ``amount <= bound`` (none for NaN).
        if i < len(bounds) and amount <= bounds[i]:
            self._buckets[i].inc(1)


class _GaugeValue:
    """An unlabelled gauge's ``inc``/``dec`` on its value, without the per-call label check."""

    __slots__ = ("_add",)

    def __init__(self, add: Callable[[float], None]) -> None:
        self._add = add

    def inc(self, amount: float = 1) -> None:
        self._add(amount)

    def dec(self, amount: float = 1) -> None:
        self._add(-amount)


class _LoopValue:
    """A metric value that only the event loop's thread updates: no lock.

    prometheus_client locks every update because any thread may make one; the
    values behind :func:`child` and :func:`fast_gauge` are updated on the
    request path only, which is the loop's thread, and a scrape reads one
    float. Nine lock round trips per request add up to a microsecond.
    """

    __slots__ = ("_value",)

    def __init__(self, value: float) -> None:
        self._value = value

    def inc(self, amount: float) -> None:
        self._value += amount

    def set(self, value: float, timestamp: float | None = None) -> None:
        self._value = value

    def get(self) -> float:
        return self._value

    def set_exemplar(self, exemplar: Any) -> None:
        raise NotImplementedError("exemplars are not used")

    def get_exemplar(self) -> None:
        return None


def _loop_value(value: Any) -> Any:
    """The lock-free twin of a single-process value; shared-file values stay as they are."""
    if type(value) is _values.MutexValue:
        return _LoopValue(value.get())  # type: ignore[no-untyped-call]
    return value


def fast_gauge(metric: Gauge) -> Any:
    """``metric`` itself, or a thin object updating the very same value (see ``child``).

    For the event loop's thread only.
    """
    try:
        metric._value = _loop_value(metric._value)
        return _GaugeValue(metric._value.inc)
    except AttributeError:  # another prometheus_client layout: the gauge still works
        return metric


def _fast(metric: Any, labelled: Any) -> Any:
    try:
        if isinstance(metric, Counter):
            labelled._value = _loop_value(labelled._value)
            return _CounterChild(labelled._value.inc)
        if isinstance(metric, Histogram):
            bounds = list(labelled._upper_bounds)
            if len(bounds) == len(labelled._buckets):
                labelled._sum = _loop_value(labelled._sum)
                labelled._buckets = [_loop_value(b) for b in labelled._buckets]
                return _HistogramChild(bounds, list(labelled._buckets), labelled._sum.inc)
    except AttributeError:  # another prometheus_client layout: the plain child still works
        pass
    return labelled


@functools.lru_cache(maxsize=65536)
def child(metric: Any, *values: str) -> Any:
    """``metric.labels(*values)``, looked up once: label values are bounded by design.

    Counters and histograms come back as thin objects with the same ``inc`` /
    ``observe`` updating the same child; gauges as the child itself. For the
    event loop's thread only: their values are not locked (see ``_LoopValue``).
    """
    return _fast(metric, metric.labels(*values))


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
