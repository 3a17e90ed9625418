"""The plain types every layer may read: the request as the decision stages see
it, who is calling, and the view of a route that the credential layer needs.

Data only: no I/O, no imports from the rest of Gatehouse. The HTTP edge builds
:class:`RequestFacts`, the identity layer :class:`Identity`; routing, policy,
credentials, grants and audit read them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol

AuthMethod = Literal["jwt", "opaque", "session", "apikey", "mtls"]


@dataclass(frozen=True, slots=True)
class ClientCertificate:
    """A client certificate the TLS layer verified against the configured client CA."""

    subject_cn: str | None
    san_uris: tuple[str, ...]
    san_dns: tuple[str, ...]
    fingerprint_sha256: str  # lower-case hex, no separators
    der: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class HeldGrant:
    """A just-in-time grant the caller holds on the matched route: for which rule,
    and its window ``[starts_at, ends_at)`` (see :mod:`proxy.grants`)."""

    id: str
    rule: str
    starts_at: float
    ends_at: float

    def covers(self, now: float) -> bool:
        return self.starts_at <= now < self.ends_at


@dataclass(frozen=True, slots=True)
class Identity:
    """A caller established by one authentication method.

    ``claims`` is the verified claim set (JWT/introspection/session) or a small
    synthesised one (API key, mTLS); policy matches on it. ``token`` is the
    caller's own credential, kept only for token exchange and never logged.

    ``unknown_claims`` names claims whose value cannot be known from what was
    received (dropped from a size-bounded browser session, or cut by the IdP's
    group overage, ``_claim_names``): a criterion on one of them evaluates to
    unknown, never to "absent", so a deny rule on it fails closed.
    ``email_verified`` is the issuer's ``email_verified`` claim (None when the
    issuer did not say).

    ``grants`` are the caller's approved just-in-time grants on the matched
    route, filled in before authorisation only for routes with ``grant``
    rules (the policy reads them as data; empty everywhere else).
    """

    subject: str
    issuer: str
    method: AuthMethod
    email: str | None = None
    groups: frozenset[str] = frozenset()
    scopes: frozenset[str] = frozenset()
    claims: Mapping[str, Any] = field(default_factory=dict)
    expires_at: float | None = None
    client_cert: ClientCertificate | None = None
    unknown_claims: frozenset[str] = frozenset()
    email_verified: bool | None = None
    grants: tuple[HeldGrant, ...] = ()
    token: str | None = field(default=None, repr=False, compare=False)


class RequestFacts(NamedTuple):
    """What routing and policy may look at.

    Immutable like a frozen dataclass; a named tuple because one is built per
    request and a frozen dataclass takes more than twice as long to build.

    ``host`` is normalised once, at the edge (:func:`proxy.http.host.parse_host`:
    lower case, no port, no trailing dot); routing compares it as it is.
    ``path`` is the canonical path (see :mod:`proxy.http.canonical`): the one
    used for matching and the one the upstream receives. ``client_ip`` is the
    trusted client address (the peer, or the X-Forwarded-For entry appended by
    the last trusted proxy). ``headers`` maps lower-case names to values.
    """

    method: str
    scheme: str
    host: str
    path: str
    query: str
    client_ip: str
    headers: Mapping[str, str]
    client_cert: ClientCertificate | None = None
    request_id: str = ""  # for error bodies built outside the gateway (login endpoints)


class RouteView(Protocol):
    """What the credential layer reads of a route (``proxy.policy.model.Route``)."""

    @property
    def name(self) -> str: ...

    @property
    def pass_authorization(self) -> bool: ...

    @property
    def pass_claims(self) -> tuple[str, ...]: ...

    @property
    def pass_claims_max_bytes(self) -> int: ...
