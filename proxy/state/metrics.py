"""Shared-state metrics.

These belong in :mod:`proxy.observability.metrics` (the public contract) and
live here only until the core moves them there; they register in the same
default registry, so the names are exported either way.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

STATE_AVAILABLE = Gauge(
    "gatehouse_state_available",
    "1 while the shared state store (Redis) answers; 0 while replicas use their fallbacks.",
    multiprocess_mode="livemin",
)
STATE_UNREACHABLE = Counter(
    "gatehouse_state_unreachable",
    "Operations that found shared state unreachable: sessions fail closed, "
    "rate limits and credential fetches fall back to the replica's own.",
    ["component"],
)
