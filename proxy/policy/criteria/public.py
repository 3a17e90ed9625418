"""``public: true``: holds for every caller, with or without an identity.

The only way to admit anonymous callers: nothing else ever implies it.
"""

from __future__ import annotations

from proxy.model import Identity, RequestFacts
from proxy.policy.criteria.base import Leaf, Outcome, Rules, register
from proxy.policy.criteria.operand import Operand


class Public(Leaf):
    __slots__ = ()

    def test(self, facts: RequestFacts, identity: Identity | None, now: float) -> Outcome:
        return True

    def describe(self) -> str:
        return "public"


def parse(operand: Operand, rules: Rules) -> Public | None:
    return Public() if operand.true() else None


register(
    "public",
    parse,
    about="caller",
    syntax="public: true",
    holds="always, for anonymous callers too: the only way to admit callers without identity",
)
