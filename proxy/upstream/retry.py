"""When a failed upstream attempt may be tried again, how long to wait, and how often.

A retry is only safe when sending the request twice cannot do anything
sending it once would not: either the method is idempotent (RFC 9110 §9.2.2),
or the request provably never reached the upstream (the connection was
refused or timed out before a byte was written). A POST whose bytes left
Gatehouse is never retried, whatever the failure. The body must also still be
available: a streamed body that has been read once cannot be sent again.

Retries are bounded twice: per request (``attempts``) and per backend by a
budget (retries ≤ ``budget_min_retries`` + ``budget_ratio`` × requests over a
sliding window), so during an outage retries add at most a fixed fraction of
load instead of multiplying it.
"""

from __future__ import annotations

from collections.abc import Callable

from proxy.errors import Failure
from proxy.upstream.config import RetryOptions

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
RETRYABLE_STATUS = frozenset({502, 503, 504})


def status_failure(status: int) -> Failure | None:
    """The failure a response status stands for (502/503/504), or None for an answer."""
    if status in RETRYABLE_STATUS:
        return Failure(str(status))
    return None


def should_retry(
    options: RetryOptions,
    method: str,
    attempt: int,
    failure: Failure,
    request_reached_upstream: bool,
    body_replayable: bool,
) -> bool:
    """May attempt number ``attempt`` (1-based), which failed with ``failure``, be repeated?"""
    if attempt >= options.attempts or failure.value not in options.retry_on:
        return False
    if not body_replayable:
        return False
    if not request_reached_upstream:
        return True
    return method.upper() in IDEMPOTENT_METHODS


class RetryBudget:
    """Retries allowed per backend over a sliding window, counted in time buckets."""

    def __init__(
        self,
        ratio: float,
        window: float,
        min_retries: int,
        clock: Callable[[], float],
        buckets: int = 10,
    ) -> None:
        self.ratio = ratio
        self.min_retries = min_retries
        self._clock = clock
        self._width = window / buckets
        self._slots = buckets
        self._requests = [0] * buckets
        self._retries = [0] * buckets
        self._epoch = [-1] * buckets  # which bucket number each slot currently holds
        # The bucket number the last call landed in, and its slot: most calls land there too.
        self._current = (-1, 0)

    @classmethod
    def from_options(cls, options: RetryOptions, clock: Callable[[], float]) -> RetryBudget:
        return cls(options.budget_ratio, options.budget_window, options.budget_min_retries, clock)

    def _slot(self) -> int:
        number = int(self._clock() // self._width)
        current, index = self._current
        if number == current:
            return index
        index = number % self._slots
        if self._epoch[index] != number:
            self._epoch[index] = number
            self._requests[index] = 0
            self._retries[index] = 0
        self._current = (number, index)
        return index

    def _totals(self) -> tuple[int, int]:
        number = int(self._clock() // self._width)
        live = [i for i in range(self._slots) if number - self._epoch[i] < self._slots]
        return sum(self._requests[i] for i in live), sum(self._retries[i] for i in live)

    def record_request(self) -> None:
        self._requests[self._slot()] += 1

    def allowance(self) -> float:
        requests, _ = self._totals()
        return self.min_retries + self.ratio * requests

    def try_spend(self) -> bool:
        """Take one retry from the budget; False when it is used up."""
        index = self._slot()
        _, retries = self._totals()
        if retries + 1 > self.allowance():
            return False
        self._retries[index] += 1
        return True
