"""The proxy's own endpoints: login, callback, logout, JWKS, the access API and page.

They all live under :data:`LOCAL_PREFIXES`, so other requests never look at
them. Each endpoint answers, or returns None to let the request carry on; an
answer may carry an :class:`~proxy.observability.audit.EndpointOutcome` (who
logged in, asked or decided) for the request's audit record.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from proxy.errors import AuditReason
from proxy.http.protocol import RequestView
from proxy.model import RequestFacts
from proxy.observability.audit import ENDPOINT_OUTCOME
from proxy.stages.context import RequestContext

LOCAL_PREFIXES = ("/.gatehouse/", "/.well-known/gatehouse/")
LocalEndpoint = Callable[[RequestView, RequestFacts], Awaitable[web.StreamResponse | None]]


async def serve_local(
    ctx: RequestContext, endpoints: tuple[LocalEndpoint, ...], facts: RequestFacts
) -> web.StreamResponse | None:
    """An endpoint of Gatehouse's own answers the request, or None."""
    for endpoint in endpoints:
        answer = await endpoint(ctx.request, facts)
        if answer is not None:
            ctx.decision = "allow"
            ctx.reason = AuditReason.GATEHOUSE_ENDPOINT
            ctx.outcome = answer.get(ENDPOINT_OUTCOME)
            answer.headers["X-Request-Id"] = facts.request_id
            return answer
    return None
