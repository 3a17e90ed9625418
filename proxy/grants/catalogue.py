"""Which routes and rules of a loaded policy can be requested, and on what terms.

A grant is for one route and one rule; the rule's ``grant`` criterion carries
its :class:`GrantSpec`. Walked once per route object (routes are immutable,
rebuilt on reload), so the request path asks "does this route have grant
rules?" at the cost of a cached lookup.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

from proxy.grants.admitted import grant_criteria
from proxy.policy.criteria.grant import GrantSpec
from proxy.policy.evaluate import PolicySet
from proxy.policy.model import Route


@functools.lru_cache(maxsize=4096)
def route_grants(route: Route) -> Mapping[str, GrantSpec]:
    """Rule name -> grant spec, for every grant criterion in the route's rules."""
    out: dict[str, GrantSpec] = {}
    for rule in (*route.deny, *route.allow):
        for criterion in grant_criteria(rule):
            out.setdefault(criterion.spec.rule, criterion.spec)
    return out


@dataclass(frozen=True, slots=True)
class Requestable:
    route: Route
    spec: GrantSpec


class Catalogue:
    """The grant rules of one policy version, by route name."""

    def __init__(self, policy: PolicySet) -> None:
        self.version = policy.version
        self.routes = {r.name: r for r in policy.routes}
        self.items = [
            Requestable(route, spec)
            for route in policy.routes
            for spec in route_grants(route).values()
        ]

    def spec(self, route: str, rule: str | None) -> GrantSpec | None:
        """The spec for ``rule`` on ``route``; without a rule, the route's only one."""
        found = self.routes.get(route)
        if found is None:
            return None
        specs = route_grants(found)
        if rule is None:
            return next(iter(specs.values())) if len(specs) == 1 else None
        return specs.get(rule)


@functools.lru_cache(maxsize=4)
def catalogue(policy: PolicySet) -> Catalogue:
    return Catalogue(policy)
