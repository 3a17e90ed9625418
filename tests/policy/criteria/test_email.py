"""`email`: the caller's email address, case-insensitively."""

from __future__ import annotations

from pathlib import Path

from proxy.model import Identity
from tests.policy.criteria.support import holds, outcome, refused
from tests.policy.support import caller


def verified(email: str) -> Identity:
    return caller(email=email, email_verified=True)


def test_email_is_case_insensitive_and_exact(tmp_path: Path) -> None:
    assert holds(tmp_path, "email: [Alice@Example.com]", verified("alice@EXAMPLE.com"))
    assert not holds(tmp_path, "email: [alice@example.com]", verified("alice@example.co"))
    assert not holds(tmp_path, "email: [alice@example.com]", caller())


def test_an_address_the_issuer_did_not_verify_never_matches(tmp_path: Path) -> None:
    # nOAuth: where users can set an unverified address, anyone could claim any.
    rule = "email: [alice@example.com]"
    assert outcome(tmp_path, rule, caller(email="alice@example.com", email_verified=False)) is False
    assert outcome(tmp_path, rule, caller(email="alice@example.com")) is False  # issuer silent


def test_listed_values_must_be_email_addresses(tmp_path: Path) -> None:
    for value in ("alice", "@example.com", "alice@", "a@b@example.com"):
        assert f"email: not an email address: '{value}'" in refused(tmp_path, f"email: ['{value}']")


def test_email_is_unknown_when_the_email_claims_were_not_received(tmp_path: Path) -> None:
    for missing in ("email", "email_verified"):
        who = caller(email="alice@example.com", email_verified=True, unknown_claims=(missing,))
        assert outcome(tmp_path, "email: [alice@example.com]", who) is None
