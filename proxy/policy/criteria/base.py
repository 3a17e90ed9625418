"""The contract every criterion meets, and the registry each criterion module adds itself to.

Outcomes are three-valued: ``True``, ``False`` or unknown (``None``). A
criterion about the caller is unknown when there is no identity, or when the
claim it reads is listed in :attr:`Identity.unknown_claims` (the value was
not received, so "absent" would be a guess). ``not`` of unknown stays
unknown, ``all`` with one false child is false, ``any`` with one true child
is true (Kleene's logic): an unknown never turns into a yes or a no that a
complete identity could contradict.

A criterion module defines the compiled class (``test`` over plain request
data, everything prepared at load time) and its parser, then calls
:func:`register` with its YAML key and one line of documentation; the
loader's dispatch, ``CRITERIA`` and the README's criterion table all come
from that registry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from proxy.model import Identity, RequestFacts
from proxy.policy.criteria.operand import Operand

Outcome = bool | None
About = Literal["caller", "request", "composition"]


class Criterion(Protocol):
    """A compiled criterion; read-only attributes describe it to the compiler and the lint."""

    @property
    def needs_identity(self) -> bool:
        """Unknown without an identity (a criterion about who the caller is)."""

    @property
    def reads_caller(self) -> bool:
        """The outcome can differ between callers (``authenticated`` too)."""

    @property
    def pins_source(self) -> bool:
        """Holds only for callers of listed issuers or authentication methods."""

    @property
    def claims(self) -> frozenset[str]:
        """Claim paths this node reads from :attr:`Identity.claims` (not its children's)."""

    @property
    def children(self) -> tuple[Criterion, ...]: ...

    def test(self, facts: RequestFacts, identity: Identity | None, now: float) -> Outcome: ...

    def describe(self) -> str: ...


class Rules(Protocol):
    """What composite criteria (``any``, ``all``, ``not``) need from the rule compiler."""

    def nested(self, operand: Operand) -> Criterion | None:
        """A nested rule: a mapping of criteria, or the name of a named rule."""

    @property
    def rule_name(self) -> str:
        """The name of the innermost rule being compiled (a named rule's, or a
        route rule's ``name``); criteria that belong to one rule (``grant``) read it."""


class Leaf:
    """Defaults for a criterion without children that reads nothing of the caller."""

    __slots__ = ()
    needs_identity = False
    reads_caller = False
    pins_source = False
    claims: frozenset[str] = frozenset()
    children: tuple[Criterion, ...] = ()


class CallerLeaf(Leaf):
    """Defaults for a criterion about who the caller is: unknown without an identity."""

    __slots__ = ()
    needs_identity = True
    reads_caller = True


def unknown(identity: Identity, names: frozenset[str]) -> bool:
    """Whether a claim among ``names`` was not received (so a criterion on it is unknown).

    Callers test ``identity.unknown_claims`` first: it is nearly always empty.
    """
    return not identity.unknown_claims.isdisjoint(names)


Parser = Callable[[Operand, Rules], Criterion | None]


@dataclass(frozen=True, slots=True)
class Kind:
    """One registered criterion: its YAML key, parser and documentation."""

    key: str
    parse: Parser
    about: About
    syntax: str  # a YAML example, as the README shows it
    holds: str  # "holds when ..." in one sentence


REGISTRY: dict[str, Kind] = {}


def register(key: str, parse: Parser, *, about: About, syntax: str, holds: str) -> None:
    """Add a criterion; every module in this package calls it once at import."""
    if key in REGISTRY or key in ("name", "mode"):
        raise ValueError(f"criterion key {key!r} is taken")
    REGISTRY[key] = Kind(key, parse, about, syntax, holds)


def fmt(values: Sequence[object] | frozenset[str]) -> str:
    """A value list as explanations print it (sets sorted)."""
    items = sorted(values) if isinstance(values, frozenset) else list(values)
    return "[" + ", ".join(str(v) for v in items) + "]"


def describe_tree(criterion: Criterion) -> str:
    """A criterion with its children, in one line: ``any(groups: [sre], email: [...])``."""
    children = criterion.children
    if not children:
        return criterion.describe()
    return f"{criterion.describe()}({', '.join(describe_tree(c) for c in children)})"
