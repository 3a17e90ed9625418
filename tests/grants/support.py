"""Builders for grant tests: actors, specs and requests as plain data."""

from __future__ import annotations

from typing import Any

from proxy.grants import machine
from proxy.grants.model import Actor, Grant
from proxy.policy.criteria.fields import IdentitySetAny
from proxy.policy.criteria.grant import GrantSpec

ISSUER = "https://idp.example.com"
ALICE = Actor(ISSUER, "alice", "alice@example.com")
BOB = Actor(ISSUER, "bob", "bob@example.com")
CAROL = Actor(ISSUER, "carol", "carol@example.com")
HOUR = 3600.0
T0 = 1_800_000_000.0


def sre_spec(**overrides: Any) -> GrantSpec:
    values: dict[str, Any] = {
        "rule": "prod-writers",
        "approvers": IdentitySetAny("groups", "groups", frozenset({"sre"}), frozenset({"groups"})),
        "max_duration": 8 * HOUR,
        "justification": "required",
    }
    values.update(overrides)
    return GrantSpec(**values)


def pending(
    requester: Actor = ALICE,
    *,
    now: float = T0,
    duration: float = HOUR,
    route: str = "prod-api",
    rule: str = "prod-writers",
    start_at: float | None = None,
    decide_within: float = 24 * HOUR,
) -> Grant:
    return machine.request(
        requester,
        route=route,
        rule=rule,
        duration=duration,
        justification="backfill of 2026-11-02",
        now=now,
        decide_within=decide_within,
        start_at=start_at,
    )
