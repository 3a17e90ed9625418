"""The operand reader: a value or None with one problem at the offending line."""

from __future__ import annotations

from pathlib import Path

import yaml

from proxy.config.reader import Doc, Problems
from proxy.policy.criteria.operand import Operand


def operand(text: str) -> tuple[Operand, Problems]:
    problems = Problems()
    node = yaml.compose(text)
    assert node is not None
    return Operand(Doc(Path("p.yaml"), problems), node, "x"), problems


def messages(problems: Problems) -> list[str]:
    return [str(p) for p in problems.items]


def test_strings_take_a_list_or_one_string_and_refuse_anything_else() -> None:
    assert operand("[a, b]")[0].strings() == ["a", "b"]
    assert operand("a")[0].strings() == ["a"]
    for text, message in [
        ("[]", "p.yaml:1: x: must not be empty"),
        ("", "p.yaml:1: x: must not be empty"),
        ("{a: 1}", "p.yaml:1: x: expected a list of strings"),
        ("[a,\n 1]", "p.yaml:2: x: expected a string, got an integer"),
    ]:
        reader, problems = operand(text or "null")
        assert reader.strings() is None
        assert messages(problems) == [message]


def test_fields_report_every_unknown_or_duplicate_key_at_its_line() -> None:
    reader, problems = operand("a: 1\nb: 2\na: 3\n")
    assert reader.fields(("a",)) is None
    assert messages(problems) == [
        "p.yaml:2: x: unknown key 'b' (known keys: a)",
        "p.yaml:3: x: duplicate key 'a'",
    ]
    fields = operand("a: 1\n")[0].fields(("a", "b"))
    assert fields is not None and fields["a"].where == "x.a" and fields["a"].value() == 1


def test_flags_and_choices_never_fall_back_to_a_default() -> None:
    reader, problems = operand("'yes'")
    assert reader.flag() is None and messages(problems) == [
        "p.yaml:1: x: expected true or false, got a string"
    ]
    reader, problems = operand("false")
    assert reader.true() is None
    assert messages(problems) == ["p.yaml:1: x: only 'true' has a meaning; remove the key instead"]
    reader, problems = operand("dry")
    assert reader.choice(("enforce", "audit")) is None
    assert messages(problems) == ["p.yaml:1: x: must be one of enforce, audit, got 'dry'"]


def test_items_of_a_list_know_their_position() -> None:
    items = operand("[a, b]")[0].items()
    assert items is not None and [i.where for i in items] == ["x[0]", "x[1]"]
    reader, problems = operand("a")
    assert reader.items() is None and messages(problems) == [
        "p.yaml:1: x: must be a non-empty list"
    ]
