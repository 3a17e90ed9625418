"""Authorise: the policy's decision on this caller, this route, this request.

The caller's just-in-time grants on the route are read first (data for the
policy's ``grant`` criterion). A deny is 403 with the deciding reason; a
request that needs an identity and has none gets the listener's login answer
(a sign-in redirect for a browser) or 401. A route that passes method
overrides must allow the overriding method as well.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from proxy.errors import AccessDenied, CredentialsRequired, Reason
from proxy.grants.admitted import admitting_grant
from proxy.grants.catalogue import route_grants
from proxy.http.headers import method_override
from proxy.model import Identity, RequestFacts
from proxy.observability import metrics
from proxy.policy.evaluate import PolicySet
from proxy.policy.model import Decision, Route
from proxy.stages.context import RequestContext

if TYPE_CHECKING:
    from proxy.grants.service import GrantLookup

# What a request that needs an identity and has none gets: a login redirect, or
# a 401 of the listener's own; None for the plain 401.
LoginAnswer = Callable[[RequestFacts], Awaitable[web.StreamResponse | None]]


class LoginRequired(Exception):
    """Raised by :class:`Authorise` with the answer that sends the caller to sign in."""

    def __init__(self, answer: web.StreamResponse) -> None:
        super().__init__("login required")
        self.answer = answer


@dataclass(frozen=True, slots=True)
class Authorise:
    grants: GrantLookup | None

    async def __call__(
        self,
        ctx: RequestContext,
        policy: PolicySet,
        route: Route,
        facts: RequestFacts,
        identity: Identity | None,
        now: float,
        login: LoginAnswer,
    ) -> tuple[Decision, Identity | None]:
        """The allowing decision, and the identity it was taken on (with the
        caller's grants); raises the refusal otherwise."""
        grants = self.grants
        if grants is not None and identity is not None and route_grants(route):
            held = grants.cached(identity, route.name)
            if held is None:
                held = await grants.held(identity, route.name)
            if held:
                identity = dataclasses.replace(identity, grants=held)
        decision = policy.decide(route, facts, identity, now)
        ctx.reason = decision.reason
        ctx.dry_run = decision.audit
        if not decision.allowed:
            metrics.child(metrics.DECISIONS, route.name, "deny", decision.reason).inc()
            if decision.reason == Reason.UNAUTHENTICATED:
                answer = await login(facts)
                if answer is not None:
                    answer.headers["X-Request-Id"] = facts.request_id
                    raise LoginRequired(answer)
                # No credential at all: the challenge without an error code (RFC 6750 §3.1).
                raise CredentialsRequired()
            raise AccessDenied(decision.reason)
        if route.pass_method_override:
            authorise_override(policy, route, facts, identity, now)
        return decision, identity


def admitted(
    ctx: RequestContext, route: Route, decision: Decision, identity: Identity | None, now: float
) -> None:
    """Count and note an allowed request (after its rate limit, which can still refuse it)."""
    metrics.child(metrics.DECISIONS, route.name, "allow", decision.reason).inc()
    ctx.decision = "allow"
    if ctx.span is not None:
        ctx.span.stage("authorise")
    if identity is not None and identity.grants:
        ctx.grant_id = admitting_grant(route.allow, decision.reason, identity, now)


def authorise_override(
    policy: PolicySet,
    route: Route,
    facts: RequestFacts,
    identity: Identity | None,
    now: float,
) -> None:
    """A route passing method overrides must allow the overriding method too:
    the upstream framework will run the request as that method."""
    override = method_override(facts.headers)
    if override is None or override == facts.method:
        return
    if route.methods is not None and override not in route.methods:
        raise AccessDenied(Reason.METHOD_OVERRIDE_DENIED)
    decision = policy.decide(route, facts._replace(method=override), identity, now)
    if decision.allowed:
        return
    if decision.reason == Reason.UNAUTHENTICATED:
        raise CredentialsRequired()
    raise AccessDenied(decision.reason)
