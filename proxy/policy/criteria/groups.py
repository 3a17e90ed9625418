"""``groups``: the caller is in at least one of the listed groups."""

from __future__ import annotations

from proxy.policy.criteria.base import Rules, register
from proxy.policy.criteria.fields import IdentitySetAny, value_set
from proxy.policy.criteria.operand import Operand

_FROM = frozenset({"groups"})


def parse(operand: Operand, rules: Rules) -> IdentitySetAny | None:
    values = value_set(operand)
    return IdentitySetAny("groups", "groups", values, _FROM) if values is not None else None


register(
    "groups",
    parse,
    about="caller",
    syntax="groups: [platform-admins, sre]",
    holds="the caller is in at least one listed group (require several with `all`)",
)
