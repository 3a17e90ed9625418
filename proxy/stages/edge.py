"""Edge: what every request starts with, on either listener.

Who sent it and whether that peer is a trusted proxy, its headers (a
single-valued field sent twice is refused here, before anything reads it),
its request and trace ids, and the client address behind trusted proxies.
"""

from __future__ import annotations

from proxy.errors import AmbiguousRequest
from proxy.http.config import ListenConfig
from proxy.http.forwarding import (
    client_address,
    new_request_id,
    plain_address,
    request_id,
    trace_context,
)
from proxy.http.headers import request_view
from proxy.http.protocol import Request
from proxy.stages.context import Edge, RequestContext

# Characters of User-Agent kept in the audit record: enough to name any client.
USER_AGENT_LIMIT = 256


def read_edge(
    ctx: RequestContext,
    listen: ListenConfig,
    single_valued: frozenset[str],
    own_cookie_prefixes: tuple[str, ...],
) -> Edge:
    request = ctx.request
    peer_ip = peer_address(request)
    trusted = listen.trusted_proxies.contains(peer_ip)
    raw_headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers]
    ctx.method = request.method
    ctx.client_ip = peer_ip
    try:
        # Also the policy's view (facts.headers); refuses a credential sent twice.
        first = request_view(raw_headers, single_valued, own_cookie_prefixes)
    except AmbiguousRequest:
        ctx.request_id = new_request_id()  # no header of this request is to be trusted
        raise
    rid = request_id(first.get("x-request-id"), trusted)
    trace = trace_context(first.get("traceparent"), first.get("tracestate"))
    span = ctx.span
    if span is not None:
        trace = span.start(trace, first, request.method)
        if not span.recording:
            ctx.span = None  # unsampled: no stage of this request asks again
    client_ip, chain = client_address(peer_ip, first.get("x-forwarded-for"), listen.trusted_proxies)
    ctx.request_id = rid
    ctx.trace_id = trace.trace_id
    ctx.client_ip = client_ip
    ctx.host = first.get("host", "")
    user_agent = first.get("user-agent")
    if user_agent is not None:
        ctx.user_agent = user_agent[:USER_AGENT_LIMIT]
    return Edge(peer_ip, trusted, raw_headers, first, rid, trace, client_ip, chain)


def peer_address(request: Request) -> str:
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    if isinstance(peer, tuple) and peer:
        return plain_address(str(peer[0]))
    return "unknown"
