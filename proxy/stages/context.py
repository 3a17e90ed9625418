"""One request's state as it passes the stages.

Stages write what they learn here, once each; the audit record is built from
it at the end (:func:`proxy.stages.audit.audit_record`), so no stage touches
the record itself. The values that later stages compute with (the edge, the
facts, the admission) are immutable and handed on explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from aiohttp import web

from proxy.errors import Reason
from proxy.http.forwarding import TraceContext
from proxy.http.protocol import Request, Written
from proxy.model import Identity
from proxy.observability.audit import EndpointOutcome
from proxy.policy.model import Route
from proxy.upstream.tally import ExchangeTally

if TYPE_CHECKING:
    from proxy.observability.tracing import RequestTrace

# What a stage answers a request with: an aiohttp response (errors, redirects,
# the proxy's own pages) or a head the listener already wrote (a relayed answer).
Answer = web.StreamResponse | Written


class Edge(NamedTuple):
    """What every request starts with, on either listener: who sent it (and whether
    that peer is a trusted proxy), its headers, its ids and the client address."""

    peer_ip: str
    trusted: bool
    raw_headers: list[tuple[str, str]]
    first: dict[str, str]  # request_view: the first value of each field
    request_id: str
    trace: TraceContext
    client_ip: str
    chain: list[str]


class Admission(NamedTuple):
    """A request admitted by route → authenticate → authorise → rate limit →
    upstream credentials: what forwarding (or a decision answer) needs."""

    route: Route
    identity: Identity | None
    set_cookies: tuple[str, ...]
    credentials: list[tuple[str, str]]


@dataclass(slots=True, eq=False)
class RequestContext:
    request: Request
    arrived: float  # Unix time
    started: float  # perf_counter, for the duration
    span: RequestTrace | None = None
    mode: str = "proxy"  # "decision" on a decision listener
    # -- edge
    request_id: str = ""
    trace_id: str | None = None
    client_ip: str | None = None
    user_agent: str | None = None
    # -- what the request is: the original request's, in decision mode
    method: str | None = None
    host: str | None = None
    path: str | None = None
    # -- route, authenticate, authorise
    policy_version: str | None = None
    route: Route | None = None
    identity: Identity | None = None
    decision: str = "deny"
    reason: str = Reason.INTERNAL_ERROR
    dry_run: tuple[str, ...] = ()
    grant_id: str | None = None
    # -- an endpoint of the proxy's own: who logged in, asked or decided
    outcome: EndpointOutcome | None = None
    # -- forward
    tally: ExchangeTally = field(default_factory=ExchangeTally)

    @property
    def backend(self) -> str | None:
        route = self.route
        return route.backend if route is not None else None

    def log_fields(self) -> dict[str, str | None]:
        """The request's fields for a log record (``extra=``): JSON logs carry them as keys."""
        route = self.route
        return {
            "request_id": self.request_id,
            "route": route.name if route is not None else None,
            "backend": route.backend if route is not None else None,
        }
