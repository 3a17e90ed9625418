"""Comparisons of one identity attribute with listed values, shared by several criteria.

Not a criterion itself: ``subject``, ``issuer``, ``auth_method``,
``groups`` and ``scope`` register parsers that build these.
"""

from __future__ import annotations

import operator

from proxy.model import Identity, RequestFacts
from proxy.policy.criteria.base import CallerLeaf, Outcome, fmt, unknown
from proxy.policy.criteria.operand import Operand


class IdentityFieldIn(CallerLeaf):
    """The caller's ``subject``, ``issuer`` or ``method`` is one of ``values``."""

    __slots__ = ("get", "label", "pins_source", "values")

    def __init__(
        self, label: str, attribute: str, values: frozenset[str], *, pins_source: bool = False
    ) -> None:
        self.label = label
        self.get = operator.attrgetter(attribute)
        self.values = values
        self.pins_source = pins_source

    def test(self, facts: RequestFacts, identity: Identity | None, now: float) -> Outcome:
        if identity is None:
            return None
        return self.get(identity) in self.values

    def describe(self) -> str:
        return f"{self.label} in {fmt(self.values)}"


class IdentitySetAny(CallerLeaf):
    """The caller has at least one of ``values`` among its ``groups`` or ``scopes``.

    Unknown when the claims they come from (``from_claims``) were not received.
    """

    __slots__ = ("claims", "get", "label", "values")

    def __init__(
        self, label: str, attribute: str, values: frozenset[str], from_claims: frozenset[str]
    ) -> None:
        self.label = label
        self.get = operator.attrgetter(attribute)
        self.values = values
        self.claims = from_claims  # read (for sessions to keep), and unknown if not received

    def test(self, facts: RequestFacts, identity: Identity | None, now: float) -> Outcome:
        if identity is None:
            return None
        if identity.unknown_claims and unknown(identity, self.claims):
            return None
        return not self.values.isdisjoint(self.get(identity))

    def describe(self) -> str:
        return f"{self.label} any of {fmt(self.values)}"


def value_set(operand: Operand) -> frozenset[str] | None:
    """A non-empty list of strings as a set."""
    values = operand.strings()
    return frozenset(values) if values is not None else None
