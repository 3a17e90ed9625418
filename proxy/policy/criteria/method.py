"""``method``: the request method is one of the listed ones (upper-cased at load)."""

from __future__ import annotations

import re

from proxy.model import Identity, RequestFacts
from proxy.policy.criteria.base import Leaf, Outcome, Rules, fmt, register
from proxy.policy.criteria.operand import Operand

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def is_token(text: str) -> bool:
    """An HTTP token (RFC 9110): what method and header names are made of."""
    return _TOKEN.fullmatch(text) is not None


class MethodIn(Leaf):
    __slots__ = ("methods",)

    def __init__(self, methods: frozenset[str]) -> None:
        self.methods = methods

    def test(self, facts: RequestFacts, identity: Identity | None, now: float) -> Outcome:
        return facts.method in self.methods

    def describe(self) -> str:
        return f"method in {fmt(self.methods)}"


def parse(operand: Operand, rules: Rules) -> MethodIn | None:
    names = operand.strings()
    if names is None:
        return None
    methods = frozenset(name.upper() for name in names)
    for method in sorted(methods):
        if not is_token(method):
            operand.fail(f"not an HTTP method: {method!r}")
            return None
    return MethodIn(methods)


register(
    "method",
    parse,
    about="request",
    syntax="method: [GET, HEAD]",
    holds="the request method is listed",
)
