"""Which grant admitted a request (for its audit record): pure, over the decision."""

from __future__ import annotations

import functools

from proxy.model import Identity
from proxy.policy.criteria import Criterion
from proxy.policy.criteria.grant import GrantRequired
from proxy.policy.model import Rule


def admitting_grant(
    rules: tuple[Rule, ...], reason: str, identity: Identity, now: float
) -> str | None:
    """The id of the grant under which the rule that decided (``allowed:<rule>``)
    admitted the caller; None when that rule holds no grant criterion the caller meets."""
    for rule in rules:
        if rule.reason != reason:
            continue
        for criterion in grant_criteria(rule):
            held = criterion.held_by(identity, now)
            if held is not None:
                return held.id
    return None


@functools.lru_cache(maxsize=4096)
def grant_criteria(rule: Rule) -> tuple[GrantRequired, ...]:
    """The grant criteria in a rule's tree (walked once per rule object)."""
    return tuple(_walk(rule.criterion))


def _walk(criterion: Criterion) -> list[GrantRequired]:
    if isinstance(criterion, GrantRequired):
        return [criterion]
    return [found for child in criterion.children for found in _walk(child)]
