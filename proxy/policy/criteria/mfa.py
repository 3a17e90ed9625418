"""``mfa``: the login used a second factor, shown by ``amr`` (RFC 8176) or ``acr`` claims.

``mfa: true`` means ``amr`` contains ``mfa``; ``mfa: {amr: [hwk, otp], acr:
[...]}`` holds when ``amr`` has a listed method or ``acr`` is a listed value.
Unknown when a claim it reads was not received and the other does not hold.
"""

from __future__ import annotations

from proxy.model import Identity, RequestFacts
from proxy.policy.criteria.base import CallerLeaf, Outcome, Rules, fmt, register, unknown
from proxy.policy.criteria.operand import Operand


class Mfa(CallerLeaf):
    __slots__ = ("acr", "amr", "claims")

    def __init__(self, amr: frozenset[str], acr: frozenset[str]) -> None:
        self.amr = amr
        self.acr = acr
        self.claims = frozenset(name for name, values in (("amr", amr), ("acr", acr)) if values)

    def test(self, facts: RequestFacts, identity: Identity | None, now: float) -> Outcome:
        if identity is None:
            return None
        claims = identity.claims
        amr = claims.get("amr")
        if isinstance(amr, list) and any(isinstance(a, str) and a in self.amr for a in amr):
            return True
        acr = claims.get("acr")
        if isinstance(acr, str) and acr in self.acr:
            return True
        # Neither shows a second factor: unknown if one of them was not received.
        return None if identity.unknown_claims and unknown(identity, self.claims) else False

    def describe(self) -> str:
        parts = []
        if self.amr:
            parts.append(f"amr any of {fmt(self.amr)}")
        if self.acr:
            parts.append(f"acr in {fmt(self.acr)}")
        return "mfa (" + " or ".join(parts) + ")"


def parse(operand: Operand, rules: Rules) -> Mfa | None:
    if not operand.is_mapping:
        return Mfa(frozenset({"mfa"}), frozenset()) if operand.true() else None
    fields = operand.fields(("amr", "acr"))
    if fields is None:
        return None
    if not fields:
        operand.fail("give 'amr' and/or 'acr'")
        return None
    amr = fields["amr"].strings() if "amr" in fields else []
    acr = fields["acr"].strings() if "acr" in fields else []
    if amr is None or acr is None:
        return None
    return Mfa(frozenset(amr), frozenset(acr))


register(
    "mfa",
    parse,
    about="caller",
    syntax="mfa: true",
    holds="the login used a second factor: `amr` contains `mfa`; with "
    "`{amr: [hwk, otp], acr: [...]}`, `amr` has a listed method or `acr` a listed value",
)
