"""Header filtering between client, proxy and upstream (RFC 9110 §7.6.1).

Pure functions over ``(name, value)`` lists. Order matters and is fixed:
1. apply the client's ``Connection`` tokens and drop hop-by-hop headers
   (before anything of ours is added, so a client cannot name our headers
   in ``Connection`` to make us drop them: Traefik CVE-2024-45410);
2. drop every header in Gatehouse's namespaces, comparing names
   case-insensitively with ``_`` ≡ ``-`` (oauth2-proxy CVE-2025-64484);
3. add the proxy's own headers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import NamedTuple

from proxy.errors import AmbiguousRequest, IdentityTooLarge, Reason, RequestRejected

Headers = list[tuple[str, str]]

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    }
)

# Path hints some upstreams trust for routing (Envoy CVE-2023-27487,
# oauth2-proxy CVE-2026-40575): the canonical path is the only path.
PATH_HINTS = frozenset(
    {
        "x-forwarded-uri",
        "x-original-uri",
        "x-original-url",
        "x-rewrite-url",
        "x-envoy-original-path",
    }
)

# Headers the proxy computes itself; a client's copy is never passed on as is.
# Forwarding headers from trusted proxies are merged explicitly by the caller.
PROXY_COMPUTED = (
    frozenset(
        {
            "host",
            "forwarded",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "x-forwarded-port",
            "x-forwarded-prefix",
            "x-real-ip",
            "x-request-id",
            "traceparent",
            "tracestate",
            "expect",
            "content-length",
        }
    )
    | PATH_HINTS
)

# Identity headers other proxies use; an upstream migrating from them might
# still read them, so a client must never be able to set them.
DEFAULT_IDENTITY_HEADERS = frozenset(
    {
        "x-forwarded-user",
        "x-forwarded-email",
        "x-forwarded-groups",
        "x-forwarded-preferred-username",
        "x-forwarded-access-token",
        "x-auth-request-user",
        "x-auth-request-email",
        "x-auth-request-groups",
        "x-auth-request-access-token",
        "x-serverless-authorization",
    }
)

# Method overrides that Express, Symfony, ASP.NET and Rails-style frameworks
# honour: a POST the policy allowed would run as the DELETE it did not. Never
# forwarded unless the route opts in (and then its policy decides both methods).
METHOD_OVERRIDE_HEADERS = frozenset(
    {"x-http-method-override", "x-http-method", "x-method-override"}
)


@dataclass(frozen=True, slots=True)
class IdentityHeaders:
    """The headers that tell an upstream who called (``identity.headers``).

    ``X-Forwarded-User/Email/Groups`` suit an upstream written for
    oauth2-proxy. A client's copy of any configured name, in any spelling, is
    dropped like every other identity header.
    """

    subject: str = "X-Gatehouse-Subject"
    email: str = "X-Gatehouse-Email"
    groups: str = "X-Gatehouse-Groups"

    @property
    def groups_truncated(self) -> str:
        return f"{self.groups}-Truncated"

    def names(self) -> frozenset[str]:
        """Normalised names (lower case, ``_`` as ``-``)."""
        return frozenset(
            normalise_name(n)
            for n in (self.subject, self.email, self.groups, self.groups_truncated)
        )


DEFAULT_IDENTITY_NAMES = IdentityHeaders()

NAMESPACE_PREFIX = "x-gatehouse-"
COOKIE_PREFIXES = ("__Host-gatehouse", "gatehouse")

# Fields that carry one value: a second line (or a second spelling, "_" for
# "-", another case) lets two readers act on different values, e.g. the proxy
# authenticating the first Authorization and the upstream reading the last.
SINGLE_VALUED = frozenset({"authorization", "host", "content-length"}) | METHOD_OVERRIDE_HEADERS
# List-valued fields whose lines are read as one comma-joined list (RFC 9110
# §5.3): a trusted proxy may add its own line rather than extend the client's.
_JOINED = frozenset({"x-forwarded-for", "forwarded"})


def request_view(
    headers: Sequence[tuple[str, str]],
    single_valued: frozenset[str] = SINGLE_VALUED,
    cookie_prefixes: tuple[str, ...] = (),
) -> dict[str, str]:
    """Lower-case name → value: the view routing, identity and policy read.

    The first line's value, except for the list-valued forwarding fields, whose
    lines are joined in order. Raises :class:`AmbiguousRequest` when a field
    of ``single_valued`` (normalised names) comes twice in any spelling, or
    when a cookie whose name starts with one of ``cookie_prefixes``
    (lower-case) is sent twice.
    """
    out: dict[str, str] = {}
    seen: set[str] = set()
    cookie_lines: list[str] = []
    for name, value in headers:
        lower = name.lower()
        norm = lower.replace("_", "-") if "_" in lower else lower
        if norm in single_valued:
            if norm in seen:
                raise AmbiguousRequest(detail=f"{norm} sent more than once")
            seen.add(norm)
        elif norm == "cookie":
            cookie_lines.append(value)
        prior = out.get(lower)
        if prior is None:
            out[lower] = value
        elif lower in _JOINED:
            out[lower] = f"{prior}, {value}"
    if cookie_lines and cookie_prefixes:
        _check_own_cookies(cookie_lines, cookie_prefixes)
    return out


def _check_own_cookies(lines: list[str], prefixes: tuple[str, ...]) -> None:
    """Each of our cookies at most once, whatever the case of its name."""
    lowered = [line.lower() for line in lines]
    if not any(prefix in line for line in lowered for prefix in prefixes):
        return  # the common case: no cookie of ours at all
    names: set[str] = set()
    for line in lowered:
        for part in line.split(";"):
            name = part.split("=", 1)[0].strip()
            if name.startswith(prefixes):
                if name in names:
                    raise AmbiguousRequest(detail="a gatehouse cookie sent more than once")
                names.add(name)


_METHOD = re.compile(r"[A-Z]{1,20}")


def method_override(view: Mapping[str, str]) -> str | None:
    """The method a request asks to be run as (``X-HTTP-Method-Override`` & co), if any.

    ``view`` is :func:`request_view`'s (each override header at most once).
    Raises :class:`AmbiguousRequest` when two of them disagree, and
    :class:`RequestRejected` when the value is not an upper-case method name.
    """
    found: set[str] = set()
    for name, value in view.items():
        if normalise_name(name) in METHOD_OVERRIDE_HEADERS:
            found.add(value.strip())
    if not found:
        return None
    if len(found) > 1:
        raise AmbiguousRequest(detail="method overrides disagree")
    method = found.pop()
    if not _METHOD.fullmatch(method):
        raise RequestRejected(Reason.BAD_REQUEST, detail="a method override is not a method name")
    return method


def normalise_name(name: str) -> str:
    """Lower-case with ``_`` folded to ``-``: how some servers read header names."""
    return name.lower().replace("_", "-")


_NO_TOKENS: frozenset[str] = frozenset()


def _parse_tokens(value: str) -> frozenset[str]:
    return frozenset(t.strip().lower() for t in value.split(",") if t.strip())


# Clients send the same few short values ("keep-alive", "close") on every request;
# long ones are parsed each time rather than kept.
_common_tokens = lru_cache(maxsize=256)(_parse_tokens)


def _tokens_of(value: str) -> frozenset[str]:
    return _common_tokens(value) if len(value) <= 64 else _parse_tokens(value)


def connection_tokens(headers: Iterable[tuple[str, str]]) -> frozenset[str]:
    tokens = _NO_TOKENS
    for name, value in headers:
        # The length test spares a lower() for nearly every header.
        if len(name) == 10 and name.lower() == "connection":
            tokens = tokens | _tokens_of(value) if tokens else _tokens_of(value)
    return tokens


def _extra_tokens(headers: Iterable[tuple[str, str]]) -> frozenset[str]:
    """Connection tokens that name more than the hop-by-hop headers dropped anyway."""
    tokens = connection_tokens(headers)
    return tokens - HOP_BY_HOP if tokens else tokens


# What the filter does with a header name under one policy (connection tokens aside).
_KEEP, _DROP, _COOKIE = 0, 1, 2
# Names remembered per policy (one per route) and for responses: header names
# repeat across requests, but a client can send any, so both the count and the
# length of what is kept are bounded (worst case: routes x 128 short names).
_MAX_VERDICTS = 128
_MAX_REMEMBERED_NAME = 64


@dataclass(frozen=True, slots=True)
class RequestHeaderPolicy:
    """What one route lets through; built once per route, reused per request."""

    pass_authorization: bool = False
    pass_cookies: bool = False
    pass_method_override: bool = False
    remove: frozenset[str] = frozenset()  # normalised names
    set: tuple[tuple[str, str], ...] = ()
    identity_headers: frozenset[str] = DEFAULT_IDENTITY_HEADERS
    cookie_prefixes: tuple[str, ...] = COOKIE_PREFIXES
    # Header name (as sent) → verdict: the checks below run once per distinct name.
    _verdicts: dict[str, int] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    def verdict(self, name: str) -> int:
        found = self._verdicts.get(name)
        if found is not None:
            return found
        lower = name.lower()
        norm = lower.replace("_", "-") if "_" in lower else lower
        if (
            lower in HOP_BY_HOP
            or norm in PROXY_COMPUTED
            or norm in HOP_BY_HOP
            or norm.startswith(NAMESPACE_PREFIX)
            or (norm in METHOD_OVERRIDE_HEADERS and not self.pass_method_override)
            or norm in self.identity_headers
            or norm in self.remove
            or (norm == "authorization" and not self.pass_authorization)
        ):
            verdict = _DROP
        elif norm == "cookie" and not self.pass_cookies:
            verdict = _COOKIE
        else:
            verdict = _KEEP
        if len(self._verdicts) < _MAX_VERDICTS and len(name) <= _MAX_REMEMBERED_NAME:
            self._verdicts[name] = verdict
        return verdict


DEFAULT_REQUEST_POLICY = RequestHeaderPolicy()


def _strip_gatehouse_cookies(value: str, prefixes: tuple[str, ...]) -> str:
    kept = [
        part
        for part in (p.strip() for p in value.split(";"))
        if part and not part.split("=", 1)[0].strip().startswith(prefixes)
    ]
    return "; ".join(kept)


def upstream_cookie(headers: Sequence[tuple[str, str]], prefixes: tuple[str, ...]) -> str | None:
    """The ``Cookie`` an upstream may see: the client's cookie lines, joined, without
    Gatehouse's own; None when the client sent no cookie (empty when all were ours)."""
    lines = [value for name, value in headers if len(name) == 6 and name.lower() == "cookie"]
    if not lines:
        return None
    kept = (_strip_gatehouse_cookies(line, prefixes) for line in lines)
    return "; ".join(value for value in kept if value)


