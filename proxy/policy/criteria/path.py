"""``path``: the canonical request path is under a prefix, or matches a matcher.

``path: /reports`` is a segment-aware prefix (``/reports`` and
``/reports/...``, never ``/reportsx``); ``path: {regex: ...}`` must match the
whole path; ``is``, ``in``, ``starts_with``, ``ends_with`` and ``contains``
work as for claims. The query is never part of the path.
"""

from __future__ import annotations

from proxy.errors import RequestRejected
from proxy.http.canonical import canonical_path
from proxy.model import Identity, RequestFacts
from proxy.policy.criteria.base import Leaf, Outcome, Rules, register
from proxy.policy.criteria.matcher import MATCHERS, Matcher, parse_matcher
from proxy.policy.criteria.operand import Operand

_PATH_MATCHERS = (*MATCHERS, "regex")


def is_canonical(path: str) -> bool:
    """Whether a configured path is already canonical (else it could never match)."""
    if not path.startswith("/") or "?" in path or "#" in path:
        return False
    try:
        return canonical_path(path) == path
    except RequestRejected:
        return False


def prefix_matches(prefix: str, path: str) -> bool:
    """Segment-aware prefix: ``/api`` matches ``/api`` and ``/api/x``, never ``/apifoo``.

    A prefix ending in ``/`` is literal: ``/api/`` matches ``/api/`` and
    ``/api/x`` but not ``/api``.
    """
    if prefix.endswith("/"):
        return path.startswith(prefix)
    return path == prefix or path.startswith(prefix + "/")


class PathMatch(Leaf):
    __slots__ = ("matcher", "prefix")

    def __init__(self, prefix: str | None, matcher: Matcher | None) -> None:
        self.prefix = prefix
        self.matcher = matcher

    def test(self, facts: RequestFacts, identity: Identity | None, now: float) -> Outcome:
        if self.prefix is not None:
            return prefix_matches(self.prefix, facts.path)
        assert self.matcher is not None
        return self.matcher.matches(facts.path)

    def describe(self) -> str:
        if self.prefix is not None:
            return f"path under {self.prefix}"
        assert self.matcher is not None
        return f"path {self.matcher.describe()}"


def parse(operand: Operand, rules: Rules) -> PathMatch | None:
    if operand.is_mapping:
        fields = operand.fields(_PATH_MATCHERS)
        matcher = parse_matcher(operand, fields, _PATH_MATCHERS) if fields is not None else None
        return PathMatch(None, matcher) if matcher is not None else None
    prefix = operand.text()
    if prefix is None:
        return None
    if not is_canonical(prefix):
        operand.fail(f"{prefix!r} is not a canonical path")
        return None
    return PathMatch(prefix, None)


register(
    "path",
    parse,
    about="request",
    syntax="path: /reports",
    holds="the canonical path is under the prefix (segment-aware); with a mapping such as "
    "`{regex: '/v[0-9]+/items'}`, it matches `is`, `in`, `starts_with`, `ends_with`, "
    "`contains` or `regex` (whole path)",
)
