"""The loop families: plain values on the request path, exposed exactly as prometheus_client's own."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric

from proxy.observability import metrics


class _One:
    """A registry entry for one loop family (the module registers its own in REGISTRY)."""

    def __init__(self, family: metrics.LoopFamily) -> None:
        self.family = family

    def collect(self) -> Iterator[Metric]:
        return self.family.collect()


def registry_of(family: metrics.LoopFamily) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(_One(family))
    return registry


def samples(registry: CollectorRegistry) -> list[str]:
    """The exposition without ``_created`` values (creation times differ by nature)."""
    text = generate_latest(registry).decode()
    return [
        line for line in text.splitlines() if "_created{" not in line and "_created " not in line
    ]


def test_counter_children_count_exactly_like_the_library_children() -> None:
    fast = metrics.LoopCounter("t_requests", "h", ["route"])
    theirs = CollectorRegistry()
    plain = Counter("t_requests", "h", ["route"], registry=theirs)
    for amount in (1, 1, 2.5, 0):
        metrics.child(fast, "r1").inc(amount)
        plain.labels("r1").inc(amount)
    metrics.child(fast, "r2").inc()
    plain.labels("r2").inc()
    assert metrics.child(fast, "r1") is metrics.child(fast, "r1")
    assert metrics.child(fast, "r1") is fast.labels("r1")  # one value, whichever way it is found
    assert samples(registry_of(fast)) == samples(theirs)


def test_labels_may_be_named_as_the_library_allows() -> None:
    fast = metrics.LoopCounter("t_named", "h", ["issuer", "result"])
    assert fast.labels(result="ok", issuer="i") is fast.labels("i", "ok")
    with pytest.raises(ValueError, match="expected labels"):
        fast.labels(issuer="i")


def test_a_counter_child_refuses_a_negative_increment() -> None:
    counter = metrics.LoopCounter("t_negative", "h", ["route"])
    with pytest.raises(ValueError, match="non-negative"):
        metrics.child(counter, "r").inc(-1)


def test_histogram_children_fill_the_same_buckets_as_the_library() -> None:
    buckets = (0.001, 0.01, 0.1, 1.0)
    fast = metrics.LoopHistogram("t_seconds", "h", ["route"], buckets)
    theirs = CollectorRegistry()
    plain = Histogram("t_seconds", "h", ["route"], buckets=buckets, registry=theirs)
    # On a bound, between bounds, below the first, above the last, and NaN.
    for value in (0.0, 0.001, 0.0011, 0.01, 0.5, 1.0, 7.0, -1.0, math.nan):
        metrics.child(fast, "r").observe(value)
        plain.labels("r").observe(value)
    assert samples(registry_of(fast)) == samples(theirs)


def test_a_histogram_exposes_its_creation_time_like_the_library() -> None:
    fast = metrics.LoopHistogram("t_created", "h", ["route"], (1.0,))
    metrics.child(fast, "r").observe(0.5)
    text = generate_latest(registry_of(fast)).decode()
    assert 't_created_created{route="r"}' in text


def test_gauges_off_the_request_path_are_the_library_children() -> None:
    child = metrics.child(metrics.UPSTREAM_HEALTHY, "b", "http://e")
    child.set(1)
    assert child is metrics.UPSTREAM_HEALTHY.labels("b", "http://e")


def test_a_fast_gauge_moves_the_gauge_itself() -> None:
    gauge = metrics.LoopGauge("t_inflight", "h")
    fast = metrics.fast_gauge(gauge)
    fast.inc()
    fast.inc()
    fast.dec()
    gauge.inc(5)
    assert "t_inflight 6.0" in samples(registry_of(gauge))
    theirs = Gauge("t_plain", "h", registry=CollectorRegistry())
    assert metrics.fast_gauge(theirs) is theirs


def test_the_request_path_metrics_are_exposed_by_the_default_registry() -> None:
    metrics.child(metrics.REQUESTS, "route-x", "2xx").inc()
    text = metrics.render()[0].decode()
    assert 'gatehouse_requests_total{route="route-x",status_class="2xx"}' in text
    assert "gatehouse_inflight_requests " in text
