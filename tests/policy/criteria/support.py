"""Helpers for criterion tests: one rule, loaded from YAML through the real loader."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config.reader import ConfigError
from proxy.model import Identity, RequestFacts
from proxy.policy.criteria import Criterion, Outcome
from tests.policy.support import caller, facts, policy

SOMEONE = caller("someone")


def one_rule(criteria: str) -> str:
    """A policy with one route whose one allow rule is ``{name: r, <criteria>}``."""
    return (
        "routes:\n  - name: app\n    path: /\n    backend: b\n    allow:\n"
        f"      - {{name: r, {criteria}}}\n"
    )


def compiled(tmp_path: Path, criteria: str) -> Criterion:
    """The compiled criterion of a rule made of ``criteria``."""
    return policy(tmp_path, one_rule(criteria)).routes[0].allow[0].criterion


def outcome(
    tmp_path: Path,
    criteria: str,
    identity: Identity | None = SOMEONE,
    request: RequestFacts | None = None,
    now: float = 0.0,
) -> Outcome:
    """The three-valued outcome of a rule made of ``criteria``."""
    return compiled(tmp_path, criteria).test(request or facts(), identity, now)


def holds(
    tmp_path: Path,
    criteria: str,
    identity: Identity | None = SOMEONE,
    request: RequestFacts | None = None,
    now: float = 0.0,
) -> bool:
    """Whether the route admits the caller through that one rule."""
    ps = policy(tmp_path, one_rule(criteria))
    return ps.decide(ps.routes[0], request or facts(), identity, now).allowed


def refused(tmp_path: Path, criteria: str) -> str:
    """Every problem loading a rule made of ``criteria``, one per line."""
    with pytest.raises(ConfigError) as info:
        policy(tmp_path, one_rule(criteria))
    return "\n".join(str(p) for p in info.value.problems)
