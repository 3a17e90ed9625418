"""Claims an issuer pointed elsewhere are unknown, not absent (Entra group overage)."""

from __future__ import annotations

from proxy.identity.config import ClaimMapping, IssuerConfig
from proxy.identity.jwt_verify import identity_from_claims
from proxy.identity.overage import overage_claims

ENTRA_OVERAGE = {
    "sub": "alice",
    "_claim_names": {"groups": "src1"},
    "_claim_sources": {"src1": {"endpoint": "https://graph.microsoft.com/v1.0/users/x"}},
}


def test_entra_group_overage_makes_groups_unknown() -> None:
    assert overage_claims(ENTRA_OVERAGE) == {"groups"}


def test_a_claim_named_as_distributed_but_present_is_known() -> None:
    claims = {**ENTRA_OVERAGE, "groups": ["eng"]}
    assert overage_claims(claims) == frozenset()


def test_implicit_flow_hasgroups_makes_groups_unknown() -> None:
    assert overage_claims({"sub": "alice", "hasgroups": True}) == {"groups"}
    assert overage_claims({"sub": "alice", "hasgroups": False}) == frozenset()


def test_any_distributed_claim_is_unknown_and_a_cut_group_path_makes_groups_unknown() -> None:
    claims = {"sub": "alice", "_claim_names": {"roles": "src1", "department": "src2"}}
    assert overage_claims(claims) == {"roles", "department"}
    assert overage_claims(claims, ("roles",)) == {"roles", "department", "groups"}
    assert overage_claims(claims, ("realm_access.roles",)) == {"roles", "department"}


def test_malformed_pointers_are_ignored() -> None:
    assert overage_claims({"sub": "a", "_claim_names": ["groups"]}) == frozenset()
    assert overage_claims({"sub": "a", "_claim_names": {"": "s", 3: "s"}}) == frozenset()


def test_every_identity_from_a_token_carries_its_overage_as_unknown_claims() -> None:
    cfg = IssuerConfig(
        issuer="https://login.example.com", audiences=("api",), claims=ClaimMapping()
    )
    identity = identity_from_claims(ENTRA_OVERAGE, cfg, "jwt", None)
    assert identity.groups == frozenset()
    assert identity.unknown_claims == {"groups"}
