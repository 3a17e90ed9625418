"""What a browser session keeps of the ID token, and what it treats as unknown (pure)."""

from __future__ import annotations

from pathlib import Path

from proxy.identity.config import ClaimMapping
from proxy.identity.session_claims import (
    needed_claims,
    session_claims,
    shedding_order,
    shrink,
)
from tests.policy.support import policy

ID_TOKEN = {
    "iss": "https://login.example.com",
    "sub": "alice",
    "aud": "gatehouse",
    "exp": 1,
    "iat": 0,
    "nonce": "n",
    "at_hash": "h",
    "auth_time": 0,
    "amr": ["pwd", "mfa"],
    "tid": "tenant",
    "groups": ["eng"],
    "_claim_names": {"roles": "src1"},
    "_claim_sources": {"src1": {"endpoint": "https://graph.example.com"}},
}


def test_a_session_keeps_every_claim_but_those_of_the_token_itself() -> None:
    kept, left_out = session_claims(ID_TOKEN)
    assert set(kept) == {"iss", "sub", "aud", "auth_time", "amr", "tid", "groups"}
    assert left_out == {"exp", "iat", "nonce", "at_hash", "_claim_names", "_claim_sources"}


def test_needed_claims_are_identity_mfa_tenant_and_the_roots_of_policy_paths() -> None:
    mapping = ClaimMapping(subject="oid", email="upn", groups=("realm_access.roles", "groups"))
    needed = needed_claims(mapping, ("department", "org.unit"))
    assert {"oid", "upn", "realm_access", "groups", "amr", "acr", "tid"} <= needed
    assert {"department", "org"} <= needed
    assert "name" not in needed


def test_claims_shed_largest_first_and_never_a_needed_one() -> None:
    claims = {"sub": "a", "name": "Al", "blob": "x" * 500, "bio": "y" * 50, "tid": "z" * 900}
    order = shedding_order(claims, needed_claims(ClaimMapping()))
    assert order == ["blob", "bio", "name"]


def test_a_session_keeps_the_claims_the_loaded_policy_reads(tmp_path: Path) -> None:
    policies = policy(
        tmp_path,
        """
        routes:
          - name: app
            path: /
            backend: up
            pass_claims: {claims: [department]}
            deny:
              - name: guests
                any:
                  - not: {claim: {path: tenant.kind, is: guest}}
                  - claim: {path: acct, exists: false}
            allow:
              - name: staff
                all:
                  - groups: [eng]
                  - claim: [{path: level, in: [senior]}]
        """,
        {"up"},
    )
    needed = needed_claims(ClaimMapping(), policies.referenced_claims)
    assert {"department", "tenant", "acct", "level", "groups"} <= needed
    claims = {"sub": "a", "department": "d" * 90, "tenant": {"kind": "x" * 90}, "bio": "b"}
    assert shedding_order(claims, needed) == ["bio"]


def _session() -> dict[str, object]:
    return {
        "claims": {"sub": "a", "groups": ["g"] * 50, "bio": "b" * 300, "nick": "n" * 30},
        "unknown": ["nonce"],
        "at": "t" * 200,
    }


def _weight(session: object) -> int:
    return len(repr(session))


def test_a_session_sheds_unneeded_claims_largest_first_then_the_access_token() -> None:
    needed = needed_claims(ClaimMapping())
    full = _weight(_session())
    without_bio = shrink(_session(), needed, lambda s: _weight(s) <= full - 300)
    assert without_bio is not None
    assert set(without_bio["claims"]) == {"sub", "groups", "nick"}
    assert without_bio["unknown"] == ["bio", "nonce"] and without_bio["at"] is not None
    lean = shrink(_session(), needed, lambda s: _weight(s) <= full - 520)
    assert lean is not None and lean["at"] is None
    assert set(lean["claims"]) == {"sub", "groups"} and lean["unknown"] == ["bio", "nick", "nonce"]


def test_a_session_that_fits_is_left_alone_and_one_that_never_fits_is_refused() -> None:
    needed = needed_claims(ClaimMapping())
    assert shrink(_session(), needed, lambda s: True) == _session()
    assert shrink(_session(), needed, lambda s: False) is None
