"""What forwarding one request tells its audit record, as plain counters."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class ExchangeTally:
    """Filled in while a request is forwarded (or relayed as a WebSocket).

    The forwarding code writes here instead of into the audit record, so the
    upstream layer needs nothing of the audit's, and the record is built from
    the request's context in one place (:mod:`proxy.stages.audit`).
    """

    attempts: int = 0  # times the request was sent upstream, the first try included
    upstream_status: int | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    # Why an answer already begun ended early (client gone, upstream cut, a
    # WebSocket limit): it replaces the reason the request was admitted with.
    cut_reason: str | None = None
