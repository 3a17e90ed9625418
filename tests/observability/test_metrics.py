"""Label children looked up once: the exposition is what prometheus_client's own children give."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from proxy.observability import metrics


def registry_pair() -> tuple[CollectorRegistry, CollectorRegistry]:
    return CollectorRegistry(), CollectorRegistry()


def samples(registry: CollectorRegistry) -> list[str]:
    """The exposition without ``_created`` lines (creation times differ by nature)."""
    text = generate_latest(registry).decode()
    return [line for line in text.splitlines() if "_created" not in line]


def test_counter_children_count_exactly_like_the_library_children() -> None:
    ours, theirs = registry_pair()
    fast = Counter("t_requests", "h", ["route"], registry=ours)
    plain = Counter("t_requests", "h", ["route"], registry=theirs)
    for amount in (1, 1, 2.5, 0):
        metrics.child(fast, "r1").inc(amount)
        plain.labels("r1").inc(amount)
    metrics.child(fast, "r2").inc()
    plain.labels("r2").inc()
    assert metrics.child(fast, "r1") is metrics.child(fast, "r1")
    assert samples(ours) == samples(theirs)


def test_a_counter_child_refuses_a_negative_increment() -> None:
    counter = Counter("t_negative", "h", ["route"], registry=CollectorRegistry())
    with pytest.raises(ValueError, match="non-negative"):
        metrics.child(counter, "r").inc(-1)


def test_histogram_children_fill_the_same_buckets_as_the_library() -> None:
    ours, theirs = registry_pair()
    buckets = (0.001, 0.01, 0.1, 1.0)
    fast = Histogram("t_seconds", "h", ["route"], buckets=buckets, registry=ours)
    plain = Histogram("t_seconds", "h", ["route"], buckets=buckets, registry=theirs)
    # On a bound, between bounds, below the first, above the last, and NaN.
    for value in (0.0, 0.001, 0.0011, 0.01, 0.5, 1.0, 7.0, -1.0, math.nan):
        metrics.child(fast, "r").observe(value)
        plain.labels("r").observe(value)
    assert samples(ours) == samples(theirs)


def test_gauge_children_are_the_library_children() -> None:
    child = metrics.child(metrics.UPSTREAM_HEALTHY, "b", "http://e")
    child.set(1)
    assert child is metrics.UPSTREAM_HEALTHY.labels("b", "http://e")


def test_library_calls_on_a_looked_up_child_add_to_the_same_value() -> None:
    registry = CollectorRegistry()
    counter = Counter("t_mixed", "h", ["route"], registry=registry)
    metrics.child(counter, "r").inc()
    counter.labels("r").inc(2)  # the library's own path, on the value child() took over
    assert 't_mixed_total{route="r"} 3.0' in samples(registry)


def test_a_fast_gauge_moves_the_gauge_itself() -> None:
    registry = CollectorRegistry()
    gauge = Gauge("t_inflight", "h", registry=registry)
    fast = metrics.fast_gauge(gauge)
    fast.inc()
    fast.inc()
    fast.dec()
    gauge.inc(5)
    assert "t_inflight 6.0" in samples(registry)