def filter_request_headers(
    headers: Sequence[tuple[str, str]], policy: RequestHeaderPolicy = DEFAULT_REQUEST_POLICY
) -> Headers:
    """The client's end-to-end headers that may travel upstream, in their order."""
    drop_tokens = _extra_tokens(headers)
    known = policy._verdicts
    out: Headers = []
    for name, value in headers:
        action = known.get(name)
        if action is None:
            action = policy.verdict(name)
        if action == _DROP or (drop_tokens and name.lower() in drop_tokens):
            continue
        if action == _COOKIE:
            value = _strip_gatehouse_cookies(value, policy.cookie_prefixes)
            if not value:
                continue
        out.append((name, value))
    out.extend(policy.set)
    return out


class ResponseHeaders(NamedTuple):
    """The upstream's headers that go on to the client, as ``Name: value`` head lines."""

    lines: list[bytes]
    has_server: bool
    has_date: bool


# What the response filter does with a header name (connection tokens aside).
_PASS, _OMIT, _SERVER, _DATE, _CONNECTION = range(5)
# Response header name (as sent) → verdict; bounded like the request verdicts.
_RESPONSE_VERDICTS: dict[bytes, int] = {}
_HOP_BY_HOP_BYTES = frozenset(name.encode() for name in HOP_BY_HOP)
# Dropped besides hop-by-hop: the proxy frames what it sends, and its request id
# replaces the upstream's (one id per exchange).
_RESPONSE_REPLACED = frozenset({b"content-length", b"x-request-id"})


