"""``subject``: the caller's subject is one of the listed values."""

from __future__ import annotations

from proxy.policy.criteria.base import Rules, register
from proxy.policy.criteria.fields import IdentityFieldIn, value_set
from proxy.policy.criteria.operand import Operand


def parse(operand: Operand, rules: Rules) -> IdentityFieldIn | None:
    values = value_set(operand)
    return IdentityFieldIn("subject", "subject", values) if values is not None else None


register(
    "subject",
    parse,
    about="caller",
    syntax="subject: [alice, svc-ci]",
    holds="the caller's subject is listed (exact, case-sensitive)",
)
