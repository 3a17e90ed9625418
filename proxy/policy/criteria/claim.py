"""``claim``: a claim at a dotted path exists, or matches a value.

``claim: {path: org.unit, is: data}``; a list of such mappings must all hold.
On a list-valued claim a matcher holds for any element (``contains`` then
means "has this element"). A key that itself contains dots
(``https://example.com/roles``) is found whole before the path is split.
Unknown when the claim (its first path segment) is listed in
:attr:`Identity.unknown_claims`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from proxy.model import Identity, RequestFacts
from proxy.policy.criteria.base import CallerLeaf, Criterion, Outcome, Rules, register, unknown
from proxy.policy.criteria.logic import All
from proxy.policy.criteria.matcher import MATCHERS, Matcher, parse_matcher, same
from proxy.policy.criteria.operand import Operand

_MISSING: Any = object()


def claim_value(claims: Mapping[str, Any], path: str, parts: tuple[str, ...]) -> Any:
    """The claim at a dotted path; a key that itself contains dots is found whole first."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in parts:
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


class Claim(CallerLeaf):
    __slots__ = ("claims", "exists", "matcher", "parts", "path", "unknown_if")

    def __init__(self, path: str, matcher: Matcher | None, exists: bool | None) -> None:
        self.path = path
        self.parts = tuple(path.split("."))
        self.matcher = matcher
        self.exists = exists
        self.claims = frozenset({path})
        # Unknown when the claim itself, or the top-level claim holding it, was not received.
        self.unknown_if = frozenset({path, self.parts[0]})

    def test(self, facts: RequestFacts, identity: Identity | None, now: float) -> Outcome:
        if identity is None:
            return None
        if identity.unknown_claims and unknown(identity, self.unknown_if):
            return None
        value = claim_value(identity.claims, self.path, self.parts)
        if self.exists is not None:
            return (value is not _MISSING) is self.exists
        if value is _MISSING:
            return False
        matcher = self.matcher
        assert matcher is not None
        if isinstance(value, list):
            if matcher.kind == "contains":
                return any(same(item, matcher.operand) for item in value)
            return any(matcher.matches(item) for item in value)
        return matcher.matches(value)

    def describe(self) -> str:
        if self.exists is not None:
            return f"claim {self.path} {'exists' if self.exists else 'is absent'}"
        assert self.matcher is not None
        return f"claim {self.path} {self.matcher.describe()}"


def one_claim(operand: Operand) -> Claim | None:
    fields = operand.fields(("path", "exists", *MATCHERS))
    if fields is None:
        return None
    if "path" not in fields:
        operand.fail("missing required key 'path'")
        return None
    path = fields["path"].text()
    if not path:
        if path == "":
            fields["path"].fail("must not be empty")
        return None
    if "exists" in fields:
        if any(kind in fields for kind in MATCHERS):
            operand.fail("'exists' cannot be combined with a matcher")
            return None
        exists = fields["exists"].flag()
        return Claim(path, None, exists) if exists is not None else None
    matcher = parse_matcher(operand, fields, MATCHERS)
    return Claim(path, matcher, None) if matcher is not None else None


def parse(operand: Operand, rules: Rules) -> Criterion | None:
    if not operand.is_list:
        return one_claim(operand)
    items = operand.items()
    if items is None:
        return None
    claims: list[Criterion] = []
    for item in items:
        claim = one_claim(item)
        if claim is None:
            return None
        claims.append(claim)
    return All(tuple(claims), "claims")


register(
    "claim",
    parse,
    about="caller",
    syntax="claim: {path: org.unit, is: data}",
    holds="the claim at the dotted `path` matches `is`, `in`, `starts_with`, `ends_with`, "
    "`contains`, or `exists` (true or false); a list of such mappings must all hold",
)
