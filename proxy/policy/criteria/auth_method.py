"""``auth_method``: the caller authenticated with one of the listed methods."""

from __future__ import annotations

from typing import get_args

from proxy.model import AuthMethod
from proxy.policy.criteria.base import Rules, register
from proxy.policy.criteria.fields import IdentityFieldIn
from proxy.policy.criteria.operand import Operand

AUTH_METHODS: tuple[str, ...] = get_args(AuthMethod)


def parse(operand: Operand, rules: Rules) -> IdentityFieldIn | None:
    values = operand.strings()
    if values is None:
        return None
    for value in values:
        if value not in AUTH_METHODS:
            operand.fail(f"must be one of {', '.join(AUTH_METHODS)}, got {value!r}")
            return None
    return IdentityFieldIn("auth_method", "method", frozenset(values), pins_source=True)


register(
    "auth_method",
    parse,
    about="caller",
    syntax="auth_method: [jwt, opaque, session, apikey, mtls]",
    holds="the caller authenticated with a listed method",
)
