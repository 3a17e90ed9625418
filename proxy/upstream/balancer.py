"""Which healthy endpoint the next request goes to.

``round_robin`` rotates through the healthy endpoints. ``least_request`` is
the power of two choices over in-flight counts: pick two distinct endpoints
at random and take the one with fewer requests in flight, which tracks the
least loaded endpoint closely without the herding a strict minimum causes
when many requests start at once.

No healthy endpoint means no pick (``None``): the caller fails closed rather
than sending traffic to endpoints known to be down.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence


class Balancer:
    def __init__(
        self,
        endpoints: Sequence[str],
        policy: str = "round_robin",
        rng: random.Random | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("a backend needs at least one endpoint")
        if policy not in ("round_robin", "least_request"):
            raise ValueError(f"unknown load balancing policy {policy!r}")
        self.endpoints = tuple(endpoints)
        self.policy = policy
        self._rng = rng or random.Random()  # noqa: S311 (spreading load, not security)
        self._next = 0
        self._inflight = dict.fromkeys(self.endpoints, 0)
        # Candidates for the last healthy set seen without exclusions: the health
        # board hands out the same set object until something changes.
        self._seen: Collection[str] | None = None
        self._seen_candidates: list[str] = []

    def inflight(self, endpoint: str) -> int:
        return self._inflight[endpoint]

    def acquire(self, endpoint: str) -> None:
        self._inflight[endpoint] += 1

    def release(self, endpoint: str) -> None:
        if self._inflight[endpoint] > 0:
            self._inflight[endpoint] -= 1

    def pick(self, healthy: Collection[str], exclude: Collection[str] = ()) -> str | None:
        """A healthy endpoint, avoiding ``exclude`` (endpoints already tried) when possible."""
        if not exclude and healthy is self._seen:
            candidates = self._seen_candidates
        else:
            candidates = [e for e in self.endpoints if e in healthy and e not in exclude]
            if not exclude and isinstance(healthy, frozenset):
                self._seen, self._seen_candidates = healthy, candidates
        if not candidates:
            # A retry may go back to an endpoint that failed if it is all we have.
            candidates = [e for e in self.endpoints if e in healthy]
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0]
        if self.policy == "least_request":
            first, second = self._rng.sample(candidates, 2)
            return second if self._inflight[second] < self._inflight[first] else first
        chosen = candidates[self._next % len(candidates)]
        self._next += 1
        return chosen
