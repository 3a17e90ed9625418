"""A named ``mode: audit`` rule cited inside another rule's ``any``/``all``/``not``.

Audit mode holds wherever a rule is cited: the citing rule is enforced as if
the audit rule were absent (:func:`enforced_part`), and evaluated as written
only to report what enforcing it would change. "Absent" is the neutral
element of the enclosing ``all`` or ``any``: a dry-run requirement in
``all`` restricts no one, a dry-run alternative in ``any`` admits no one. A
rule made only of audit citations is an audit rule itself.
"""

from __future__ import annotations

from proxy.model import Identity, RequestFacts
from proxy.policy.criteria.base import Criterion, Outcome
from proxy.policy.criteria.logic import All, AnyOf, Not


class AuditCitation:
    """Evaluates the cited rule unchanged: the view "as if it were enforced"."""

    __slots__ = ("children", "criterion", "name", "needs_identity", "reads_caller")
    pins_source = False
    claims: frozenset[str] = frozenset()

    def __init__(self, name: str, criterion: Criterion) -> None:
        self.name = name
        self.criterion = criterion
        self.children = (criterion,)
        self.needs_identity = criterion.needs_identity
        self.reads_caller = criterion.reads_caller

    def test(self, facts: RequestFacts, identity: Identity | None, now: float) -> Outcome:
        return self.criterion.test(facts, identity, now)

    def describe(self) -> str:
        return f"rule {self.name} [audit: not enforced]"


def enforced_part(criterion: Criterion) -> Criterion | None:
    """The criterion as enforced: audit citations left out; None when nothing is left."""
    if isinstance(criterion, AuditCitation):
        return None
    if isinstance(criterion, All | AnyOf):
        kept = [part for part in map(enforced_part, criterion.children) if part is not None]
        if not kept:
            return None
        if all(a is b for a, b in zip(kept, criterion.children, strict=False)) and len(kept) == len(
            criterion.children
        ):
            return criterion
        if isinstance(criterion, All):
            return All(tuple(kept), criterion.label)
        return AnyOf(tuple(kept))
    if isinstance(criterion, Not):
        inner = enforced_part(criterion.child)
        if inner is None:
            return None
        return criterion if inner is criterion.child else Not(inner)
    return criterion


def audit_citations(criterion: Criterion) -> list[str]:
    """Names of the audit rules cited anywhere in a criterion, in order."""
    if isinstance(criterion, AuditCitation):
        return [criterion.name]
    return [name for child in criterion.children for name in audit_citations(child)]
