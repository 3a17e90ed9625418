"""Who is calling: the verified identity every later stage works from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

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
    token: str | None = field(default=None, repr=False, compare=False)
