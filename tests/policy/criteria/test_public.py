"""`public: true`: the only way to admit anonymous callers."""

from __future__ import annotations

from pathlib import Path

from tests.policy.criteria.support import holds, outcome, refused
from tests.policy.support import caller


def test_public_holds_with_and_without_identity(tmp_path: Path) -> None:
    assert holds(tmp_path, "public: true", None)
    assert holds(tmp_path, "public: true", caller())
    assert outcome(tmp_path, "public: true", None) is True


def test_public_false_or_empty_is_refused_rather_than_ignored(tmp_path: Path) -> None:
    assert "only 'true' has a meaning; remove the key instead" in refused(tmp_path, "public: false")
    # An empty value must not leave a rule with no criterion that always holds.
    assert "r'.public: expected true or false, got null" in refused(tmp_path, "public: ")
    assert "expected true or false, got a string" in refused(tmp_path, "public: 'yes'")
