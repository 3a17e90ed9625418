"""Decide (decision mode): answer a data plane's question about a request it holds.

The original request is read from the data plane's headers
(:mod:`proxy.http.decision`, trusted peers only) and goes through the same
stages as a forwarded one; an allow answer is a 200 whose headers the data
plane copies onto the upstream request (identity, the caller's credential
where the route passes it, the backend's credential, cookies without
Gatehouse's). Browsers that must sign in are sent to the login on the host
they see.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from proxy.errors import (
    BadHost,
    CredentialsRequired,
    GatehouseError,
    RouteNotFound,
    UntrustedPeer,
)
from proxy.http.config import ListenConfig
from proxy.http.decision import (
    DecisionCall,
    OriginalRequest,
    envoy_removals,
    forwarded_origin,
    login_location,
    original_request,
)
from proxy.http.headers import IdentityHeaders, identity_headers, upstream_cookie
from proxy.http.host import parse_host
from proxy.identity.authenticate import Authenticator
from proxy.identity.redirects import is_api_request
from proxy.model import RequestFacts
from proxy.stages.authorise import LoginAnswer
from proxy.stages.canonicalise import canonical_target
from proxy.stages.context import Admission, Edge, RequestContext
from proxy.stages.forward import HeaderNames
from proxy.stages.local import LOCAL_PREFIXES


def original_facts(
    ctx: RequestContext, edge: Edge, call: DecisionCall, listen: ListenConfig
) -> tuple[OriginalRequest, RequestFacts]:
    """The request the data plane holds, as the stages read it (403 from an untrusted peer)."""
    if not edge.trusted:
        raise UntrustedPeer(detail=f"decision request from {edge.peer_ip}, not a trusted proxy")
    request = ctx.request
    original = original_request(
        call, request.method, edge.raw_headers, scheme=listen.scheme, options=listen.path
    )
    ctx.method, ctx.host, ctx.path = original.method, original.authority, original.path
    if original.path.startswith(LOCAL_PREFIXES):
        # The data plane must route these to Gatehouse, not ask about them: a
        # login page behind a login would loop.
        raise RouteNotFound(detail="a Gatehouse path was sent for a decision")
    edge.first["host"] = original.authority  # the host the user sees, for the login endpoints
    return original, RequestFacts(
        method=original.method,
        scheme=original.proto,
        host=original.host,
        path=original.path,
        query=original.query,
        client_ip=edge.client_ip,
        headers=edge.first,
        client_cert=None,  # the TLS client here is the data plane, never the caller
        request_id=edge.request_id,
    )


def own_path_facts(ctx: RequestContext, edge: Edge, listen: ListenConfig) -> RequestFacts:
    """Login, callback, logout, JWKS on a decision listener, for the host the user sees."""
    request = ctx.request
    path, query = canonical_target(ctx, listen)
    authority, scheme = forwarded_origin(edge.first, edge.trusted, listen.scheme)
    ctx.host = authority
    host = parse_host(authority)
    if host is None:
        raise BadHost(detail="Host (or a trusted X-Forwarded-Host) breaks host[:port]")
    edge.first["host"] = authority
    if not path.startswith(LOCAL_PREFIXES):
        raise RouteNotFound(detail="a decision listener serves only decisions and its own paths")
    return RequestFacts(
        method=request.method,
        scheme=scheme,
        host=host,
        path=path,
        query=query,
        client_ip=edge.client_ip,
        headers=edge.first,
        request_id=edge.request_id,
    )


def decision_login(
    authenticator: Authenticator | None,
    call: DecisionCall,
    original: OriginalRequest,
    fail: Callable[[GatehouseError, RequestContext], web.Response],
    ctx: RequestContext,
) -> LoginAnswer:
    """Browsers are sent to sign in on the host they see; API calls get the plain 401.

    ``/.gatehouse/auth`` never redirects (nginx ``auth_request`` takes only
    2xx, 401 and 403): its 401 names the login URL in
    ``X-Gatehouse-Login`` for the data plane to redirect to.
    """

    async def login(facts: RequestFacts) -> web.StreamResponse | None:
        if (
            authenticator is None
            or authenticator.browser is None
            or is_api_request(facts.method, facts.headers)
        ):
            return None
        location = login_location(original)
        if call.endpoint == "auth":
            answer = fail(CredentialsRequired(), ctx)
            answer.headers["X-Gatehouse-Login"] = location
            return answer
        return web.Response(status=302, headers={"Location": location, "Cache-Control": "no-store"})

    return login


def allow_headers(
    admission: Admission,
    facts: RequestFacts,
    edge: Edge,
    names: HeaderNames,
    identity_names: IdentityHeaders,
    *,
    envoy: bool,
) -> list[tuple[str, str]]:
    """The 200's headers: what the data plane copies onto the upstream request (for
    Envoy also the ones it must remove: it cannot be configured to)."""
    route, identity, set_cookies, credentials = admission
    headers = [("X-Request-Id", facts.request_id), ("Cache-Control", "no-store")]
    if identity is not None:
        headers += identity_headers(
            identity.subject, identity.email, identity.groups, names=identity_names
        )
    headers += credentials
    caller = facts.headers.get("authorization") if route.pass_authorization else None
    if caller and not any(name.lower() == "authorization" for name, _ in credentials):
        # The caller's own credential travels on, as a proxy listener would send it.
        headers.append(("Authorization", caller))
    cookie = upstream_cookie(edge.raw_headers, names.cookie_prefixes)
    if cookie:
        # The caller's cookies without Gatehouse's session: what the upstream may see.
        headers.append(("Cookie", cookie))
    if envoy:
        removed = frozenset() if route.pass_authorization else names.credential
        headers.append(("x-envoy-auth-headers-to-remove", envoy_removals(headers, removed)))
    headers += [("Set-Cookie", value) for value in set_cookies]
    return headers