def _response_verdict(name: bytes) -> int:
    lower = name.lower()
    if lower == b"connection":
        verdict = _CONNECTION
    elif lower in _HOP_BY_HOP_BYTES or lower in _RESPONSE_REPLACED:
        verdict = _OMIT
    elif lower == b"server":
        verdict = _SERVER
    elif lower == b"date":
        verdict = _DATE
    else:
        verdict = _PASS
    if len(_RESPONSE_VERDICTS) < _MAX_VERDICTS and len(name) <= _MAX_REMEMBERED_NAME:
        _RESPONSE_VERDICTS[name] = verdict
    return verdict


def _parse_response_tokens(value: bytes) -> frozenset[bytes]:
    """The names a ``Connection`` value adds to the hop-by-hop ones."""
    tokens = frozenset(t.strip().lower() for t in value.split(b",") if t.strip())
    return tokens - _HOP_BY_HOP_BYTES


_common_response_tokens = lru_cache(maxsize=256)(_parse_response_tokens)


def filter_response_headers(headers: Sequence[tuple[bytes, bytes]]) -> ResponseHeaders:
    """The upstream's end-to-end response headers that may travel to the client.

    Works on the bytes as received, in one pass: a response's headers are
    copied, not read, so they are never decoded and encoded again. Dropped:
    hop-by-hop headers and those the upstream's ``Connection`` names, its
    ``Content-Length`` (the proxy frames what it sends) and its
    ``X-Request-Id`` (the proxy's replaces it: one id per exchange).
    """
    known = _RESPONSE_VERDICTS
    lines: list[bytes] = []
    has_server = has_date = False
    extra: frozenset[bytes] = frozenset()
    for name, value in headers:
        verdict = known.get(name)
        if verdict is None:
            verdict = _response_verdict(name)
        if verdict == _PASS:
            lines.append(name + b": " + value)
        elif verdict == _SERVER:
            has_server = True
            lines.append(name + b": " + value)
        elif verdict == _DATE:
            has_date = True
            lines.append(name + b": " + value)
        elif verdict == _CONNECTION:
            parse = _common_response_tokens if len(value) <= 64 else _parse_response_tokens
            extra |= parse(value)
    if extra:
        # Connection named end-to-end headers, maybe ahead of it: drop those too
        # (and Connection itself, dropped anyway, so this recursion ends here).
        extra |= {b"connection"}
        return filter_response_headers([(n, v) for n, v in headers if n.lower() not in extra])
    return ResponseHeaders(lines, has_server, has_date)


