"""Value matchers shared by ``claim`` and ``path``: ``is``, ``in``, ``starts_with``,
``ends_with``, ``contains`` (and ``regex`` for paths)."""

from __future__ import annotations

import re

from proxy.policy.criteria.operand import Operand

MATCHERS = ("is", "in", "starts_with", "ends_with", "contains")
_STRING_ONLY = ("starts_with", "ends_with", "contains", "regex")


class Matcher:
    """One matcher with its operand, prepared at load.

    YAML types are kept: ``is: 1`` does not match the string ``"1"`` nor ``true``.
    """

    __slots__ = ("kind", "operand", "pattern", "values")

    def __init__(self, kind: str, operand: object) -> None:
        self.kind = kind
        self.operand = operand
        self.values: tuple[object, ...] = (
            tuple(operand) if isinstance(operand, list | tuple) else (operand,)
        )
        self.pattern = re.compile(str(operand)) if kind == "regex" else None

    def matches(self, value: object) -> bool:
        kind = self.kind
        if kind == "is" or kind == "in":
            return any(same(value, v) for v in self.values)
        if not isinstance(value, str):
            return False
        if kind == "starts_with":
            return value.startswith(str(self.operand))
        if kind == "ends_with":
            return value.endswith(str(self.operand))
        if kind == "contains":
            return str(self.operand) in value
        assert self.pattern is not None
        return self.pattern.fullmatch(value) is not None

    def describe(self) -> str:
        return f"{self.kind} {self.operand!r}"


def same(a: object, b: object) -> bool:
    """Equal and of the same YAML type; bool is an int subclass, but True never equals 1."""
    return (type(a) is type(b) and a == b) or (
        isinstance(a, int | float)
        and isinstance(b, int | float)
        and not isinstance(a, bool)
        and not isinstance(b, bool)
        and a == b
    )


def parse_matcher(
    owner: Operand, fields: dict[str, Operand], kinds: tuple[str, ...]
) -> Matcher | None:
    """The one matcher among ``fields`` (``owner`` is the mapping they belong to)."""
    given = [kind for kind in kinds if kind in fields]
    if len(given) != 1:
        owner.fail(f"give exactly one of {', '.join(kinds)}")
        return None
    kind = given[0]
    operand = fields[kind]
    if kind == "in":
        if not operand.is_list or not operand.node.value:
            operand.fail("expected a non-empty list")
            return None
        return Matcher(kind, operand.value())
    if operand.is_list or operand.is_mapping:
        operand.fail(f"expected a value, got {operand.kind()}")
        return None
    value = operand.value()
    if kind in _STRING_ONLY and not isinstance(value, str):
        operand.fail(f"expected a string, got {operand.kind()}")
        return None
    if kind == "regex":
        try:
            re.compile(str(value))
        except re.error as exc:
            operand.fail(f"invalid regular expression: {exc}")
            return None
    return Matcher(kind, value)
