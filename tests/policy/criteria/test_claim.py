"""`claim`: a claim at a dotted path exists or matches, with YAML types kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.policy.criteria.support import holds, outcome, refused
from tests.policy.support import caller


@pytest.mark.parametrize(
    ("claim", "claims", "expected"),
    [
        ("{path: dept, is: eng}", {"dept": "eng"}, True),
        ("{path: dept, is: eng}", {"dept": "Eng"}, False),
        ("{path: level, is: 1}", {"level": 1}, True),
        ("{path: level, is: 1}", {"level": "1"}, False),
        ("{path: level, is: 1}", {"level": True}, False),
        ("{path: ok, is: true}", {"ok": True}, True),
        ("{path: ok, is: true}", {"ok": "true"}, False),
        ("{path: org.unit.name, is: data}", {"org": {"unit": {"name": "data"}}}, True),
        ("{path: org.unit.name, is: data}", {"org": {"unit": "data"}}, False),
        ("{path: 'https://x.io/role', is: admin}", {"https://x.io/role": "admin"}, True),
        ("{path: dept, in: [eng, ops]}", {"dept": "ops"}, True),
        ("{path: dept, in: [eng, ops]}", {"dept": "sales"}, False),
        ("{path: client, starts_with: svc-}", {"client": "svc-a"}, True),
        ("{path: client, starts_with: svc-}", {"client": "x-svc-a"}, False),
        ("{path: client, ends_with: -prod}", {"client": "a-prod"}, True),
        ("{path: client, contains: mid}", {"client": "amidb"}, True),
        ("{path: client, contains: mid}", {"client": 5}, False),
        ("{path: roles, contains: admin}", {"roles": ["user", "admin"]}, True),
        ("{path: roles, contains: adm}", {"roles": ["user", "admin"]}, False),
        ("{path: roles, is: admin}", {"roles": ["user", "admin"]}, True),
        ("{path: roles, starts_with: ad}", {"roles": ["user", "admin"]}, True),
        ("{path: tenant, exists: true}", {"tenant": None}, True),
        ("{path: tenant, exists: true}", {}, False),
        ("{path: tenant, exists: false}", {}, True),
        ("{path: missing, is: x}", {}, False),
    ],
)
def test_claim_matchers(tmp_path: Path, claim: str, claims: dict[str, Any], expected: bool) -> None:
    assert holds(tmp_path, f"claim: {claim}", caller(claims=claims)) is expected


def test_a_list_of_claims_must_all_hold(tmp_path: Path) -> None:
    rule = "claim: [{path: a, is: x}, {path: b, is: y}]"
    assert holds(tmp_path, rule, caller(claims={"a": "x", "b": "y"}))
    assert not holds(tmp_path, rule, caller(claims={"a": "x", "b": "z"}))


def test_claims_are_unknown_without_identity_even_when_absence_is_asked(tmp_path: Path) -> None:
    assert outcome(tmp_path, "claim: {path: a, exists: false}", None) is None


@pytest.mark.parametrize(
    ("claim", "message"),
    [
        ("{path: a, is: 1, in: [1]}", "give exactly one of is, in, starts_with"),
        ("{path: a}", "give exactly one of is"),
        ("{path: a, starts_with: 1}", "claim.starts_with: expected a string, got an integer"),
        ("{path: a, in: []}", "claim.in: expected a non-empty list"),
        ("{path: a, is: [1]}", "claim.is: expected a value, got a list"),
        ("{path: a, exists: true, is: x}", "'exists' cannot be combined with a matcher"),
        ("{path: a, regex: x}", "unknown key 'regex'"),
        ("{is: x}", "missing required key 'path'"),
        ("[]", "claim: must be a non-empty list"),
        ("[x]", "claim[0]: expected a mapping, got a string"),
    ],
)
def test_malformed_claims_are_refused(tmp_path: Path, claim: str, message: str) -> None:
    assert message in refused(tmp_path, f"claim: {claim}")


@pytest.mark.parametrize(
    ("claim", "missing"),
    [
        ("{path: dept, is: eng}", "dept"),
        ("{path: org.unit, is: data}", "org"),  # the top-level claim holding it
        ("{path: tenant, exists: false}", "tenant"),  # absence is not known either
        ("{path: 'https://x.io/role', is: admin}", "https://x.io/role"),
    ],
)
def test_a_claim_that_was_not_received_is_unknown_never_absent(
    tmp_path: Path, claim: str, missing: str
) -> None:
    assert outcome(tmp_path, f"claim: {claim}", caller(unknown_claims=(missing,))) is None


def test_other_unknown_claims_leave_a_claim_known(tmp_path: Path) -> None:
    who = caller(claims={"dept": "eng"}, unknown_claims=("groups", "department"))
    assert outcome(tmp_path, "claim: {path: dept, is: eng}", who) is True
