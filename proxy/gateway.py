"""The request path: canonicalise → route → authenticate → authorise →
upstream credentials → forward → audit.

Each stage is a pure function or a component with a narrow interface; this
module only sequences them, turns phase errors into responses (the mapping
itself lives in :mod:`proxy.errors`), and guarantees exactly one audit record
and one metrics observation per request, whatever happens.

Route → authenticate → authorise → rate limit → upstream credentials is
:meth:`Gateway._admit`, shared by both listener modes: a proxy listener
forwards what it admits (:meth:`Gateway._handle`); a decision listener
(``listen.mode: decision``) answers a data plane's question about a request
the data plane holds, with the headers to forward it with, and never
forwards (:meth:`Gateway._decide`, the original request read by
:mod:`proxy.http.decision`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from aiohttp import web

from proxy.config.schema import Config
from proxy.credentials.broker import CredentialBroker
from proxy.errors import (
    AccessDenied,
    AmbiguousRequest,
    AuditUnavailable,
    AuthenticationError,
    BadHost,
    GatehouseError,
    RateLimited,
    RouteNotFound,
    ShuttingDown,
    UntrustedPeer,
    UpstreamError,
    status_class,
)
from proxy.grants.admitted import admitting_grant
from proxy.grants.catalogue import route_grants
from proxy.http.canonical import canonicalise_target
from proxy.http.decision import (
    DecisionCall,
    OriginalRequest,
    decision_call,
    envoy_removals,
    forwarded_origin,
    login_location,
    original_request,
)
from proxy.http.forwarding import (
    TraceContext,
    client_address,
    forwarding_headers,
    new_request_id,
    plain_address,
    request_id,
    trace_context,
)
from proxy.http.headers import (
    COOKIE_PREFIXES,
    DEFAULT_IDENTITY_HEADERS,
    SINGLE_VALUED,
    RequestHeaderPolicy,
    filter_request_headers,
    identity_headers,
    method_override,
    request_view,
    upstream_cookie,
)
from proxy.http.host import parse_host
from proxy.http.protocol import Request, RequestView, Written
from proxy.http.responses import error_response
from proxy.identity.authenticate import Authenticator
from proxy.identity.redirects import is_api_request
from proxy.model import ClientCertificate, Identity, RequestFacts
from proxy.observability import metrics
from proxy.observability.audit import ENDPOINT_OUTCOME, AuditRecord, AuditWriter
from proxy.policy.evaluate import PolicySet
from proxy.policy.model import Route
from proxy.policy.store import PolicyStore
from proxy.ratelimit import RateLimiter, rate_key
from proxy.upstream.client import UpstreamClient, UpstreamResponse
from proxy.upstream.forward import relay, send
from proxy.upstream.pool import EndpointPool
from proxy.upstream.websocket import WebSocketLimits, is_websocket_upgrade, proxy_websocket

if TYPE_CHECKING:
    from proxy.grants.service import GrantLookup
    from proxy.observability.tracing import RequestTrace, Tracing
    from proxy.state.ratelimit import SharedRateLimiter

log = logging.getLogger("gatehouse.gateway")
_inflight = metrics.fast_gauge(metrics.INFLIGHT)


# A hook for endpoints the proxy serves itself (login callback, JWKS): returns
# a response, or None to carry on down the normal request path. They all live
# under these prefixes, so other requests skip the hooks altogether.
LOCAL_PREFIXES = ("/.gatehouse/", "/.well-known/gatehouse/")
LocalEndpoint = Callable[[RequestView, RequestFacts], Awaitable[web.StreamResponse | None]]
CertificateReader = Callable[[bytes], ClientCertificate]
# Characters of User-Agent kept in the audit record: enough to name any client.
USER_AGENT_LIMIT = 256
# What a request that needs an identity and has none gets: a login redirect, or
# a 401 of the caller's own; None for the plain 401.
LoginAnswer = Callable[[RequestFacts], Awaitable[web.StreamResponse | None]]


class Edge(NamedTuple):
    """What every request starts with, on either listener: who sent it (and whether
    that peer is a trusted proxy), its headers, its ids and the client address."""

    peer_ip: str
    trusted: bool
    raw_headers: list[tuple[str, str]]
    first: dict[str, str]  # request_view: the first value of each field
    request_id: str
    trace: TraceContext
    client_ip: str
    chain: list[str]


class Admission(NamedTuple):
    """A request admitted by route → authenticate → authorise → rate limit →
    upstream credentials: what forwarding (or a decision answer) needs."""

    route: Route
    identity: Identity | None
    set_cookies: tuple[str, ...]
    credentials: list[tuple[str, str]]


@dataclass
class Gateway:
    config: Config
    policies: PolicyStore
    audit: AuditWriter
    client: UpstreamClient
    pools: dict[str, EndpointPool]
    authenticator: Authenticator | None = None
    rate_limiter: RateLimiter | SharedRateLimiter | None = None
    credentials: CredentialBroker | None = None
    local_endpoints: tuple[LocalEndpoint, ...] = ()
    certificate_reader: CertificateReader | None = None
    # OpenTelemetry, when configured; None costs the request path one test per stage.
    tracing: Tracing | None = None
    grants: GrantLookup | None = None

    @functools.cached_property
    def cookie_prefixes(self) -> tuple[str, ...]:
        """Cookies of ours (session, login state, chunks) that never reach an upstream."""
        browser = self.config.identity.browser
        extra = (browser.cookie_name,) if browser is not None else ()
        return (*COOKIE_PREFIXES, *extra)

    @functools.cached_property
    def credential_headers(self) -> frozenset[str]:
        api_keys = self.config.identity.api_keys
        return frozenset({api_keys.header.lower().replace("_", "-")}) if api_keys else frozenset()

    @functools.cached_property
    def caller_credential_backends(self) -> frozenset[str]:
        """Backends whose credential is minted from the caller's own token (token
        exchange): their routes authenticate even where the policy ignores the caller."""
        return frozenset(
            name
            for name, backend in self.config.backends.items()
            if any(spec.type == "token_exchange" for spec in backend.credentials)
        )

    @functools.cached_property
    def identity_header_names(self) -> frozenset[str]:
        """Identity headers a client may never set: the well-known ones and ours."""
        return DEFAULT_IDENTITY_HEADERS | self.config.identity_headers.names()

    @functools.cached_property
    def single_valued(self) -> frozenset[str]:
        """Fields that may come once only: credentials, Host, Content-Length."""
        return SINGLE_VALUED | self.credential_headers

    @functools.cached_property
    def own_cookie_prefixes(self) -> tuple[str, ...]:
        return tuple(prefix.lower() for prefix in self.cookie_prefixes)

    @functools.cached_property
    def decision_listener(self) -> bool:
        return self.config.listen.mode == "decision"

    @functools.cached_property
    def websocket_limits(self) -> WebSocketLimits:
        listen = self.config.listen
        return WebSocketLimits(listen.websocket_max_message, listen.websocket_idle_timeout)

    async def handle(self, request: Request) -> web.StreamResponse | Written:
        started = time.perf_counter()
        record = AuditRecord(ts_epoch=time.time(), request_id="")
        _inflight.inc()
        span = self.tracing.request() if self.tracing is not None else None
        response: web.StreamResponse | Written | None = None
        try:
            response = await self._handle(request, record, span)
        except GatehouseError as exc:
            response = self._fail(exc, record)
        except asyncio.CancelledError:
            # The server cancels a request only at the drain deadline: answer it
            # 503 if nothing went out yet; a begun answer can only be cut short.
            if request.started:
                record.reason = ShuttingDown.reason
                response = Written(record.upstream_status or 500)
            else:
                response = self._fail(ShuttingDown(), record)
        except Exception:
            log.exception(
                "unexpected failure handling request %s", record.request_id, extra=_context(record)
            )
            response = self._fail(GatehouseError(), record)
        finally:
            _inflight.dec()
            elapsed = time.perf_counter() - started
            record.duration_ms = elapsed * 1000.0
            if response is not None:
                record.status = response.status
                # Written first: aiohttp's responses are ABCs, slow to test against.
                if (
                    not isinstance(response, Written)
                    and isinstance(response, web.Response)
                    and response.body is not None
                ):
                    record.bytes_out = len(response.body)  # type: ignore[arg-type]
            else:
                # Cancelled (client gone during shutdown): still exactly one record.
                record.status = record.status or 499
                if record.reason == "internal_error":
                    record.reason = "cancelled"
            route = record.route or "none"
            metrics.child(metrics.REQUESTS, route, status_class(record.status)).inc()
            metrics.child(metrics.REQUEST_DURATION, route).observe(elapsed)
            if span is not None:
                span.finish(record)
            self.audit.write(record)
        return response

    def _fail(self, exc: GatehouseError, record: AuditRecord) -> web.Response:
        # ``decision`` stays as authorisation left it: an upstream failure after
        # an allow is still an allowed request that failed.
        record.reason = exc.reason
        if exc.detail:
            log.info(
                "request %s: %s (%s)",
                record.request_id,
                exc.reason,
                exc.detail,
                extra=_context(record),
            )
        if isinstance(exc, UpstreamError) and record.backend:
            metrics.child(metrics.UPSTREAM_ERRORS, record.backend, exc.reason).inc()
        headers = {}
        if isinstance(exc, AuthenticationError):
            headers["WWW-Authenticate"] = f'Bearer realm="gatehouse", error="{exc.reason}"'
        return error_response(exc.status, exc.reason, record.request_id, headers)

    async def _handle(
        self, request: Request, record: AuditRecord, span: RequestTrace | None
    ) -> web.StreamResponse | Written:
        if self.decision_listener:
            return await self._decide(request, record, span)
        cfg = self.config.listen
        peer_ip, trusted, raw_headers, first, rid, trace, client_ip, chain = self._edge(
            request, record, span
        )
        if span is not None and not span.recording:
            span = None  # unsampled: no stage of this request asks again
        host_header = first.get("host", "")

        # -- canonicalise --------------------------------------------------
        path, query = canonicalise_target(request.raw_path, cfg.path)
        record.path = path
        self._check_audit()
        host = parse_host(host_header)
        if host is None:
            raise BadHost(detail="Host header breaks host[:port]")
        scheme = "https" if cfg.tls is not None else "http"
        facts = RequestFacts(
            method=request.method,
            scheme=scheme,
            host=host,
            path=path,
            query=query,
            client_ip=client_ip,
            headers=first,
            client_cert=self._client_certificate(request),
            request_id=rid,
        )
        if span is not None:
            span.stage("canonicalise")
        if path.startswith(LOCAL_PREFIXES):
            local = await self._serve_local(request, facts, record)
            if local is not None:
                return local

        admitted = await self._admit(facts, record, self._login_page, span)
        if not isinstance(admitted, Admission):
            return admitted
        route, identity, set_cookies, extra = admitted

        # -- forward -----------------------------------------------------------
        if span is not None:
            # The upstream call is a child span; the traceparent sent names it.
            trace = span.upstream(trace, route.backend, request.method)
        upstream_headers = self._upstream_headers(
            raw_headers, route, facts, identity, trace, rid, peer_ip, trusted, chain, extra
        )
        pool = self.pools[route.backend]
        # The client's Host when the route preserves it; else the endpoint's.
        upstream_host = facts.headers.get("host") if route.preserve_host else None
        backend = self.config.backends[route.backend]
        path_qs = path + (f"?{query}" if query else "")
        if route.websocket and is_websocket_upgrade(request):
            # Picked only here: pool.send() picks for plain requests, and a
            # second pick would skew the balancer (round robin sent all to one).
            record.attempts = 1  # an upgrade is never retried
            return await proxy_websocket(
                self.client,
                request,
                base_url=pool.pick(),
                path_qs=path_qs,
                headers=upstream_headers,
                host=upstream_host,
                record=record,
                backend=backend,
                limits=self.websocket_limits,
                ssl_context=pool.ssl,
                server_hostname=pool.server_hostname,
            )
        max_body = route.max_body if route.max_body is not None else cfg.max_body
        deadline = route.timeout if route.timeout is not None else backend.timeouts.total

        def attempt_with(
            headers: list[tuple[str, str]],
        ) -> Callable[[str, float | None], Awaitable[UpstreamResponse]]:
            # A plain function handing back send()'s coroutine: one coroutine
            # layer less on every request.
            def attempt(base_url: str, remaining: float | None) -> Awaitable[UpstreamResponse]:
                record.attempts += 1
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
                    record=record,
                    ssl_context=pool.ssl,
                    server_hostname=pool.server_hostname,
                    host=upstream_host,
                )

            return attempt

        def body_replayable() -> bool:
            # Nothing of the client's body has been read yet (always true without one).
            return record.bytes_in == 0

        started = time.perf_counter()
        try:
            exchange = await pool.send(
                request.method,
                attempt_with(upstream_headers),
                body_replayable=body_replayable,
                deadline=deadline,
            )
            if exchange.response.status == 401 and extra and self.credentials is not None:
                # Our credential may have been revoked before its expiry: fetch a
                # new one and try once more, when the body can still be replayed
                # and there is a new one to try.
                renewed = self.credentials.invalidate(route.backend, identity)
                if renewed and not request.body_exists:
                    exchange.response.release()
                    exchange.release()
                    extra = await self.credentials.headers(route.backend, route, identity)
                    upstream_headers = self._upstream_headers(
                        raw_headers,
                        route,
                        facts,
                        identity,
                        trace,
                        rid,
                        peer_ip,
                        trusted,
                        chain,
                        extra,
                    )
                    exchange = await pool.send(
                        request.method,
                        attempt_with(upstream_headers),
                        body_replayable=body_replayable,
                        deadline=deadline,
                    )
        finally:
            metrics.child(metrics.UPSTREAM_DURATION, route.backend).observe(
                time.perf_counter() - started
            )
            if span is not None:
                span.upstream_done(record.upstream_status)
        try:
            return await relay(request, exchange.response, record, set_cookies)
        finally:
            exchange.release()

    def _edge(self, request: Request, record: AuditRecord, span: RequestTrace | None) -> Edge:
        cfg = self.config.listen
        peer_ip = _peer_ip(request)
        trusted = cfg.trusted_proxies.contains(peer_ip)
        raw_headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers]
        record.method = request.method
        record.client_ip = peer_ip
        try:
            # Also the policy's view (facts.headers); refuses a credential sent twice.
            first = request_view(raw_headers, self.single_valued, self.own_cookie_prefixes)
        except AmbiguousRequest:
            record.request_id = new_request_id()  # no header of this request is to be trusted
            raise
        rid = request_id(first.get("x-request-id"), trusted)
        trace = trace_context(first.get("traceparent"), first.get("tracestate"))
        if span is not None:
            trace = span.start(trace, first, request.method)
        client_ip, chain = client_address(
            peer_ip, first.get("x-forwarded-for"), cfg.trusted_proxies
        )
        record.request_id = rid
        record.trace_id = trace.trace_id
        record.client_ip = client_ip
        record.host = first.get("host", "")
        user_agent = first.get("user-agent")
        if user_agent is not None:
            record.user_agent = user_agent[:USER_AGENT_LIMIT]
        return Edge(peer_ip, trusted, raw_headers, first, rid, trace, client_ip, chain)

    def _check_audit(self) -> None:
        """With ``audit.required``, nothing is served while the audit cannot be written."""
        if not self.audit.writable and self.config.audit.required:
            raise AuditUnavailable()

    async def _serve_local(
        self, request: Request, facts: RequestFacts, record: AuditRecord
    ) -> web.StreamResponse | None:
        """An endpoint of Gatehouse's own (login, callback, logout, JWKS), or None."""
        for serve_local in self.local_endpoints:
            local = await serve_local(request, facts)
            if local is not None:
                record.decision = "allow"
                record.reason = "gatehouse_endpoint"
                outcome = local.get(ENDPOINT_OUTCOME)
                if outcome is not None:
                    outcome.apply(record)  # login/logout: who, and how it went
                local.headers["X-Request-Id"] = facts.request_id
                return local
        return None

    async def _login_page(self, facts: RequestFacts) -> web.StreamResponse | None:
        """Pages get a login redirect; API calls a 401 (never a redirect)."""
        if self.authenticator is None:
            return None
        return await self.authenticator.login_response(facts)

    async def _admit(
        self,
        facts: RequestFacts,
        record: AuditRecord,
        login: LoginAnswer,
        span: RequestTrace | None = None,
    ) -> Admission | web.StreamResponse:
        """Route → authenticate → authorise → rate limit → upstream credentials.

        Returns the admitted request, or ``login``'s answer for a request that
        needs an identity and has none; raises the phase error otherwise.
        """
        # -- route -----------------------------------------------------------
        policy = self.policies.current
        record.policy_version = policy.version
        route = policy.match(facts.host, facts.path, facts.method)
        if route is None:
            raise RouteNotFound()
        record.route = route.name
        record.backend = route.backend
        if span is not None:
            span.stage("route")

        # -- authenticate ------------------------------------------------------
        identity: Identity | None = None
        set_cookies: tuple[str, ...] = ()
        # A route where who calls cannot matter never consults an identity
        # provider: random tokens sent to public routes cost nothing upstream.
        if self.authenticator is not None and (
            route.uses_identity or route.backend in self.caller_credential_backends
        ):
            try:
                auth = self.authenticator.cached(facts)
                if auth is None:
                    auth = await self.authenticator.authenticate_full(facts)
            except AuthenticationError:
                metrics.child(metrics.DECISIONS, route.name, "deny", "unauthenticated").inc()
                raise
            identity, set_cookies = auth.identity, auth.set_cookies
        if identity is not None:
            record.subject = identity.subject
            record.issuer = identity.issuer
            record.auth = identity.method
        if span is not None:
            span.stage("authenticate")

        # -- grants: the caller's, on this route, as data for the policy ------------
        grants = self.grants
        if grants is not None and identity is not None and route_grants(route):
            held = grants.cached(identity, route.name)
            if held is None:
                held = await grants.held(identity, route.name)
            if held:
                identity = dataclasses.replace(identity, grants=held)

        # -- authorise -------------------------------------------------------
        now = time.time()
        decision = policy.decide(route, facts, identity, now)
        record.reason = decision.reason
        record.dry_run = decision.audit
        if not decision.allowed:
            metrics.child(metrics.DECISIONS, route.name, "deny", decision.reason).inc()
            if decision.reason == "unauthenticated":
                answer = await login(facts)
                if answer is not None:
                    answer.headers["X-Request-Id"] = facts.request_id
                    return answer
                raise AuthenticationError("unauthenticated")
            raise AccessDenied(decision.reason)
        if route.pass_method_override:
            self._authorise_override(policy, route, facts, identity, now)
        if route.rate_limit is not None and self.rate_limiter is not None:
            key = rate_key(identity, facts, self.config.listen.ipv6_rate_limit_prefix)
            allowed = self.rate_limiter.allow(route, key, now)
            if not isinstance(allowed, bool):
                allowed = await allowed  # shared buckets: answered by Redis
            if not allowed:
                metrics.child(metrics.DECISIONS, route.name, "deny", "rate_limited").inc()
                raise RateLimited()
        metrics.child(metrics.DECISIONS, route.name, "allow", decision.reason).inc()
        record.decision = "allow"
        if span is not None:
            span.stage("authorise")
        if identity is not None and identity.grants:
            record.grant_id = admitting_grant(route.allow, decision.reason, identity, now)

        # -- upstream credentials ----------------------------------------------
        extra: list[tuple[str, str]] = []
        if self.credentials is not None:
            extra = await self.credentials.headers(route.backend, route, identity)
            if span is not None:
                span.stage("upstream_credentials")
        return Admission(route, identity, set_cookies, extra)

    # -- decision listener -----------------------------------------------------
    async def _decide(
        self, request: Request, record: AuditRecord, span: RequestTrace | None
    ) -> web.StreamResponse | Written:
        """Answer a data plane's question about a request it holds; never forward.

        ``/.gatehouse/decide``, ``/auth`` and ``/ext_authz/...`` are decisions
        (trusted peers only); Gatehouse's own paths (login, callback, logout,
        JWKS) are served as on a proxy listener; anything else is 404.
        """
        record.mode = "decision"
        record.path = request.path  # until the original request is known
        cfg = self.config.listen
        peer_ip, trusted, raw_headers, first, rid, _, client_ip, _ = self._edge(
            request, record, span
        )
        if span is not None and not span.recording:
            span = None
        call = decision_call(request.raw_path)
        if call is None:
            return await self._own_path(request, record, first, trusted)
        if not trusted:
            raise UntrustedPeer(detail=f"decision request from {peer_ip}, not a trusted proxy")
        scheme = "https" if cfg.tls is not None else "http"
        original = original_request(
            call, request.method, raw_headers, scheme=scheme, options=cfg.path
        )
        record.method, record.host, record.path = original.method, original.authority, original.path
        self._check_audit()
        first["host"] = original.authority  # the host the user sees, for the login endpoints
        facts = RequestFacts(
            method=original.method,
            scheme=original.proto,
            host=original.host,
            path=original.path,
            query=original.query,
            client_ip=client_ip,
            headers=first,
            client_cert=None,  # the TLS client here is the data plane, never the caller
            request_id=rid,
        )
        if original.path.startswith(LOCAL_PREFIXES):
            # The data plane must route these to Gatehouse, not ask about them: a
            # login page behind a login would loop.
            raise RouteNotFound(detail="a Gatehouse path was sent for a decision")
        admitted = await self._admit(
            facts, record, self._decision_login(call, original, record), span
        )
        if not isinstance(admitted, Admission):
            return admitted
        headers = self._allow_headers(
            admitted, facts, raw_headers, envoy=call.endpoint == "ext_authz"
        )
        # Written as it is: an aiohttp response object costs more than the decision.
        lines = [f"{name}: {value}".encode("latin-1") for name, value in headers]
        return request.send_whole(200, "OK", [*lines, b"Server: gatehouse"], b"")

    async def _own_path(
        self, request: Request, record: AuditRecord, first: dict[str, str], trusted: bool
    ) -> web.StreamResponse:
        """Login, callback, logout, JWKS on a decision listener, for the host the user sees."""
        cfg = self.config.listen
        path, query = canonicalise_target(request.raw_path, cfg.path)
        record.path = path
        self._check_audit()
        scheme = "https" if cfg.tls is not None else "http"
        authority, scheme = forwarded_origin(first, trusted, scheme)
        record.host = authority
        host = parse_host(authority)
        if host is None:
            raise BadHost(detail="Host (or a trusted X-Forwarded-Host) breaks host[:port]")
        first["host"] = authority
        facts = RequestFacts(
            method=request.method,
            scheme=scheme,
            host=host,
            path=path,
            query=query,
            client_ip=record.client_ip or "",
            headers=first,
            request_id=record.request_id,
        )
        if path.startswith(LOCAL_PREFIXES):
            local = await self._serve_local(request, facts, record)
            if local is not None:
                return local
        raise RouteNotFound(detail="a decision listener serves only decisions and its own paths")

    def _decision_login(
        self, call: DecisionCall, original: OriginalRequest, record: AuditRecord
    ) -> LoginAnswer:
        """Browsers are sent to sign in on the host they see; API calls get the plain 401.

        ``/.gatehouse/auth`` never redirects (nginx ``auth_request`` takes only
        2xx, 401 and 403): its 401 names the login URL in ``X-Gatehouse-Login``
        for the data plane to redirect to.
        """

        async def login(facts: RequestFacts) -> web.StreamResponse | None:
            auth = self.authenticator
            if auth is None or auth.browser is None or is_api_request(facts.method, facts.headers):
                return None
            location = login_location(original)
            if call.endpoint == "auth":
                answer = self._fail(AuthenticationError("unauthenticated"), record)
                answer.headers["X-Gatehouse-Login"] = location
                return answer
            return web.Response(
                status=302, headers={"Location": location, "Cache-Control": "no-store"}
            )

        return login

    def _allow_headers(
        self,
        admitted: Admission,
        facts: RequestFacts,
        raw_headers: list[tuple[str, str]],
        *,
        envoy: bool,
    ) -> list[tuple[str, str]]:
        """The 200's headers: what the data plane copies onto the upstream request (for
        Envoy also the ones it must remove: it cannot be configured to)."""
        route, identity, set_cookies, credentials = admitted
        headers = [("X-Request-Id", facts.request_id), ("Cache-Control", "no-store")]
        if identity is not None:
            headers += identity_headers(
                identity.subject,
                identity.email,
                identity.groups,
                names=self.config.identity_headers,
            )
        headers += credentials
        caller = facts.headers.get("authorization") if route.pass_authorization else None
        if caller and not any(name.lower() == "authorization" for name, _ in credentials):
            # The caller's own credential travels on, as a proxy listener would send it.
            headers.append(("Authorization", caller))
        cookie = upstream_cookie(raw_headers, self.cookie_prefixes)
        if cookie:
            # The caller's cookies without Gatehouse's session: what the upstream may see.
            headers.append(("Cookie", cookie))
        if envoy:
            removed = frozenset() if route.pass_authorization else self.credential_headers
            headers.append(("x-envoy-auth-headers-to-remove", envoy_removals(headers, removed)))
        headers += [("Set-Cookie", value) for value in set_cookies]
        return headers

    @staticmethod
    def _authorise_override(
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
            raise AccessDenied("method_override_denied")
        decision = policy.decide(route, facts._replace(method=override), identity, now)
        if decision.allowed:
            return
        if decision.reason == "unauthenticated":
            raise AuthenticationError("unauthenticated")
        raise AccessDenied(decision.reason)

    def _upstream_headers(
        self,
        raw_headers: list[tuple[str, str]],
        route: Route,
        facts: RequestFacts,
        identity: Identity | None,
        trace: TraceContext,
        rid: str,
        peer_ip: str,
        trusted: bool,
        chain: list[str],
        extra: list[tuple[str, str]],
    ) -> list[tuple[str, str]]:
        policy = header_policy_for(
            route, self.credential_headers, self.cookie_prefixes, self.identity_header_names
        )
        out = filter_request_headers(raw_headers, policy)
        out += forwarding_headers(
            peer_ip=peer_ip,
            peer_trusted=trusted,
            chain=chain,
            client_headers=facts.headers,
            scheme=facts.scheme,
            host=facts.headers.get("host", ""),
        )
        out.append(("X-Request-Id", rid))
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
        if extra:
            # A credential replaces any same-named header (e.g. a passed-through
            # Authorization): never two values for one credential header.
            replaced = {name.lower() for name, _ in extra}
            out = [(k, v) for k, v in out if k.lower() not in replaced]
            out += extra
        return out

    def _client_certificate(self, request: Request) -> ClientCertificate | None:
        if self.config.listen.tls is None or self.certificate_reader is None:
            return None
        transport = request.transport
        if transport is None:
            return None
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is None:
            return None
        der = ssl_object.getpeercert(binary_form=True)
        return self.certificate_reader(der) if der else None


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


def _context(record: AuditRecord) -> dict[str, str | None]:
    """The request's fields for a log record (``extra=``): JSON logs carry them as keys."""
    return {"request_id": record.request_id, "route": record.route, "backend": record.backend}


def _peer_ip(request: Request) -> str:
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    if isinstance(peer, tuple) and peer:
        return plain_address(str(peer[0]))
    return "unknown"
