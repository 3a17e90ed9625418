"""`email`: the caller's email address, case-insensitively."""

from __future__ import annotations

from pathlib import Path

from tests.policy.criteria.support import holds, outcome, refused
from tests.policy.support import caller


def test_email_is_case_insensitive_and_exact(tmp_path: Path) -> None:
    assert holds(tmp_path, "email: [Alice@Example.com]", caller(email="alice@EXAMPLE.com"))
    assert not holds(tmp_path, "email: [alice@example.com]", caller(email="alice@example.co"))
    assert not holds(tmp_path, "email: [alice@example.com]", caller())


def test_listed_values_must_be_email_addresses(tmp_path: Path) -> None:
    for value in ("alice", "@example.com", "alice@", "a@b@example.com"):
        assert f"email: not an email address: '{value}'" in refused(tmp_path, f"email: ['{value}']")


def test_email_is_unknown_when_the_email_claims_were_not_received(tmp_path: Path) -> None:
    for missing in ("email", "email_verified"):
        who = caller(email="alice@example.com", unknown_claims=(missing,))
        assert outcome(tmp_path, "email: [alice@example.com]", who) is None
