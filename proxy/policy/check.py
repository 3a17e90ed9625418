"""Lint for a loaded policy set: what is legal but probably not what was meant.

Load errors (bad keys, types, regexes, undefined backends...) are raised by
:func:`proxy.policy.load.load_policies`; this module reports warnings about
a set that loaded:

* a rule admitting everyone (``public``) or every signed-in caller
  (``authenticated`` and nothing else) on a broad prefix (``/`` or one segment);
* routes that can never match (an earlier route with the same host and path
  takes every method they accept): shadowed, unreachable;
* routes with the same host and path, overlapping methods and different backends;
* routes that admit no one (no enforced allow rule);
* deny rules that anonymous callers pass unconditionally because they negate a
  criterion about the caller on a route that admits anonymous callers;
* enforced rules that cite ``mode: audit`` rules inside ``any``/``all``/``not``
  (those parts are not enforced there either);
* when more than one identity source is configured (issuers, API keys, mTLS,
  browser login: subjects, groups, emails and claims share one namespace),
  enforced allow rules about who the caller is that pin neither ``issuer`` nor
  ``auth_method``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from proxy.policy.criteria import Criterion, walk
from proxy.policy.criteria.authenticated import Authenticated
from proxy.policy.criteria.citation import audit_citations
from proxy.policy.criteria.logic import All, AnyOf, Not
from proxy.policy.criteria.method import MethodIn
from proxy.policy.criteria.path import PathMatch
from proxy.policy.criteria.public import Public
from proxy.policy.criteria.time_window import TimeWindow
from proxy.policy.evaluate import PolicySet
from proxy.policy.model import Route, Rule


@dataclass(frozen=True, slots=True)
class Finding:
    level: Literal["warning", "error"]
    source: str
    message: str

    def __str__(self) -> str:
        return f"{self.source}: {self.level}: {self.message}"


def _rank(criterion: Criterion) -> int:
    # 3: admits anyone; 2: any signed-in caller; 1: restricts what, not who; 0: restricts who.
    if isinstance(criterion, Public):
        return 3
    if isinstance(criterion, Authenticated):
        return 2 if criterion.expect else 0
    if isinstance(criterion, MethodIn | PathMatch | TimeWindow):
        return 1
    if isinstance(criterion, AnyOf):
        return max(_rank(child) for child in criterion.children)
    if isinstance(criterion, All):
        ranks = [_rank(child) for child in criterion.children]
        if 0 in ranks:
            return 0
        return 2 if 2 in ranks else max(ranks)
    return 0


def admits(criterion: Criterion) -> Literal["everyone", "authenticated"] | None:
    """Whether a rule holds for every caller, every signed-in caller, or restricts who.

    Request criteria (method, path, time) restrict what, not who: a rule made
    only of them admits every signed-in caller (never anonymous ones).
    """
    rank = _rank(criterion)
    return "everyone" if rank == 3 else "authenticated" if rank else None


def _broad(route: Route) -> bool:
    prefix = route.path_prefix
    if prefix is None:
        return False
    return "/" not in prefix.strip("/")


def _negates_identity(criterion: Criterion) -> bool:
    return any(isinstance(node, Not) and node.child.needs_identity for _, node in walk(criterion))


def check_policies(policy: PolicySet, identity_sources: Sequence[str] = ()) -> list[Finding]:
    """Warnings about a loaded policy; ``identity_sources`` names the configured ones."""
    findings: list[Finding] = []
    groups: dict[tuple[str | None, str, str], list[Route]] = {}
    for route in policy.routes:
        findings.extend(_check_rules(route))
        findings.extend(_check_audit_citations(route))
        if len(identity_sources) > 1:
            findings.extend(_check_unpinned(route, identity_sources))
        if route.path_exact is not None:
            key = (route.host, "path_exact", route.path_exact)
        elif route.path_prefix is not None:
            key = (route.host, "path", route.path_prefix)
        else:
            key = (route.host, "path_regex", route.path_regex or "")
        earlier = groups.setdefault(key, [])
        findings.extend(_check_overlap(route, earlier))
        earlier.append(route)
    return findings


def _check_rules(route: Route) -> list[Finding]:
    out: list[Finding] = []
    enforced = [rule for rule in route.allow if rule.mode == "enforce"]
    if not enforced:
        out.append(
            Finding(
                "warning",
                route.source,
                f"route '{route.name}' admits no one (no enforced allow rule)",
            )
        )
    anonymous_allowed = False
    for rule in enforced:
        who = admits(rule.criterion)
        anonymous_allowed = anonymous_allowed or who == "everyone"
        if who is not None and _broad(route):
            target = "everyone" if who == "everyone" else "every authenticated caller"
            out.append(
                Finding(
                    "warning",
                    rule.source,
                    f"rule '{rule.name}' admits {target} on broad prefix "
                    f"'{route.path_prefix}' of route '{route.name}'",
                )
            )
    if anonymous_allowed:
        for rule in route.deny:
            if _negates_identity(rule.criterion):
                out.append(
                    Finding(
                        "warning",
                        rule.source,
                        f"deny rule '{rule.name}' of route '{route.name}' negates a "
                        "criterion about the caller: anonymous callers, which the route "
                        "admits, never match it",
                    )
                )
    return out


def _check_audit_citations(route: Route) -> list[Finding]:
    out: list[Finding] = []
    for rule in (*route.deny, *route.allow):
        if rule.dry_run is None:
            continue
        names = ", ".join(f"'{name}'" for name in dict.fromkeys(audit_citations(rule.dry_run)))
        what = f"{rule.effect} rule '{rule.name}' of route '{route.name}'"
        if rule.mode == "audit":
            message = (
                f"{what} is made only of audit-mode rules ({names}): it is not enforced at all"
            )
        else:
            message = (
                f"{what} cites audit-mode rule {names} inside any/all/not: that part is not "
                "enforced (the rule is enforced without it; the audit record's dry_run shows "
                "what enforcing it would change)"
            )
        out.append(Finding("warning", rule.source, message))
    return out


def _names_caller(criterion: Criterion) -> bool:
    # Subjects, groups, emails, scopes and claims: values any identity source can assert.
    return any(
        node.needs_identity and not node.pins_source and not node.children
        for _, node in walk(criterion)
    )


def _check_unpinned(route: Route, sources: Sequence[str]) -> list[Finding]:
    return [
        _unpinned(rule, route, sources)
        for rule in route.allow
        if rule.mode == "enforce"
        and not rule.criterion.pins_source
        and _names_caller(rule.criterion)
    ]


def _unpinned(rule: Rule, route: Route, sources: Sequence[str]) -> Finding:
    return Finding(
        "warning",
        rule.source,
        f"allow rule '{rule.name}' of route '{route.name}' matches who the caller is but pins "
        f"neither 'issuer' nor 'auth_method', while {len(sources)} identity sources are "
        f"configured ({', '.join(sources)}): any of them can assert the same subject, "
        "groups, email or claims",
    )


def _check_overlap(route: Route, earlier: list[Route]) -> list[Finding]:
    out: list[Finding] = []
    if not earlier:
        return out
    covered: set[str] = set()
    for other in earlier:
        if other.methods is None:
            out.append(_shadowed(route, other))
            return out
        covered |= other.methods
    if route.methods is not None and route.methods <= covered:
        out.append(_shadowed(route, earlier[0]))
        return out
    for other in earlier:
        overlap = route.methods is None or other.methods is None or route.methods & other.methods
        if overlap and other.backend != route.backend:
            out.append(
                Finding(
                    "warning",
                    route.source,
                    f"route '{route.name}' (backend {route.backend}) overlaps route "
                    f"'{other.name}' (backend {other.backend}, {other.source}) on the same host "
                    "and path; the earlier route takes the methods both accept",
                )
            )
    return out


def _shadowed(route: Route, by: Route) -> Finding:
    return Finding(
        "warning",
        route.source,
        f"route '{route.name}' is unreachable: shadowed by route '{by.name}' ({by.source}) "
        "with the same host and path",
    )
