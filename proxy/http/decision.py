"""Decision mode: which endpoint a data plane called, and the original request it describes.

A data plane (nginx ``auth_request``, Caddy ``forward_auth``, Traefik
``forwardAuth``, Envoy ``ext_authz``) asks Gatehouse about a request it holds
and will forward itself. Everything Gatehouse decides on comes from headers
the data plane writes, so these rules are the whole contract:

* only a peer in ``listen.trusted_proxies`` may ask (the caller checks);
* ``/.gatehouse/decide`` and ``/.gatehouse/auth``: the method from
  ``X-Forwarded-Method`` or ``X-Original-Method``, the target from
  ``X-Forwarded-Uri`` or ``X-Original-URI`` (both required), the host from
  ``X-Forwarded-Host``, else ``Host``;
* ``/.gatehouse/ext_authz/<original path>`` (Envoy's ``path_prefix``): the
  target is what follows the prefix, the method and the ``Host`` are the
  request's own; the forwarded method, target and host headers are ignored
  (Envoy passes client headers through, and they would only contradict it);
* the proto from ``X-Forwarded-Proto``, else the listener's scheme;
* two different values for one of these (two header names, or two lines of
  one name in any case or ``_`` spelling) is :class:`BadDecisionRequest`:
  two readers could take different ones;
* the target is canonicalised by the proxy's own rules
  (:mod:`proxy.http.canonical`) and must already *be* canonical: the data
  plane forwards the target as it was sent, so a decision on any other
  spelling (``/public/../admin``, ``//admin``, ``/%61dmin``) would be a
  decision on a path the upstream never receives;
* the host obeys the proxy's Host grammar (:mod:`proxy.http.host`).

Pure functions over plain data; the gateway does the I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Literal, NamedTuple
from urllib.parse import quote

from proxy.errors import BadDecisionRequest, BadHost, BadPath
from proxy.http.canonical import DEFAULT_OPTIONS, PathOptions, canonical_path, split_target
from proxy.http.headers import DEFAULT_IDENTITY_HEADERS, METHOD_OVERRIDE_HEADERS, PATH_HINTS
from proxy.http.host import parse_host

DECIDE_PATH = "/.gatehouse/decide"
AUTH_PATH = "/.gatehouse/auth"
EXT_AUTHZ_PREFIX = "/.gatehouse/ext_authz"
LOGIN_PATH = "/.gatehouse/login"

Endpoint = Literal["decide", "auth", "ext_authz"]

# What a 200 answer hands over. The data plane sets each one the answer carries
# on the upstream request and removes the client's own copy of each one it does
# not; a backend credential configured under another header name comes on top.
HANDED_OVER = (
    "X-Gatehouse-Subject",
    "X-Gatehouse-Email",
    "X-Gatehouse-Groups",
    "X-Gatehouse-Groups-Truncated",
    "X-Gatehouse-Assertion",
    "Authorization",
    "X-Serverless-Authorization",
    "Cookie",
)
# What the data plane removes from every client request before the upstream sees
# it, besides the X-Gatehouse-* namespace: other proxies' identity headers, path
# hints and method overrides (as a proxy listener does), and the API key header
# (identity.api_keys.header; Gatehouse's credential, not the upstream's).
CLIENT_HEADERS_REMOVED = tuple(
    sorted(DEFAULT_IDENTITY_HEADERS | PATH_HINTS | METHOD_OVERRIDE_HEADERS | {"x-api-key"})
)

# RFC 9110 §5.6.2 token; no method is longer than this in practice.
_METHOD = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}")

# Header fields that describe one aspect of the original request, by aspect.
_METHOD_FIELDS = ("x-forwarded-method", "x-original-method")
_URI_FIELDS = ("x-forwarded-uri", "x-original-uri")
_HOST_FIELDS = ("x-forwarded-host",)
_PROTO_FIELDS = ("x-forwarded-proto",)
_ID_FIELDS = ("x-request-id",)
_READ = frozenset(
    (*_METHOD_FIELDS, *_URI_FIELDS, *_HOST_FIELDS, *_PROTO_FIELDS, *_ID_FIELDS, "host")
)


class DecisionCall(NamedTuple):
    """A request to a decision endpoint; ``target`` is Envoy's original target (ext_authz)."""

    endpoint: Endpoint
    target: str = ""


class OriginalRequest(NamedTuple):
    """The request the data plane holds, as the decision stages read it.

    ``authority`` is the Host as the user sent it (with its port: login
    redirects and callback URLs need it); ``host`` its normalised form, the
    one routes match. ``path`` is canonical and equal to the path sent.
    """

    method: str
    path: str
    query: str
    authority: str
    host: str
    proto: str
    target: str


def decision_call(raw_target: str) -> DecisionCall | None:
    """The decision endpoint a request target names, or None for any other path.

    Compared as sent, never after canonicalisation: ``/.gatehouse/ext_authz/../x``
    is an ext_authz call about ``/../x`` (refused below), not a call to ``/x``.
    """
    if raw_target.startswith(EXT_AUTHZ_PREFIX + "/"):
        return DecisionCall("ext_authz", raw_target[len(EXT_AUTHZ_PREFIX) :])
    path = raw_target.partition("?")[0]
    if path == DECIDE_PATH:
        return DecisionCall("decide")
    if path == AUTH_PATH:
        return DecisionCall("auth")
    return None


