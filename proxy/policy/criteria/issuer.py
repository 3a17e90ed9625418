"""``issuer``: the caller's identity comes from one of the listed issuers."""

from __future__ import annotations

from proxy.policy.criteria.base import Rules, register
from proxy.policy.criteria.fields import IdentityFieldIn, value_set
from proxy.policy.criteria.operand import Operand


def parse(operand: Operand, rules: Rules) -> IdentityFieldIn | None:
    values = value_set(operand)
    if values is None:
        return None
    return IdentityFieldIn("issuer", "issuer", values, pins_source=True)


register(
    "issuer",
    parse,
    about="caller",
    syntax="issuer: [https://login.example.com]",
    holds="the caller's identity was issued by a listed issuer (compared exactly)",
)
