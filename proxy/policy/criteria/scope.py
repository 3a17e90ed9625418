"""``scope``: the caller's token was granted at least one of the listed scopes."""

from __future__ import annotations

from proxy.policy.criteria.base import Rules, register
from proxy.policy.criteria.fields import IdentitySetAny, value_set
from proxy.policy.criteria.operand import Operand

_FROM = frozenset({"scope", "scp"})


def parse(operand: Operand, rules: Rules) -> IdentitySetAny | None:
    values = value_set(operand)
    return IdentitySetAny("scope", "scopes", values, _FROM) if values is not None else None


register(
    "scope",
    parse,
    about="caller",
    syntax="scope: [orders:write]",
    holds="the caller's token carries at least one listed scope (`scope` or `scp` claim)",
)
