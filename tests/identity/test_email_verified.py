"""An identity's email_verified: the issuer's claim, or trust configured per issuer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from proxy.identity.jwt_verify import identity_from_claims
from tests.identity.conftest import issuer_config
from tests.identity.test_config import parse, problems_of

ISSUER = "https://login.example.test"


@pytest.mark.parametrize(
    ("claims", "required", "expected"),
    [
        ({"email_verified": True}, True, True),
        ({"email_verified": False}, True, False),
        ({}, True, None),
        ({"email_verified": "true"}, True, True),  # the string form some IdPs send
        ({"email_verified": "yes"}, True, None),
        ({}, False, True),  # an issuer trusted not to need the claim
        ({"email_verified": False}, False, False),  # ...still never overrides an explicit no
        ({"email_verified": "false"}, False, False),
    ],
)
def test_email_verified_comes_from_the_claim_or_the_issuer_setting(
    claims: dict[str, Any], required: bool, expected: bool | None
) -> None:
    cfg = issuer_config(ISSUER, email_verified_required=required)
    identity = identity_from_claims(
        {"sub": "a", "email": "a@example.com", **claims}, cfg, "jwt", None
    )
    assert identity.email_verified is expected


def test_issuers_require_email_verified_unless_configured_not_to(tmp_path: Path) -> None:
    text = "identity:\n  issuers:\n    - {issuer: " + ISSUER + ", audiences: [a]%s}\n"
    assert parse(tmp_path, text % "").issuers[0].email_verified_required is True
    off = parse(tmp_path, text % ", email_verified_required: false")
    assert off.issuers[0].email_verified_required is False
    assert any(
        "email_verified_required: expected true or false" in p
        for p in problems_of(tmp_path, text % ", email_verified_required: 'no'")
    )
