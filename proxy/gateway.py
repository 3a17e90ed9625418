"""The request path: the stages of :mod:`proxy.stages`, in order.

This module only sequences them, turns a stage's
:class:`~proxy.errors.GatehouseError` into its answer (the status and reason
come from :mod:`proxy.errors`), and guarantees exactly one audit record and
one metrics observation per request, whatever happens
(:func:`proxy.stages.audit.finish`).

Route → authenticate → authorise → rate limit → upstream credentials is
:meth:`Gateway._admit`, shared by both listener modes: a proxy listener
forwards what it admits (:meth:`Gateway._proxy`); a decision listener
(``listen.mode: decision``) answers a data plane's question about a request
the data plane holds, with the headers to forward it with, and never
forwards (:meth:`Gateway._decide`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from proxy.config.schema import Config
from proxy.credentials.broker import CredentialBroker
from proxy.errors import (
    AuditUnavailable,
    GatehouseError,
    RouteNotFound,
    ShuttingDown,
    UpstreamError,
)
from proxy.http.decision import decision_call
from proxy.http.headers import COOKIE_PREFIXES, DEFAULT_IDENTITY_HEADERS, SINGLE_VALUED
from proxy.http.protocol import Request, Written
from proxy.http.responses import failure_response
from proxy.identity.authenticate import Authenticator
from proxy.model import RequestFacts
from proxy.observability import metrics
from proxy.observability.audit import AuditWriter
from proxy.policy_store import PolicyStore
from proxy.ratelimit import RateLimiter
from proxy.stages.audit import finish
from proxy.stages.authenticate import Authenticate
from proxy.stages.authorise import Authorise, LoginAnswer, LoginRequired, admitted
from proxy.stages.canonicalise import CertificateReader, canonical_target, request_facts
from proxy.stages.context import Admission, Answer, RequestContext
from proxy.stages.credentials import UpstreamCredentials
from proxy.stages.decide import allow_headers, decision_login, original_facts, own_path_facts
from proxy.stages.edge import read_edge
from proxy.stages.forward import Forward, HeaderNames
from proxy.stages.local import LOCAL_PREFIXES, LocalEndpoint, serve_local
from proxy.stages.ratelimit import RateLimit
from proxy.stages.route import find_route
from proxy.upstream.client import UpstreamClient
from proxy.upstream.pool import EndpointPool
from proxy.upstream.websocket import WebSocketLimits

if TYPE_CHECKING:
    from proxy.grants.service import GrantLookup
    from proxy.observability.tracing import Tracing
    from proxy.state.ratelimit import SharedRateLimiter

log = logging.getLogger("gatehouse.gateway")
_inflight = metrics.fast_gauge(metrics.INFLIGHT)


@dataclass
class Gateway:
    """Every component a request may need, given whole at construction."""

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

    def __post_init__(self) -> None:
        config = self.config
        listen = config.listen
        backends = config.backends
        browser = config.identity.browser
        api_keys = config.identity.api_keys
        credential = (
            frozenset({api_keys.header.lower().replace("_", "-")}) if api_keys else frozenset()
        )
        self.names = HeaderNames(
            credential=credential,
            # Cookies of ours (session, login state, chunks) that never reach an upstream.
            cookie_prefixes=(*COOKIE_PREFIXES, *((browser.cookie_name,) if browser else ())),
            identity=DEFAULT_IDENTITY_HEADERS | config.identity_headers.names(),
        )
        self.decision_listener = listen.mode == "decision"
        self.single_valued = SINGLE_VALUED | credential
        self.own_cookie_prefixes = tuple(p.lower() for p in self.names.cookie_prefixes)
        self.authenticate = Authenticate(
            self.authenticator,
            frozenset(
                name
                for name, backend in backends.items()
                if any(spec.type == "token_exchange" for spec in backend.credentials)
            ),
        )
        self.authorise = Authorise(self.grants)
        self.rate_limit = RateLimit(self.rate_limiter, listen.ipv6_rate_limit_prefix)
        self.upstream_credentials = UpstreamCredentials(self.credentials)
        self.forward = Forward(
            config,
            self.client,
            self.pools,
            self.credentials,
            self.names,
            WebSocketLimits(listen.websocket_max_message, listen.websocket_idle_timeout),
        )

    async def handle(self, request: Request) -> Answer:
        ctx = RequestContext(request, time.time(), time.perf_counter())
        if self.tracing is not None:
            ctx.span = self.tracing.request()
        _inflight.inc()
        answer: Answer | None = None
        try:
            if self.decision_listener:
                answer = await self._decide(ctx)
            else:
                answer = await self._proxy(ctx)
        except LoginRequired as login:
            answer = login.answer
        except GatehouseError as exc:
            answer = self._fail(exc, ctx)
        except asyncio.CancelledError:
            answer = self._cut_short(ctx)
        except Exception:
            log.exception(
                "unexpected failure handling request %s", ctx.request_id, extra=ctx.log_fields()
            )
            answer = self._fail(GatehouseError(), ctx)
        finally:
            _inflight.dec()
            finish(ctx, answer, self.audit)
        return answer

    async def _proxy(self, ctx: RequestContext) -> Answer:
        listen = self.config.listen
        edge = read_edge(ctx, listen, self.single_valued, self.own_cookie_prefixes)
        path, query = canonical_target(ctx, listen)
        self._check_audit()
        facts = request_facts(ctx, edge, path, query, listen, self.certificate_reader)
        if path.startswith(LOCAL_PREFIXES):
            local = await serve_local(ctx, self.local_endpoints, facts)
            if local is not None:
                return local
        admission = await self._admit(ctx, facts, self._login_page)
        return await self.forward(ctx, edge, facts, admission)

    async def _admit(
        self, ctx: RequestContext, facts: RequestFacts, login: LoginAnswer
    ) -> Admission:
        """Route → authenticate → authorise → rate limit → upstream credentials.

        Returns the admitted request; raises the phase error otherwise, or
        :class:`LoginRequired` with ``login``'s answer for a request that needs
        an identity and has none.
        """
        policy = self.policies.current
        route = find_route(ctx, policy, facts)
        identity, set_cookies = await self.authenticate(ctx, route, facts)
        now = time.time()
        decision, identity = await self.authorise(ctx, policy, route, facts, identity, now, login)
        if route.rate_limit is not None:  # tested here: most routes need no coroutine for it
            await self.rate_limit(route, facts, identity, now)
        admitted(ctx, route, decision, identity, now)
        credentials = (
            await self.upstream_credentials(ctx, route, identity) if self.credentials else []
        )
        return Admission(route, identity, set_cookies, credentials)

    async def _decide(self, ctx: RequestContext) -> Answer:
        """Answer a data plane's question about a request it holds; never forward.

        ``/.gatehouse/decide``, ``/auth`` and ``/ext_authz/...`` are decisions
        (trusted peers only); Gatehouse's own paths (login, callback, logout,
        JWKS) are served as on a proxy listener; anything else is 404.
        """
        request, listen = ctx.request, self.config.listen
        ctx.mode = "decision"
        ctx.path = request.path  # until the original request is known
        edge = read_edge(ctx, listen, self.single_valued, self.own_cookie_prefixes)
        call = decision_call(request.raw_path)
        if call is None:
            facts = own_path_facts(ctx, edge, listen)
            self._check_audit()
            local = await serve_local(ctx, self.local_endpoints, facts)
            if local is None:
                raise RouteNotFound(detail="no Gatehouse endpoint at this path")
            return local
        original, facts = original_facts(ctx, edge, call, listen)
        self._check_audit()
        login = decision_login(self.authenticator, call, original, self._fail, ctx)
        admission = await self._admit(ctx, facts, login)
        headers = allow_headers(
            admission,
            facts,
            edge,
            self.names,
            self.config.identity_headers,
            envoy=call.endpoint == "ext_authz",
        )
        # Written as it is: an aiohttp response object costs more than the decision.
        lines = [f"{name}: {value}".encode("latin-1") for name, value in headers]
        return request.send_whole(200, "OK", [*lines, b"Server: gatehouse"], b"")

    def _check_audit(self) -> None:
        """With ``audit.required``, nothing is served while the audit cannot be written."""
        if not self.audit.writable and self.config.audit.required:
            raise AuditUnavailable()

    async def _login_page(self, facts: RequestFacts) -> web.StreamResponse | None:
        """Pages get a login redirect; API calls a 401 (never a redirect)."""
        if self.authenticator is None:
            return None
        return await self.authenticator.login_response(facts)

    def _fail(self, exc: GatehouseError, ctx: RequestContext) -> web.Response:
        # ``decision`` stays as authorisation left it: an upstream failure after
        # an allow is still an allowed request that failed.
        ctx.reason = exc.reason
        if exc.detail:
            log.info(
                "request %s: %s (%s)",
                ctx.request_id,
                exc.reason,
                exc.detail,
                extra=ctx.log_fields(),
            )
        backend = ctx.backend
        if isinstance(exc, UpstreamError) and backend:
            metrics.child(metrics.UPSTREAM_ERRORS, backend, exc.reason).inc()
        return failure_response(exc, ctx.request_id)

    def _cut_short(self, ctx: RequestContext) -> Answer:
        """The server cancels a request only at the drain deadline: answer it 503 if
        nothing went out yet; a begun answer can only be cut short."""
        if ctx.request.started:
            ctx.reason = ShuttingDown.reason
            return Written(ctx.tally.upstream_status or 500)
        return self._fail(ShuttingDown(), ctx)
