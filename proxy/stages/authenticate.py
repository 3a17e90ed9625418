"""Authenticate: who is calling, on routes where it can matter."""

from __future__ import annotations

from dataclasses import dataclass

from proxy.errors import AuthenticationError, Reason
from proxy.identity.authenticate import Authenticator
from proxy.model import Identity, RequestFacts
from proxy.observability import metrics
from proxy.policy.model import Route
from proxy.stages.context import RequestContext


@dataclass(frozen=True, slots=True)
class Authenticate:
    authenticator: Authenticator | None
    # Backends whose credential is minted from the caller's own token (token
    # exchange): their routes authenticate even where the policy ignores the caller.
    caller_credential_backends: frozenset[str]

    async def __call__(
        self, ctx: RequestContext, route: Route, facts: RequestFacts
    ) -> tuple[Identity | None, tuple[str, ...]]:
        """The caller's identity (None: anonymous) and Set-Cookie values of a
        refreshed session; 401/503 when a credential was sent and fails."""
        identity: Identity | None = None
        set_cookies: tuple[str, ...] = ()
        authenticator = self.authenticator
        # A route where who calls cannot matter never consults an identity
        # provider: random tokens sent to public routes cost nothing upstream.
        if authenticator is not None and (
            route.uses_identity or route.backend in self.caller_credential_backends
        ):
            try:
                auth = authenticator.cached(facts)
                if auth is None:
                    auth = await authenticator.authenticate_full(facts)
            except AuthenticationError:
                metrics.child(metrics.DECISIONS, route.name, "deny", Reason.UNAUTHENTICATED).inc()
                raise
            identity, set_cookies = auth.identity, auth.set_cookies
            ctx.identity = identity
        if ctx.span is not None:
            ctx.span.stage("authenticate")
        return identity, set_cookies
