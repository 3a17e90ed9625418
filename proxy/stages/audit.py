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
    record = AuditRecord(
        ts_epoch=ctx.arrived,
        request_id=ctx.request_id,
        trace_id=ctx.trace_id,
        client_ip=ctx.client_ip,
        user_agent=ctx.user_agent,
        method=ctx.method,
        host=ctx.host,
        path=ctx.path,
        route=route.name if route is not None else None,
        backend=route.backend if route is not None else None,
        subject=identity.subject if identity is not None else None,
        issuer=identity.issuer if identity is not None else None,
        auth=identity.method if identity is not None else None,
        decision=ctx.decision,
        reason=reason,
        status=status,
        upstream_status=tally.upstream_status,
        attempts=tally.attempts,
        duration_ms=duration * 1000.0,
        bytes_in=tally.bytes_in,
        bytes_out=tally.bytes_out or _body_length(answer),
        policy_version=ctx.policy_version,
        dry_run=ctx.dry_run,
        mode=ctx.mode,
        grant_id=ctx.grant_id,
    )
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
