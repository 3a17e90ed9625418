"""What a browser session keeps of the ID token's claims, and what it marks unknown (pure).

A session keeps every claim of the ID token except those describing the token
itself (``nonce``, ``at_hash``, ``iat``...), so criteria such as ``mfa``
(``amr``/``acr``), ``claim: {path: tid}`` and a route's ``pass_claims`` see
the same claims for a browser as for a bearer token. When the session must
shrink to fit the cookies the listener accepts, claims nothing needs go first,
largest first. A claim the ID token had and the session does not keep is
*unknown* (``Identity.unknown_claims``), never absent: a deny rule on it must
not pass.

*Needed* claims are never dropped: who the caller is (subject, email, groups
as configured for the issuer), ``amr``/``acr``/``tid``, and every claim the
loaded policy reads (``PolicySet.referenced_claims``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson

from proxy.identity.config import ClaimMapping

# Claims of one token instance: meaningless for a session that outlives it.
TOKEN_CLAIMS = frozenset({"nonce", "at_hash", "c_hash", "s_hash", "iat", "nbf", "exp", "jti"})
# Distributed-claims pointers: what they point at is recorded as unknown instead.
POINTER_CLAIMS = frozenset({"_claim_names", "_claim_sources"})
# Read by criteria without being named in a rule: ``mfa`` reads amr/acr, and the
# tenant (``tid``) is what multi-tenant deny rules are written on.
ESSENTIAL = frozenset({"iss", "sub", "aud", "email", "email_verified", "amr", "acr", "tid"})


def root(path: str) -> str:
    """The top-level claim a dotted claim path starts at."""
    return path.split(".", 1)[0]


def needed_claims(mapping: ClaimMapping, in_use: Iterable[str] = ()) -> frozenset[str]:
    """Top-level claims a session never drops: identity, mfa/tenant, and ``in_use``
    (the claim paths the policy reads)."""
    paths = (mapping.subject, mapping.email, *mapping.groups, *in_use)
    return ESSENTIAL | {root(p) for p in paths if p}


def session_claims(claims: Mapping[str, Any]) -> tuple[dict[str, Any], frozenset[str]]:
    """The claims a session keeps of an ID token's, and the names it leaves out."""
    left_out = TOKEN_CLAIMS | POINTER_CLAIMS
    kept = {name: value for name, value in claims.items() if name not in left_out}
    return kept, frozenset(name for name in claims if name in left_out)


def shedding_order(claims: Mapping[str, Any], needed: frozenset[str]) -> list[str]:
    """Claims that may be dropped to fit a budget, largest first (ties by name)."""
    optional = [name for name in claims if name not in needed]
    return sorted(optional, key=lambda name: (-_size(claims[name]), name))


def shrink(
    session: Mapping[str, Any], needed: frozenset[str], fits: Callable[[Mapping[str, Any]], bool]
) -> dict[str, Any] | None:
    """``session`` made small enough that ``fits`` holds, or None when it cannot be.

    Claims nothing needs go first, largest first, each becoming unknown; then
    the access token (only token exchange uses it). Needed claims never go.
    """
    fitted = dict(session)
    if fits(fitted):
        return fitted
    claims = dict(session.get("claims") or {})
    unknown = set(session.get("unknown") or ())
    for name in shedding_order(claims, needed):
        del claims[name]
        unknown.add(name)
        fitted = {**fitted, "claims": dict(claims), "unknown": sorted(unknown)}
        if fits(fitted):
            return fitted
    if fitted.get("at") is not None:
        fitted = {**fitted, "at": None}
        if fits(fitted):
            return fitted
    return None


def _size(value: Any) -> int:
    try:
        return len(orjson.dumps(value))
    except TypeError:
        return 0
