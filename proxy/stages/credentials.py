"""Upstream credentials: the headers carrying the backend's short-lived credential.

Taken from the broker's cache (single-flight, refreshed ahead of expiry): the
same for a forwarded request and a decision answer.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.credentials.broker import CredentialBroker
from proxy.model import Identity
from proxy.policy.model import Route
from proxy.stages.context import RequestContext


@dataclass(frozen=True, slots=True)
class UpstreamCredentials:
    broker: CredentialBroker | None

    async def __call__(
        self, ctx: RequestContext, route: Route, identity: Identity | None
    ) -> list[tuple[str, str]]:
        if self.broker is None:
            return []
        headers = await self.broker.headers(route.backend, route, identity)
        if ctx.span is not None:
            ctx.span.stage("upstream_credentials")
        return headers
