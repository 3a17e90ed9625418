"""``email``: the caller's *verified* email address is one of the listed ones.

An address counts only when the issuer marked it verified
(:attr:`Identity.email_verified` is true, or the issuer is configured with
``email_verified_required: false``): otherwise anyone who can set an
unverified address at the IdP could claim someone else's ("nOAuth").
"""

from __future__ import annotations

from proxy.model import Identity, RequestFacts
from proxy.policy.criteria.base import CallerLeaf, Outcome, Rules, fmt, register, unknown
from proxy.policy.criteria.operand import Operand

# The claims an email criterion depends on: unknown if either was not received.
EMAIL_CLAIMS = frozenset({"email", "email_verified"})


def verified_email(identity: Identity) -> Outcome | str:
    """The caller's verified address, lower-cased; False without one; None if unknown."""
    if identity.unknown_claims and unknown(identity, EMAIL_CLAIMS):
        return None
    email = identity.email
    if email is None or identity.email_verified is not True:
        return False
    return email.lower()


class EmailIn(CallerLeaf):
    __slots__ = ("values",)
    claims = EMAIL_CLAIMS

    def __init__(self, values: frozenset[str]) -> None:
        self.values = values  # lower-cased at load

    def test(self, facts: RequestFacts, identity: Identity | None, now: float) -> Outcome:
        if identity is None:
            return None
        email = verified_email(identity)
        return email in self.values if isinstance(email, str) else email

    def describe(self) -> str:
        return f"email in {fmt(self.values)}"


def parse(operand: Operand, rules: Rules) -> EmailIn | None:
    values = operand.strings()
    if values is None:
        return None
    addresses = [value.strip().lower() for value in values]
    for address in addresses:
        local, at, domain = address.partition("@")
        if not local or not at or not domain or "@" in domain:
            operand.fail(f"not an email address: {address!r}")
            return None
    return EmailIn(frozenset(addresses))


register(
    "email",
    parse,
    about="caller",
    syntax="email: [alice@example.com]",
    holds="the caller's verified email address is listed (case-insensitive)",
)
