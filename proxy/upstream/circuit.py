"""Circuit breaker for one backend: stop sending when none of its endpoints can answer.

closed ──a failure leaves no endpoint usable──▶ open ──open_for elapsed──▶ half-open
half-open: up to ``half_open_probes`` requests go through; all succeed → closed,
any fails → open again. While open (and while the probes are out) requests
fail fast: the gateway answers 502 ``upstream_circuit_open`` without touching
the upstream, which gives a struggling upstream room to recover and keeps
callers from queueing behind connect timeouts.

One failing endpoint is outlier detection's business (:mod:`.health`): it
is ejected and the others carry on. The breaker is for the backend as a
whole, so it counts no failures of its own: the pool reports each failed
attempt together with whether any endpoint is still *usable* (in service
and not an outlier), and only "none" opens the circuit. For a backend of one
endpoint that is outlier detection's ``consecutive_failures`` in a row.
Results are tied to the generation a request was admitted in, so a slow
request admitted before the circuit opened cannot close it again, and a
probe that never reports (cancelled) gives its slot back via ``ABANDONED``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from proxy.upstream.config import CircuitOptions


class CircuitState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Outcome(enum.Enum):
    SUCCESS = "success"
    FAILURE = "failure"
    ABANDONED = "abandoned"  # no verdict on the upstream (client gone, body too large)


@dataclass(frozen=True, slots=True)
class Permit:
    generation: int
    probe: bool


StateListener = Callable[[CircuitState], None]


class CircuitBreaker:
    def __init__(
        self,
        options: CircuitOptions,
        clock: Callable[[], float],
        on_change: StateListener | None = None,
    ) -> None:
        self.options = options
        self._clock = clock
        self._on_change = on_change
        self._state = CircuitState.CLOSED
        self._generation = 0
        self._opened_at = 0.0
        self._probes_out = 0
        self._probe_successes = 0
        # Permits are immutable: one per generation serves every ordinary request.
        self._permit = Permit(0, probe=False)

    @property
    def state(self) -> CircuitState:
        if (
            self._state is CircuitState.OPEN
            and self._clock() - self._opened_at >= self.options.open_for
        ):
            self._enter(CircuitState.HALF_OPEN)
        return self._state

    def retry_after(self) -> float:
        """Seconds until the circuit lets a probe through (0 when not open)."""
        if self.state is not CircuitState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.options.open_for - self._clock())

    def admit(self) -> Permit | None:
        """A permit to send one request, or None: fail fast."""
        if not self.options.enabled:
            return self._permit
        state = self.state
        if state is CircuitState.CLOSED:
            return self._permit
        slots = self.options.half_open_probes - self._probes_out - self._probe_successes
        if state is CircuitState.HALF_OPEN and slots > 0:
            self._probes_out += 1
            return Permit(self._generation, probe=True)
        return None

    def record(self, permit: Permit, outcome: Outcome, *, backend_usable: bool = True) -> None:
        """The outcome of an admitted attempt; ``backend_usable``: some endpoint still is."""
        if not self.options.enabled or permit.generation != self._generation:
            return
        if permit.probe:
            self._probes_out = max(0, self._probes_out - 1)
            if outcome is Outcome.FAILURE:
                self._enter(CircuitState.OPEN)
            elif outcome is Outcome.SUCCESS:
                self._probe_successes += 1
                if self._probe_successes >= self.options.half_open_probes:
                    self._enter(CircuitState.CLOSED)
            return
        if outcome is Outcome.FAILURE and not backend_usable:
            self._enter(CircuitState.OPEN)

    def _enter(self, state: CircuitState) -> None:
        self._state = state
        self._generation += 1
        self._permit = Permit(self._generation, probe=False)
        self._probes_out = 0
        self._probe_successes = 0
        if state is CircuitState.OPEN:
            self._opened_at = self._clock()
        if self._on_change is not None:
            self._on_change(state)
