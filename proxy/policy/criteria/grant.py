"""``grant``: the caller holds an approved just-in-time grant, in force now, for this
rule on the matched route (see :mod:`proxy.grants`).

``grant: {approvers: {groups: [sre]}, max_duration: 8h, justification: required}``.
``approvers`` is a rule body (criteria, or a named rule's name) that must say
who approves; the access API evaluates it on the approver and their request
with this same evaluation code. A grant is for the innermost rule that holds
the criterion (an inline rule's ``name``, or a named rule's name).

The caller's grants reach the policy as data, :attr:`Identity.grants`: read
before authorisation only on routes with grant rules, and only for the
matched route. A grant counts from its start until its end and never longer
than ``max_duration`` as the policy says now (lowering it shortens grants
already given).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from proxy.config.reader import format_duration, parse_duration
from proxy.model import HeldGrant, Identity, RequestFacts
from proxy.policy.criteria.base import (
    CallerLeaf,
    Criterion,
    Outcome,
    Rules,
    describe_tree,
    register,
)
from proxy.policy.criteria.operand import Operand

Justification = Literal["required", "optional"]


@dataclass(frozen=True, slots=True)
class GrantSpec:
    """What a rule's ``grant`` criterion says: who approves, for how long at most, and
    whether a justification is required. Read by the access API (to validate requests
    and decisions) and by :class:`GrantRequired`.

    ``rule`` is the policy rule a grant is for: the named or inline rule whose
    body holds the ``grant`` criterion (the innermost one, for a named rule used
    inside another)."""

    rule: str
    approvers: Criterion = field(compare=False)
    max_duration: float
    justification: Justification = "required"
    source: str = ""

    def describe(self) -> str:
        return (
            f"grant for rule {self.rule} (approvers: {describe_tree(self.approvers)}; "
            f"max {format_duration(self.max_duration)}; justification {self.justification})"
        )


class GrantRequired(CallerLeaf):
    __slots__ = ("spec",)
    # A grant belongs to one issuer and subject: no other identity source can match it.
    pins_source = True

    def __init__(self, spec: GrantSpec) -> None:
        self.spec = spec

    def held_by(self, identity: Identity, now: float) -> HeldGrant | None:
        """The grant that satisfies this criterion now, if the caller holds one."""
        spec = self.spec
        for held in identity.grants:
            if held.rule != spec.rule:
                continue
            if held.starts_at <= now < min(held.ends_at, held.starts_at + spec.max_duration):
                return held
        return None

    def test(self, facts: RequestFacts, identity: Identity | None, now: float) -> Outcome:
        if identity is None:
            return None
        return self.held_by(identity, now) is not None

    def describe(self) -> str:
        return self.spec.describe()


_JUSTIFICATIONS: dict[str, Justification] = {"required": "required", "optional": "optional"}


def _seconds(operand: Operand) -> float | None:
    value = operand.value()
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = parse_duration(value)
    if seconds is None or seconds <= 0:
        operand.fail(f"expected a positive duration like 8h, got {operand.kind()}")
        return None
    return seconds


def _approvers(operand: Operand, rules: Rules) -> Criterion | None:
    approvers = rules.nested(operand)
    if approvers is not None and not approvers.needs_identity:
        operand.fail("must say who approves (groups, subject, email...)")
        return None
    return approvers


def parse(operand: Operand, rules: Rules) -> GrantRequired | None:
    fields = operand.fields(("approvers", "max_duration", "justification"))
    if fields is None:
        return None
    missing = [key for key in ("approvers", "max_duration") if key not in fields]
    if missing:
        operand.fail(f"missing required key '{missing[0]}'")
        return None
    approvers = _approvers(fields["approvers"], rules)
    max_duration = _seconds(fields["max_duration"])
    justification: Justification | None = "required"
    if "justification" in fields:
        chosen = fields["justification"].choice(("required", "optional"))
        justification = (
            None if chosen is None else "optional" if chosen == "optional" else "required"
        )
    if approvers is None or max_duration is None or justification is None or not rules.rule_name:
        return None
    source = f"{operand.doc.path}:{operand.node.start_mark.line + 1}"
    return GrantRequired(GrantSpec(rules.rule_name, approvers, max_duration, justification, source))


register(
    "grant",
    parse,
    about="caller",
    syntax="grant: {approvers: {groups: [sre]}, max_duration: 8h, justification: required}",
    holds="the caller holds an approved grant, in force now, for this rule on the matched "
    "route (requested at `/.gatehouse/access/`, approved by someone `approvers` admits, "
    "never the requester)",
)