def original_request(
    call: DecisionCall,
    method: str,
    headers: Sequence[tuple[str, str]],
    *,
    scheme: str,
    options: PathOptions = DEFAULT_OPTIONS,
) -> OriginalRequest:
    """Read the original request from a trusted data plane's decision request.

    ``method`` is the decision request's own method, ``headers`` its header
    lines as sent, ``scheme`` the listener's. Raises :class:`BadDecisionRequest`
    (missing or conflicting fields), :class:`RequestRejected` ``bad_path`` (a
    target the proxy would refuse, or one not in canonical form) and
    :class:`BadHost`.
    """
    fields = _fields(headers)
    proto = _one(fields, _PROTO_FIELDS, "proto")
    _one(fields, _ID_FIELDS, "request id")  # two ids: which one would the audit name?
    if call.endpoint == "ext_authz":
        target, authority = call.target, _one(fields, ("host",), "host") or ""
    else:
        original_method = _one(fields, _METHOD_FIELDS, "method")
        if original_method is None:
            raise BadDecisionRequest(detail="no X-Forwarded-Method or X-Original-Method")
        method = original_method
        target = _one(fields, _URI_FIELDS, "uri") or ""
        if not target:
            raise BadDecisionRequest(detail="no X-Forwarded-Uri or X-Original-URI")
        authority = _one(fields, _HOST_FIELDS, "host") or _one(fields, ("host",), "host") or ""
    if not _METHOD.fullmatch(method):
        raise BadDecisionRequest(detail="the original method is not an HTTP method token")
    if proto is None:
        proto = scheme
    elif proto.lower() in ("http", "https"):
        proto = proto.lower()
    else:
        raise BadDecisionRequest(detail="X-Forwarded-Proto is neither http nor https")
    host = parse_host(authority)
    if host is None:
        raise BadHost(detail="the original host breaks host[:port]")
    path, query = _canonical_target(target, options)
    return OriginalRequest(method, path, query, authority, host, proto, target)


# Header name as sent -> the field it is read as ("" for none): data planes send the
# same few names on every request. Bounded like the header filter's verdicts.
_FIELD_OF: dict[str, str] = {}
_MAX_NAMES = 256


def _field_of(name: str) -> str:
    found = _FIELD_OF.get(name)
    if found is None:
        norm = name.lower().replace("_", "-")
        found = norm if norm in _READ else ""
        if len(_FIELD_OF) < _MAX_NAMES and len(name) <= 64:
            _FIELD_OF[name] = found
    return found


def _fields(headers: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    """Every value of the fields this module reads, by lower-case ``-`` name."""
    out: dict[str, list[str]] = {}
    for name, value in headers:
        norm = _field_of(name)
        if norm:
            out.setdefault(norm, []).append(value.strip())
    return out


def _one(fields: dict[str, list[str]], names: tuple[str, ...], what: str) -> str | None:
    """The one value the fields ``names`` agree on; None when none is sent (or all empty).

    An empty value counts as not sent: a data plane writing an unset variable
    (nginx sends no header for one, others an empty one) states nothing.
    """
    found = None
    for name in names:
        for value in fields.get(name, ()):
            if not value or value == found:
                continue
            if found is not None:
                raise BadDecisionRequest(detail=f"two different values for the original {what}")
            found = value
    return found


def _canonical_target(target: str, options: PathOptions) -> tuple[str, str]:
    raw_path, query = split_target(target)
    path = canonical_path(raw_path, options)
    if path != raw_path:
        raise BadPath(
            detail="the original path is not canonical (the data plane forwards it as sent)",
        )
    return path, query


def envoy_removals(answer: Sequence[tuple[str, str]], extra: frozenset[str]) -> str:
    """``x-envoy-auth-headers-to-remove`` for an ext_authz allow: every header Envoy must
    take off the client's request because the answer does not replace it.

    Envoy's ``allowed_upstream_headers`` only overwrite headers an answer carries:
    a client's own ``Authorization`` (its token for Gatehouse) or a forged
    ``X-Gatehouse-Subject`` would otherwise reach the upstream when the answer
    has none. ``extra`` adds names (the API key header).
    """
    carried = {name.lower() for name, _ in answer}
    names = {name.lower() for name in HANDED_OVER} | set(CLIENT_HEADERS_REMOVED) | extra
    return ", ".join(sorted(names - carried))


def forwarded_origin(headers: Mapping[str, str], trusted: bool, scheme: str) -> tuple[str, str]:
    """The host (as sent, with its port) and scheme the user sees, for Gatehouse's own paths.

    A data plane routes ``/.gatehouse/login`` and the callback of the user's
    host to Gatehouse; a trusted one says which host in ``X-Forwarded-Host``
    and ``-Proto`` (``headers`` is the lower-case view). Anyone else's claims
    are ignored: the Host they sent is the host.
    """
    authority = headers.get("host", "")
    if trusted:
        authority = headers.get("x-forwarded-host", "").strip() or authority
        proto = headers.get("x-forwarded-proto", "").strip().lower()
        if proto in ("http", "https"):
            scheme = proto
    return authority, scheme


def login_location(original: OriginalRequest) -> str:
    """Where a browser signs in for ``original``: the login path on the host the user sees.

    Absolute, so a data plane can answer it as is (nginx's ``return 302``
    would otherwise build its own host and port); relative when the data
    plane named no host at all.
    """
    rd = original.path + (f"?{original.query}" if original.query else "")
    login = f"{LOGIN_PATH}?rd={quote(rd, safe='/')}"
    return f"{original.proto}://{original.authority}{login}" if original.authority else login
