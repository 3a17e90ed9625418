"""`groups`: the caller is in at least one listed group."""

from __future__ import annotations

from pathlib import Path

from tests.policy.criteria.support import holds, outcome, refused
from tests.policy.support import caller


def test_groups_hold_when_any_listed_group_is_present(tmp_path: Path) -> None:
    assert holds(tmp_path, "groups: [a, b]", caller(groups=("b", "z")))
    assert not holds(tmp_path, "groups: [a, b]", caller(groups=("A",)))
    assert outcome(tmp_path, "groups: [a]", None) is None


def test_groups_must_not_be_empty(tmp_path: Path) -> None:
    assert "groups: must not be empty" in refused(tmp_path, "groups: []")
    assert "groups: expected a list of strings" in refused(tmp_path, "groups: {a: 1}")


def test_groups_are_unknown_when_the_groups_claim_was_not_received(tmp_path: Path) -> None:
    dropped = caller(groups=(), unknown_claims=("groups",))
    assert outcome(tmp_path, "groups: [interns]", dropped) is None
    # Another claim missing changes nothing: groups were received.
    assert outcome(tmp_path, "groups: [a]", caller(groups=("a",), unknown_claims=("dept",)))
