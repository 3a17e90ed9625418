"""Route: which route of the current policy answers this host, path and method."""

from __future__ import annotations

from proxy.errors import RouteNotFound
from proxy.model import RequestFacts
from proxy.policy.evaluate import PolicySet
from proxy.policy.model import Route
from proxy.stages.context import RequestContext


def find_route(ctx: RequestContext, policy: PolicySet, facts: RequestFacts) -> Route:
    """The route, or 404 ``route_not_found`` (deny by default: no route, no access)."""
    ctx.policy_version = policy.version
    route = policy.match(facts.host, facts.path, facts.method)
    if route is None:
        raise RouteNotFound()
    ctx.route = route
    if ctx.span is not None:
        ctx.span.stage("route")
    return route
