"""``email_domain``: the caller's *verified* email address is at a listed domain.

``example.com`` matches exactly that domain; ``*.example.com`` only its
subdomains. The address must contain exactly one ``@``
(``a@evil.com@example.com`` never matches) and the whole domain is compared
(``badexample.com`` never matches ``example.com``). Unverified addresses
never match (see :mod:`proxy.policy.criteria.email`).
"""

from __future__ import annotations

from proxy.http.host import is_host_name
from proxy.model import Identity, RequestFacts
from proxy.policy.criteria.base import CallerLeaf, Outcome, Rules, fmt, register
from proxy.policy.criteria.email import EMAIL_CLAIMS, verified_email
from proxy.policy.criteria.operand import Operand


class EmailDomain(CallerLeaf):
    __slots__ = ("exact", "suffixes")
    claims = EMAIL_CLAIMS

    def __init__(self, exact: frozenset[str], suffixes: tuple[str, ...]) -> None:
        self.exact = exact
        self.suffixes = suffixes  # each starts with "."

    def test(self, facts: RequestFacts, identity: Identity | None, now: float) -> Outcome:
        if identity is None:
            return None
        email = verified_email(identity)
        if not isinstance(email, str):
            return email
        if email.count("@") != 1:
            return False
        local, domain = email.split("@")
        if not local or not domain:
            return False
        return domain in self.exact or domain.endswith(self.suffixes)

    def describe(self) -> str:
        return f"email_domain in {fmt(sorted(self.exact) + ['*' + s for s in self.suffixes])}"


def parse(operand: Operand, rules: Rules) -> EmailDomain | None:
    values = operand.strings()
    if values is None:
        return None
    exact: set[str] = set()
    suffixes: list[str] = []
    for raw in values:
        value = raw.strip().lower()
        wildcard = value.startswith("*.")
        domain = value[2:] if wildcard else value
        if not is_host_name(domain):
            operand.fail(f"expected a domain or '*.domain', got {raw!r}")
            return None
        if wildcard:
            suffixes.append("." + domain)
        else:
            exact.add(domain)
    return EmailDomain(frozenset(exact), tuple(suffixes))


register(
    "email_domain",
    parse,
    about="caller",
    syntax="email_domain: [example.com, '*.example.org']",
    holds="the caller's verified email address is at a listed domain "
    "(exact; `*.domain` for subdomains only)",
)
