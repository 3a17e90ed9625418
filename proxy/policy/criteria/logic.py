"""``any``, ``all`` and ``not``: criteria made of nested rules.

Items are mappings of criteria (which must all hold) or names of named
rules. Three-valued: ``all`` is false as soon as one child is false and
unknown if none is but one is unknown; ``any`` is true as soon as one child
is; ``not`` of unknown stays unknown.
"""

from __future__ import annotations

from proxy.model import Identity, RequestFacts
from proxy.policy.criteria.base import Criterion, Outcome, Rules, register
from proxy.policy.criteria.operand import Operand
from proxy.policy.criteria.public import Public


class All:
    __slots__ = ("children", "label", "needs_identity", "pins_source", "reads_caller")
    claims: frozenset[str] = frozenset()

    def __init__(self, children: tuple[Criterion, ...], label: str = "all") -> None:
        self.children = children
        self.label = label
        self.needs_identity = any(c.needs_identity for c in children)
        self.reads_caller = any(c.reads_caller for c in children)
        self.pins_source = any(c.pins_source for c in children)

    def test(self, facts: RequestFacts, identity: Identity | None, now: float) -> Outcome:
        result: Outcome = True
        for child in self.children:
            outcome = child.test(facts, identity, now)
            if outcome is False:
                return False
            if outcome is None:
                result = None
        return result

    def describe(self) -> str:
        return self.label


class AnyOf:
    __slots__ = ("children", "needs_identity", "pins_source", "reads_caller")
    claims: frozenset[str] = frozenset()

    def __init__(self, children: tuple[Criterion, ...]) -> None:
        self.children = children
        self.needs_identity = any(c.needs_identity for c in children)
        self.reads_caller = any(c.reads_caller for c in children)
        self.pins_source = all(c.pins_source for c in children)

    def test(self, facts: RequestFacts, identity: Identity | None, now: float) -> Outcome:
        result: Outcome = False
        for child in self.children:
            outcome = child.test(facts, identity, now)
            if outcome is True:
                return True
            if outcome is None:
                result = None
        return result

    def describe(self) -> str:
        return "any"


class Not:
    __slots__ = ("child", "children", "needs_identity", "reads_caller")
    pins_source = False
    claims: frozenset[str] = frozenset()

    def __init__(self, child: Criterion) -> None:
        self.child = child
        self.children = (child,)
        self.needs_identity = child.needs_identity
        self.reads_caller = child.reads_caller

    def test(self, facts: RequestFacts, identity: Identity | None, now: float) -> Outcome:
        outcome = self.child.test(facts, identity, now)
        return None if outcome is None else not outcome

    def describe(self) -> str:
        return "not"


def conjunction(parts: list[Criterion]) -> Criterion:
    """Criteria that must all hold, as one criterion."""
    return parts[0] if len(parts) == 1 else All(tuple(parts))


def _nested_list(operand: Operand, rules: Rules) -> tuple[Criterion, ...] | None:
    items = operand.items()
    if items is None:
        return None
    parts: list[Criterion] = []
    for item in items:
        part = rules.nested(item)
        if part is None:
            return None
        parts.append(part)
    return tuple(parts)


def parse_all(operand: Operand, rules: Rules) -> All | None:
    parts = _nested_list(operand, rules)
    return All(parts) if parts is not None else None


def parse_any(operand: Operand, rules: Rules) -> AnyOf | None:
    parts = _nested_list(operand, rules)
    return AnyOf(parts) if parts is not None else None


def parse_not(operand: Operand, rules: Rules) -> Not | None:
    if operand.is_list:
        operand.fail("expected a mapping of criteria or a rule name")
        return None
    inner = rules.nested(operand)
    return Not(inner) if inner is not None else None


def admits_anonymous(criterion: Criterion, facts: RequestFacts, now: float) -> bool:
    """Whether a criterion holds for a caller without identity *because of* ``public``.

    The holding derivation must include ``public: true`` positively: in
    ``all`` every child holds and one of them admits anonymously; in ``any``
    one branch admits anonymously; ``not`` never proves public access.
    """
    if isinstance(criterion, Public):
        return True
    if isinstance(criterion, All):
        return all(c.test(facts, None, now) is True for c in criterion.children) and any(
            admits_anonymous(c, facts, now) for c in criterion.children
        )
    if isinstance(criterion, AnyOf):
        return any(admits_anonymous(c, facts, now) for c in criterion.children)
    return False


def admits_like_identified(criterion: Criterion) -> bool:
    """Whether :func:`admits_anonymous` agrees with ``test`` for every request.

    For a criterion that reads nothing of the caller: then it admits an
    anonymous caller exactly when it would admit an identified one.
    Sufficient, not necessary (``not`` is never trusted to).
    """
    if isinstance(criterion, Public):
        return True
    if isinstance(criterion, All):
        return any(admits_like_identified(c) for c in criterion.children)
    if isinstance(criterion, AnyOf):
        return any(map(always_holds, criterion.children)) or all(
            admits_like_identified(c) for c in criterion.children
        )
    return False


def always_holds(criterion: Criterion) -> bool:
    """Whether a criterion holds for every request and caller (``public: true`` at heart).

    Sufficient, not necessary: only ``public`` and its ``all``/``any`` count.
    """
    if isinstance(criterion, Public):
        return True
    if isinstance(criterion, All):
        return all(always_holds(c) for c in criterion.children)
    if isinstance(criterion, AnyOf):
        return any(always_holds(c) for c in criterion.children)
    return False


register(
    "all",
    parse_all,
    about="composition",
    syntax="all: [{groups: [eng]}, {mfa: true}]",
    holds="every listed rule holds (a mapping of criteria or a named rule's name)",
)
register(
    "any",
    parse_any,
    about="composition",
    syntax="any: [platform-admins, {subject: [root]}]",
    holds="at least one listed rule holds",
)
register(
    "not",
    parse_not,
    about="composition",
    syntax="not: {source_ip: [10.0.0.0/8]}",
    holds="the nested rule does not hold (unknown stays unknown)",
)
