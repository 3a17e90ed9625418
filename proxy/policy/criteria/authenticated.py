"""``authenticated: true|false``: whether the caller has a verified identity.

Known without an identity (it is the question), so never unknown.
"""

from __future__ import annotations

from proxy.model import Identity, RequestFacts
from proxy.policy.criteria.base import Leaf, Outcome, Rules, register
from proxy.policy.criteria.operand import Operand


class Authenticated(Leaf):
    __slots__ = ("expect",)
    reads_caller = True

    def __init__(self, expect: bool) -> None:
        self.expect = expect

    def test(self, facts: RequestFacts, identity: Identity | None, now: float) -> Outcome:
        return (identity is not None) is self.expect

    def describe(self) -> str:
        return f"authenticated is {str(self.expect).lower()}"


def parse(operand: Operand, rules: Rules) -> Authenticated | None:
    expect = operand.flag()
    return Authenticated(expect) if expect is not None else None


register(
    "authenticated",
    parse,
    about="caller",
    syntax="authenticated: true",
    holds="the caller has (`true`) or lacks (`false`) a verified identity",
)
