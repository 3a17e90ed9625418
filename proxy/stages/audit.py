"""Audit: the request's one record, built from its context, and its metrics.

This is the only place an :class:`~proxy.observability.audit.AuditRecord` of
a request is made: the stages wrote what they learnt into the context, an
endpoint of the proxy's own its :class:`~proxy.observability.audit.EndpointOutcome`,
and forwarding its :class:`~proxy.upstream.tally.ExchangeTally`.
"""

from __future__ import annotations

import time

from aiohttp import web

from proxy.errors import Reason, status_class
from proxy.http.protocol import Written
from proxy.observability import metrics
from proxy.observability.audit import AuditRecord, AuditWriter
from proxy.stages.context import Answer, RequestContext

# The status of a request that got no answer at all (the client went away while
# the proxy shut down): nginx's "client closed request".
NO_ANSWER = 499


def audit_record(ctx: RequestContext, answer: Answer | None, duration: float) -> AuditRecord:
    """The record of a finished request."""
    status = answer.status if answer is not None else NO_ANSWER
    reason = ctx.reason
    if answer is None and reason == Reason.INTERNAL_ERROR:
        reason = Reason.CANCELLED
    tally = ctx.tally
    if tally.cut_reason is not None:
        reason = tally.cut_reason
    route = ctx.route
    identity = ctx.identity
    # Two keywords and plain assignments: a 25-keyword call costs twice as much
    # (CPython matches each keyword against every parameter name).
    record = AuditRecord(ts_epoch=ctx.arrived, request_id=ctx.request_id)
    record.trace_id = ctx.trace_id
    record.client_ip = ctx.client_ip
    record.user_agent = ctx.user_agent
    record.method = ctx.method
    record.host = ctx.host
    record.path = ctx.path
    if route is not None:
        record.route = route.name
        record.backend = route.backend
    if identity is not None:
        record.subject = identity.subject
        record.issuer = identity.issuer
        record.auth = identity.method
    record.decision = ctx.decision
    record.reason = reason
    record.status = status
    record.upstream_status = tally.upstream_status
    record.attempts = tally.attempts
    record.duration_ms = duration * 1000.0
    record.bytes_in = tally.bytes_in
    record.bytes_out = tally.bytes_out or _body_length(answer)
    record.policy_version = ctx.policy_version
    record.dry_run = ctx.dry_run
    record.mode = ctx.mode
    record.grant_id = ctx.grant_id
    if ctx.outcome is not None:
        ctx.outcome.apply(record)  # login/logout/access: who, and how it went
    return record


def finish(ctx: RequestContext, answer: Answer | None, audit: AuditWriter) -> None:
    """Write the request's one record, count it, and end its trace."""
    duration = time.perf_counter() - ctx.started
    record = audit_record(ctx, answer, duration)
    route = record.route or "none"
    metrics.child(metrics.REQUESTS, route, status_class(record.status)).inc()
    metrics.child(metrics.REQUEST_DURATION, route).observe(duration)
    if ctx.span is not None:
        ctx.span.finish(record)
    audit.write(record)


def _body_length(answer: Answer | None) -> int:
    # Written first: aiohttp's responses are ABCs, slow to test against.
    if answer is None or isinstance(answer, Written) or not isinstance(answer, web.Response):
        return 0
    body = answer.body
    return len(body) if isinstance(body, bytes | bytearray) else 0
