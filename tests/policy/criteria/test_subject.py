"""`subject`: the caller's subject, compared exactly."""

from __future__ import annotations

from pathlib import Path

from tests.policy.criteria.support import holds, outcome, refused
from tests.policy.support import caller


def test_subject_is_one_of_the_listed_values_case_sensitively(tmp_path: Path) -> None:
    assert holds(tmp_path, "subject: [alice, bob]", caller("bob"))
    assert holds(tmp_path, "subject: alice", caller("alice"))  # one string is a list of one
    assert not holds(tmp_path, "subject: alice", caller("Alice"))


def test_subject_is_unknown_without_identity(tmp_path: Path) -> None:
    assert outcome(tmp_path, "subject: [alice]", None) is None


def test_subject_needs_strings(tmp_path: Path) -> None:
    assert "subject: must not be empty" in refused(tmp_path, "subject: []")
    assert "subject: expected a string, got an integer" in refused(tmp_path, "subject: [1]")
