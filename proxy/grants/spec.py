"""What a policy rule says about grants: who approves, for how long at most, and
whether a justification is required. Built by the ``grant`` criterion at load
time; read by the API (to validate requests and decisions) and the decision."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from proxy.policy.criteria import Criterion

Justification = Literal["required", "optional"]


@dataclass(frozen=True, slots=True)
class GrantSpec:
    """``rule`` is the policy rule a grant is for: the named or inline rule whose
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


def describe_tree(criterion: Criterion) -> str:
    children = criterion.children
    if not children:
        return criterion.describe()
    return f"{criterion.describe()}({', '.join(describe_tree(c) for c in children)})"


def format_duration(seconds: float) -> str:
    """``8h``, ``1h30m``, ``45s``: the way policies write durations."""
    whole = round(seconds)
    if whole <= 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, whole = divmod(whole, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts[:2])
