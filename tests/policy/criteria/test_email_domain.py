"""`email_domain`: the caller's email address is at a listed domain."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.policy.criteria.support import holds, outcome, refused
from tests.policy.support import caller


@pytest.mark.parametrize(
    ("domains", "email", "expected"),
    [
        ("[example.com]", "a@example.com", True),
        ("[example.com]", "a@EXAMPLE.com", True),
        ("[example.com]", "a@badexample.com", False),
        ("[example.com]", "a@sub.example.com", False),
        ("[example.com]", "a@evil.com@example.com", False),
        ("[example.com]", "@example.com", False),
        ("['*.example.com']", "a@sub.example.com", True),
        ("['*.example.com']", "a@example.com", False),
        ("['*.example.com']", "a@subexample.com", False),
    ],
)
def test_email_domain(tmp_path: Path, domains: str, email: str, expected: bool) -> None:
    who = caller(email=email, email_verified=True)
    assert holds(tmp_path, f"email_domain: {domains}", who) is expected


def test_an_unverified_address_is_at_no_domain(tmp_path: Path) -> None:
    rule = "email_domain: [example.com]"
    assert not holds(tmp_path, rule, caller(email="a@example.com", email_verified=False))
    assert not holds(tmp_path, rule, caller(email="a@example.com"))


def test_listed_values_must_be_domains(tmp_path: Path) -> None:
    for value in ("*.*.example.com", "exa mple.com", "a@example.com", ""):
        assert "expected a domain or '*.domain'" in refused(tmp_path, f"email_domain: ['{value}']")


def test_email_domain_is_unknown_when_the_email_was_not_received(tmp_path: Path) -> None:
    assert (
        outcome(tmp_path, "email_domain: [example.com]", caller(unknown_claims=("email",))) is None
    )
