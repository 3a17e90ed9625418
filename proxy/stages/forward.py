"""Forward: send the admitted request to an endpoint of its backend and relay the answer.

The upstream request's headers are the client's end-to-end ones through the
route's header policy, the forwarding headers, the request and trace ids,
the verified identity and the backend's credential (which replaces any
same-named header: never two values of one credential). The pool picks the
endpoint and retries what may be retried; an upstream 401 to a minted
credential is retried once with a fresh one; a WebSocket upgrade on a
WebSocket route is relayed frame by frame.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from proxy.config.schema import Config
from proxy.credentials.broker import CredentialBroker
from proxy.http.forwarding import TraceContext, forwarding_headers
from proxy.http.headers import (
    DEFAULT_IDENTITY_HEADERS,
    RequestHeaderPolicy,
    filter_request_headers,
    identity_headers,
)
from proxy.http.protocol import Written
from proxy.model import Identity, RequestFacts
from proxy.observability import metrics
from proxy.policy.model import Route
from proxy.stages.context import Admission, Edge, RequestContext
from proxy.upstream.client import UpstreamClient, UpstreamResponse
from proxy.upstream.forward import relay, send
from proxy.upstream.pool import EndpointPool, Exchange
from proxy.upstream.websocket import WebSocketLimits, is_websocket_upgrade, proxy_websocket

Attempt = Callable[[str, float | None], Awaitable[UpstreamResponse]]


@dataclass(frozen=True, slots=True)
class HeaderNames:
    """The header names forwarding treats specially, fixed by the configuration."""

    credential: frozenset[str]  # the API-key header (Authorization is always one)
    cookie_prefixes: tuple[str, ...]  # Gatehouse's cookies never reach an upstream
    identity: frozenset[str]  # identity headers a client may never set


@dataclass(frozen=True, slots=True)
class Forward:
    config: Config
    client: UpstreamClient
    pools: dict[str, EndpointPool]
    broker: CredentialBroker | None
    names: HeaderNames
    websocket_limits: WebSocketLimits

    async def __call__(
        self, ctx: RequestContext, edge: Edge, facts: RequestFacts, admission: Admission
    ) -> Written:
        route, identity, set_cookies, credentials = admission
        request = ctx.request
        trace = edge.trace
        if ctx.span is not None:
            # The upstream call is a child span; the traceparent sent names it.
            trace = ctx.span.upstream(trace, route.backend, request.method)
        headers = self.upstream_headers(edge, route, facts, identity, trace, credentials)
        if route.websocket and is_websocket_upgrade(request):
            return await self._websocket(ctx, route, facts, headers)
        started = time.perf_counter()
        try:
            exchange = await self._send(ctx, route, facts, headers)
            if exchange.response.status == 401 and credentials and self.broker is not None:
                exchange = await self._with_new_credential(
                    ctx, exchange, edge, route, facts, identity, trace
                )
        finally:
            metrics.child(metrics.UPSTREAM_DURATION, route.backend).observe(
                time.perf_counter() - started
            )
            if ctx.span is not None:
                ctx.span.upstream_done(ctx.tally.upstream_status)
        try:
            return await relay(request, exchange.response, ctx.tally, ctx.request_id, set_cookies)
        finally:
            exchange.release()

    async def _with_new_credential(
        self,
        ctx: RequestContext,
        exchange: Exchange[UpstreamResponse],
        edge: Edge,
        route: Route,
        facts: RequestFacts,
        identity: Identity | None,
        trace: TraceContext,
    ) -> Exchange[UpstreamResponse]:
        """Our credential may have been revoked before its expiry: fetch a new one
        and try once more, when the body can still be replayed and there is a
        new one to try."""
        assert self.broker is not None
        renewed = self.broker.invalidate(route.backend, identity)
        if not renewed or ctx.request.body_exists:
            return exchange
        exchange.response.release()
        exchange.release()
        credentials = await self.broker.headers(route.backend, route, identity)
        headers = self.upstream_headers(edge, route, facts, identity, trace, credentials)
        return await self._send(ctx, route, facts, headers)

    def _send(
        self,
        ctx: RequestContext,
        route: Route,
        facts: RequestFacts,
        headers: list[tuple[str, str]],
    ) -> Awaitable[Exchange[UpstreamResponse]]:
        request = ctx.request
        tally = ctx.tally
        pool = self.pools[route.backend]
        backend = self.config.backends[route.backend]
        max_body = route.max_body if route.max_body is not None else self.config.listen.max_body
        # The client's Host when the route preserves it; else the endpoint's.
        host = facts.headers.get("host") if route.preserve_host else None
        path_qs = _target(facts)

        # A plain function handing back send()'s coroutine: one coroutine layer
        # less on every request.
        def attempt(base_url: str, remaining: float | None) -> Awaitable[UpstreamResponse]:
            tally.attempts += 1
            return send(
                self.client,
                request,
                backend=backend,
                base_url=base_url,
                method=request.method,
                path_qs=path_qs,
                headers=headers,
                max_body=max_body,
                deadline=remaining,
                tally=tally,
                ssl_context=pool.ssl,
                server_hostname=pool.server_hostname,
                host=host,
            )

        def body_replayable() -> bool:
            # Nothing of the client's body has been read yet (always true without one).
            return tally.bytes_in == 0

        return pool.send(
            request.method,
            attempt,
            body_replayable=body_replayable,
            deadline=route.timeout if route.timeout is not None else backend.timeouts.total,
        )

    async def _websocket(
        self,
        ctx: RequestContext,
        route: Route,
        facts: RequestFacts,
        headers: list[tuple[str, str]],
    ) -> Written:
        pool = self.pools[route.backend]
        ctx.tally.attempts = 1  # an upgrade is never retried
        return await proxy_websocket(
            self.client,
            ctx.request,
            # Picked only here: pool.send() picks for plain requests, and a
            # second pick would skew the balancer (round robin sent all to one).
            base_url=pool.pick(),
            path_qs=_target(facts),
            headers=headers,
            host=facts.headers.get("host") if route.preserve_host else None,
            tally=ctx.tally,
            request_id=ctx.request_id,
            backend=self.config.backends[route.backend],
            limits=self.websocket_limits,
            ssl_context=pool.ssl,
            server_hostname=pool.server_hostname,
        )

    def upstream_headers(
        self,
        edge: Edge,
        route: Route,
        facts: RequestFacts,
        identity: Identity | None,
        trace: TraceContext,
        credentials: list[tuple[str, str]],
    ) -> list[tuple[str, str]]:
        names = self.names
        policy = header_policy_for(route, names.credential, names.cookie_prefixes, names.identity)
        out = filter_request_headers(edge.raw_headers, policy)
        out += forwarding_headers(
            peer_ip=edge.peer_ip,
            peer_trusted=edge.trusted,
            chain=edge.chain,
            client_headers=facts.headers,
            scheme=facts.scheme,
            host=facts.headers.get("host", ""),
        )
        out.append(("X-Request-Id", edge.request_id))
        out.append(("traceparent", trace.traceparent))
        if trace.tracestate:
            out.append(("tracestate", trace.tracestate))
        if identity is not None:
            out += identity_headers(
                identity.subject,
                identity.email,
                identity.groups,
                names=self.config.identity_headers,
            )
        if credentials:
            # A credential replaces any same-named header (e.g. a passed-through
            # Authorization): never two values for one credential header.
            replaced = {name.lower() for name, _ in credentials}
            out = [(k, v) for k, v in out if k.lower() not in replaced]
            out += credentials
        return out


def _target(facts: RequestFacts) -> str:
    """What the upstream is asked for: the canonical path and the raw query."""
    return facts.path + (f"?{facts.query}" if facts.query else "")


@functools.lru_cache(maxsize=4096)
def header_policy_for(
    route: Route,
    credential_headers: frozenset[str],
    cookie_prefixes: tuple[str, ...],
    identity_names: frozenset[str] = DEFAULT_IDENTITY_HEADERS,
) -> RequestHeaderPolicy:
    """Per-route header policy, built once per route object rather than per request.

    ``credential_headers`` are headers that carry a caller's credential besides
    ``Authorization`` (the API key header): they stay at the proxy unless the
    route passes the caller's credentials on. ``identity_names`` are the
    identity headers a client's copy of which is always dropped.
    """
    remove = {h.lower().replace("_", "-") for h in route.remove_request_headers}
    if not route.pass_authorization:
        remove |= credential_headers
    return RequestHeaderPolicy(
        pass_authorization=route.pass_authorization,
        pass_method_override=route.pass_method_override,
        remove=frozenset(remove),
        set=route.set_request_headers,
        identity_headers=identity_names,
        cookie_prefixes=cookie_prefixes,
    )