# Printable ASCII (space to "~"): sent as is, except the characters below.
_PRINTABLE = frozenset(chr(c) for c in range(0x20, 0x7F))
IDENTITY_VALUE_LIMIT = 4096


def encode_identity_value(value: str, also: str = "") -> str:
    """``value`` made safe for a header without losing or merging anything.

    Claims are attacker-influenced strings (a user may pick a display name or
    an unverified email). Stripping characters merged distinct values
    (``adm,in`` and ``admin``, ``alice\u200b`` and ``alice``); instead any
    character outside printable ASCII, ``%`` itself, and the characters in
    ``also`` (``,`` for group lists) are percent-encoded as UTF-8 (RFC 3986
    §2.1). Every other value, nearly all of them, is sent exactly as it is:
    an upstream that percent-decodes always gets the original back.
    """
    if "%" not in value and _PRINTABLE.issuperset(value) and not (also and _has_any(value, also)):
        return value
    return "".join(_encode_char(c, also) for c in value)


def _has_any(value: str, chars: str) -> bool:
    return any(c in value for c in chars)


def _encode_char(c: str, also: str) -> str:
    if c in _PRINTABLE and c != "%" and c not in also:
        return c
    return "".join(f"%{b:02X}" for b in c.encode("utf-8", "surrogatepass"))


