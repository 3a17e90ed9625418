"""Deciding one request against a loaded policy set: pure functions over plain data.

Order of evaluation for a matched route:

1. every ``deny`` rule; the first enforced one that holds decides
   (``denied:<rule>``): deny wins over any allow. A deny rule that is
   unknown for an identified caller, because a claim it reads was not
   received (:attr:`Identity.unknown_claims`), decides too
   (``unknown_claims:<rule>``): it fails closed. For a caller without
   identity, deny rules about the caller are unknown and do not decide;
2. ``allow`` rules in order; the first enforced one that holds decides
   (``allowed:<rule>``). For a caller without identity an allow rule holds
   only through an explicit ``public: true`` (never implied);
3. otherwise ``unauthenticated`` when there is no identity (the caller may
   retry with one: 401), ``unknown_claims:<rule>`` when an allow rule was
   unknown for want of a claim, and ``no_rule_matched`` otherwise (403).

``mode: audit`` rules never change the outcome: what they would have
decided is listed in :attr:`Decision.audit` (``allowed:<rule>``,
``denied:<rule>``, ``unknown_claims:<rule>``). An enforced rule that cites
audit rules inside ``any``/``all``/``not`` is enforced without them; when
enforcing them would change whether it holds, the entry is
``allowed:<rule>``/``denied:<rule>`` (it would hold) or
``not_allowed:<rule>``/``not_denied:<rule>`` (it would not). A route
without allow rules admits no one.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from proxy.errors import Reason
from proxy.model import Identity, RequestFacts
from proxy.policy.criteria import Criterion, Outcome, walk
from proxy.policy.criteria.logic import admits_anonymous
from proxy.policy.index import RouteIndex
from proxy.policy.model import Decision, Route, Rule

UNKNOWN_CLAIMS = "unknown_claims"


@dataclass(frozen=True, slots=True)
class RuleOutcome:
    """One rule as evaluated for an explanation."""

    rule: Rule
    outcome: Outcome
    criteria: tuple[tuple[int, str, Outcome], ...]  # (depth, description, outcome)


@dataclass(frozen=True, slots=True)
class Explanation:
    route: Route | None
    decision: Decision
    rules: tuple[RuleOutcome, ...]
    unknown: str = "unknown (no identity)"  # what an unknown outcome means for this caller

    def lines(self) -> list[str]:
        out: list[str] = []
        if self.route is None:
            out.append("route: none matched")
        else:
            r = self.route
            out.append(f"route: {r.name} (backend {r.backend}, {r.source})")
            if not r.allow:
                out.append("  route has no allow rules: it admits no one")
        for item in self.rules:
            rule = item.rule
            mode = " [audit: not enforced]" if rule.mode == "audit" else ""
            out.append(
                f"  {rule.effect} {rule.name}{mode} ({rule.source}): {self.text(item.outcome)}"
            )
            for depth, text, outcome in item.criteria:
                out.append(f"    {'  ' * depth}{text}: {self.text(outcome)}")
        d = self.decision
        out.append(f"decision: {'allow' if d.allowed else 'deny'} ({d.reason})")
        if d.audit:
            out.append(f"audit-mode rules that fired: {', '.join(d.audit)}")
        out.append(f"policy version: {d.policy_version}")
        return out

    def text(self, outcome: Outcome) -> str:
        return "match" if outcome else "no match" if outcome is False else self.unknown


@dataclass(frozen=True, slots=True, eq=False)
class PolicySet:
    """One loaded, compiled policy version. Immutable: reloads build a new one."""

    routes: tuple[Route, ...]
    version: str
    files: tuple[str, ...] = ()
    index: RouteIndex = field(init=False, repr=False)
    not_found: Decision = field(init=False, repr=False)
    # Every claim the policy reads, as dotted paths: ``claim`` criteria, ``mfa``'s
    # amr/acr, ``scope``'s scope/scp, the email criteria's email/email_verified,
    # ``groups`` (for the issuer's configured group claims) and every route's
    # ``pass_claims``, audit rules included: what a size-bounded session keeps.
    referenced_claims: frozenset[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", RouteIndex(self.routes))
        object.__setattr__(
            self, "not_found", Decision(False, Reason.ROUTE_NOT_FOUND, None, self.version)
        )
        object.__setattr__(self, "referenced_claims", _referenced_claims(self.routes))

    def match(self, host: str, path: str, method: str) -> Route | None:
        """The route for a request: ``host`` as :func:`proxy.http.host.parse_host`
        normalised it, ``path`` the canonical path (no query)."""
        return self.index.match(host, path, method)

    def decide(
        self, route: Route, facts: RequestFacts, identity: Identity | None, now: float
    ) -> Decision:
        audit: tuple[str, ...] = ()
        for rule in route.deny:
            outcome = rule.criterion.test(facts, identity, now)
            if rule.dry_run is not None:
                audit += _dry_run_deny(rule, outcome, facts, identity, now)
            if outcome is False or (outcome is None and identity is None):
                continue
            if rule.mode == "audit":
                audit += (rule.reason if outcome else _unknown_reason(rule),)
                continue
            if outcome is None:
                return Decision(False, _unknown_reason(rule), route.name, self.version, audit)
            return _with_audit(rule, route, self.version, audit)
        for rule in route.allow:
            holds = (
                rule.criterion.test(facts, identity, now) is True
                if identity is not None
                else admits_anonymous(rule.criterion, facts, now)
            )
            if rule.dry_run is not None:
                audit += _dry_run_allow(rule, holds, facts, identity, now)
            if holds:
                if rule.mode == "audit":
                    audit += (rule.reason,)
                    continue
                return _with_audit(rule, route, self.version, audit)
        if identity is None:
            return Decision(False, Reason.UNAUTHENTICATED, route.name, self.version, audit)
        reason = _unknown_allow(route, facts, identity, now) if identity.unknown_claims else None
        return Decision(False, reason or Reason.NO_RULE_MATCHED, route.name, self.version, audit)

    def explain(self, facts: RequestFacts, identity: Identity | None, now: float) -> Explanation:
        """Every rule of the matched route evaluated, with the decision :meth:`decide` makes."""
        route = self.match(facts.host, facts.path, facts.method)
        if route is None:
            return Explanation(None, self.not_found, ())
        outcomes = tuple(
            RuleOutcome(
                rule,
                _rule_outcome(rule, facts, identity, now),
                tuple(trace(rule.dry_run or rule.criterion, facts, identity, now)),
            )
            for rule in (*route.deny, *route.allow)
        )
        unknown = "unknown (no identity)"
        if identity is not None and identity.unknown_claims:
            unknown = f"unknown (claims not received: {', '.join(sorted(identity.unknown_claims))})"
        decision = self.decide(route, facts, identity, now)
        return Explanation(route, decision, outcomes, unknown)


def _unknown_reason(rule: Rule) -> str:
    return f"{UNKNOWN_CLAIMS}:{rule.name}"


def _unknown_allow(route: Route, facts: RequestFacts, identity: Identity, now: float) -> str | None:
    """The first enforced allow rule that was unknown for want of a claim, as a reason."""
    for rule in route.allow:
        if rule.mode == "enforce" and rule.criterion.test(facts, identity, now) is None:
            return _unknown_reason(rule)
    return None


def _dry_run_deny(
    rule: Rule, enforced: Outcome, facts: RequestFacts, identity: Identity | None, now: float
) -> tuple[str, ...]:
    assert rule.dry_run is not None
    would = rule.dry_run.test(facts, identity, now)
    fires = enforced is True or (enforced is None and identity is not None)
    would_fire = would is True or (would is None and identity is not None)
    if would_fire and not fires:
        return (rule.reason if would else _unknown_reason(rule),)
    if fires and not would_fire:
        return (f"not_{rule.reason}",)
    return ()


def _dry_run_allow(
    rule: Rule, holds: bool, facts: RequestFacts, identity: Identity | None, now: float
) -> tuple[str, ...]:
    assert rule.dry_run is not None
    dry_run = rule.dry_run
    would = (
        dry_run.test(facts, identity, now) is True
        if identity is not None
        else admits_anonymous(dry_run, facts, now)
    )
    if would and not holds:
        return (rule.reason,)
    if holds and not would:
        return (f"not_{rule.reason}",)
    return ()


def _rule_outcome(
    rule: Rule, facts: RequestFacts, identity: Identity | None, now: float
) -> Outcome:
    outcome = rule.criterion.test(facts, identity, now)
    if rule.effect == "allow" and identity is None and outcome is True:
        # Holds, but not through `public: true`: it restricts identified callers only.
        return True if admits_anonymous(rule.criterion, facts, now) else None
    return outcome


def _with_audit(rule: Rule, route: Route, version: str, audit: tuple[str, ...]) -> Decision:
    decision = rule.decision
    if decision is None or decision.policy_version != version or decision.route != route.name:
        decision = Decision(rule.effect == "allow", rule.reason, route.name, version)
    return replace(decision, audit=audit) if audit else decision


def trace(
    criterion: Criterion, facts: RequestFacts, identity: Identity | None, now: float
) -> list[tuple[int, str, Outcome]]:
    """Every criterion of a tree with its outcome, for explanations (not the hot path)."""
    return [
        (depth, node.describe(), node.test(facts, identity, now)) for depth, node in walk(criterion)
    ]


def _referenced_claims(routes: tuple[Route, ...]) -> frozenset[str]:
    claims: set[str] = set()
    for route in routes:
        claims.update(route.pass_claims)
        for rule in (*route.deny, *route.allow):
            for tree in (rule.criterion, rule.dry_run):
                if tree is not None:
                    for _, node in walk(tree):
                        claims.update(node.claims)
    return frozenset(claims)
