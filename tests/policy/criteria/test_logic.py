"""`all`, `any` and `not`: three-valued composition of nested rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.policy.criteria.support import holds, outcome, refused
from tests.policy.support import caller, facts


def test_all_holds_when_every_item_holds(tmp_path: Path) -> None:
    rule = "all: [{groups: [eng]}, {method: [GET]}]"
    assert holds(tmp_path, rule, caller(groups=("eng",)))
    assert not holds(tmp_path, rule, caller(groups=("eng",)), facts(method="POST"))


def test_any_holds_when_one_item_holds(tmp_path: Path) -> None:
    rule = "any: [{groups: [eng]}, {subject: [root]}]"
    assert holds(tmp_path, rule, caller("root"))
    assert not holds(tmp_path, rule, caller("alice"))


def test_unknown_is_three_valued(tmp_path: Path) -> None:
    # Without identity: all with a false child is false, any with a true child true,
    # not of unknown stays unknown.
    assert outcome(tmp_path, "all: [{groups: [a]}, {method: [POST]}]", None) is False
    assert outcome(tmp_path, "all: [{groups: [a]}, {method: [GET]}]", None) is None
    assert outcome(tmp_path, "any: [{groups: [a]}, {method: [GET]}]", None) is True
    assert outcome(tmp_path, "any: [{groups: [a]}, {method: [POST]}]", None) is None
    assert outcome(tmp_path, "not: {groups: [a]}", None) is None


def test_not_negates_a_mapping_or_a_named_rule(tmp_path: Path) -> None:
    assert holds(tmp_path, "not: {groups: [interns]}", caller())
    assert not holds(tmp_path, "not: {groups: [interns]}", caller(groups=("interns",)))


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("any: []", "any: must be a non-empty list"),
        ("all: {groups: [a]}", "all: must be a non-empty list"),
        ("not: [{public: true}]", "not: expected a mapping of criteria or a rule name"),
        ("any: [{}]", "any[0]: a rule needs at least one criterion"),
        ("any: [[x]]", "any[0]: expected a rule mapping or a rule name"),
        ("all: [nobody]", "all[0]: unknown rule 'nobody'"),
        ("any: [{name: x, public: true}]", "any[0]: unknown key 'name'"),
    ],
)
def test_malformed_compositions_are_refused(tmp_path: Path, rule: str, message: str) -> None:
    assert message in refused(tmp_path, rule)