def identity_headers(
    subject: str,
    email: str | None,
    groups: Iterable[str],
    groups_budget: int = IDENTITY_VALUE_LIMIT,
    names: IdentityHeaders = DEFAULT_IDENTITY_NAMES,
) -> Headers:
    """Subject, email and groups headers telling the upstream who called.

    Named by ``names`` (``X-Gatehouse-Subject/Email/Groups`` by default).
    Values are encoded with :func:`encode_identity_value`. A subject or email
    over the budget raises :class:`IdentityTooLarge` (cutting it could name
    somebody else). Groups are cut at ``groups_budget`` bytes on a group
    boundary, in sorted order, and then ``<groups header>-Truncated: true``
    says so: an upstream that needs every group verifies the signed
    assertion, which carries them all.
    """
    if isinstance(groups, frozenset):
        # An identity's values do not change; cached identities repeat them per request.
        return list(_identity_headers(subject, email, groups, groups_budget, names))
    return _build_identity_headers(subject, email, groups, groups_budget, names)


@lru_cache(maxsize=4096)
def _identity_headers(
    subject: str,
    email: str | None,
    groups: frozenset[str],
    groups_budget: int,
    names: IdentityHeaders,
) -> tuple[tuple[str, str], ...]:
    return tuple(_build_identity_headers(subject, email, groups, groups_budget, names))


def _build_identity_headers(
    subject: str,
    email: str | None,
    groups: Iterable[str],
    groups_budget: int,
    names: IdentityHeaders,
) -> Headers:
    out: Headers = [(names.subject, _bounded(subject))]
    if email:
        out.append((names.email, _bounded(email)))
    joined: list[str] = []
    size = 0
    truncated = False
    for group in sorted(groups):
        g = encode_identity_value(group, ",")
        if not g:
            continue
        if size + len(g) + 1 > groups_budget:
            truncated = True  # a bounded header beats a 431 from the upstream
            break
        joined.append(g)
        size += len(g) + 1
    if joined:
        out.append((names.groups, ",".join(joined)))
    if truncated:
        out.append((names.groups_truncated, "true"))
    return out


def _bounded(value: str) -> str:
    encoded = encode_identity_value(value)
    if len(encoded) > IDENTITY_VALUE_LIMIT:
        raise IdentityTooLarge(detail="a subject or email too long to pass upstream")
    return encoded


def serialise_head(lines: list[str] | list[bytes]) -> bytes:
    """A start line and header lines as the bytes of an HTTP/1.1 head.

    Refuses a CR or LF inside any line: one smuggled into a value (a token
    from an endpoint, a header an upstream sent) would start a header, or a
    message, of its own. Requests are built as text, responses relayed as
    bytes; the rule is the same.
    """
    breaks = len(lines) - 1
    if lines and isinstance(lines[0], bytes):
        head = b"\r\n".join(lines)
        if head.count(b"\n") != breaks or head.count(b"\r") != breaks:
            raise ValueError("line break inside a header")
        return head + b"\r\n\r\n"
    text = "\r\n".join(lines)  # type: ignore[arg-type]
    if text.count("\n") != breaks or text.count("\r") != breaks:
        raise ValueError("line break inside a header")
    return (text + "\r\n\r\n").encode("latin-1")
