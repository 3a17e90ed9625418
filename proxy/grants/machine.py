"""The life of a grant request, as a transition table over plain data (no I/O).

::

    pending ──approve──▶ approved ──start──▶ active ──end──▶ expired
       │ ╲                  │                  │
       │  ╲deny▶ denied     └─────revoke───────┴──▶ revoked
       │   ╲lapse▶ expired
       └──revoke──▶ revoked

``approve``, ``deny`` and ``revoke`` are people's decisions; ``lapse`` (nobody
decided in time), ``start`` and ``end`` are the clock's, applied by
:func:`advance` whenever a grant is read, so a grant is never in force past
its end whether or not anyone wrote the expiry down yet. Who may take a
decision is not this module's business (see :mod:`proxy.grants.permissions`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from proxy.errors import GrantConflict, Reason
from proxy.grants.model import Action, Actor, Grant, GrantEvent, State, new_grant_id

# The refusal of a step the grant's state does not allow: ``grant_<state>``.
_IN_STATE: Mapping[State, Reason] = {
    "pending": Reason.GRANT_PENDING,
    "approved": Reason.GRANT_APPROVED,
    "active": Reason.GRANT_ACTIVE,
    "denied": Reason.GRANT_DENIED,
    "expired": Reason.GRANT_EXPIRED,
    "revoked": Reason.GRANT_REVOKED,
}
TRANSITIONS: Mapping[tuple[State, Action], State] = {
    ("pending", "approve"): "approved",
    ("pending", "deny"): "denied",
    ("pending", "revoke"): "revoked",
    ("pending", "lapse"): "expired",
    ("approved", "start"): "active",
    ("approved", "revoke"): "revoked",
    ("active", "end"): "expired",
    ("active", "revoke"): "revoked",
}
DECISIONS: frozenset[Action] = frozenset({"approve", "deny", "revoke"})


def request(
    requester: Actor,
    *,
    route: str,
    rule: str,
    duration: float,
    justification: str,
    now: float,
    decide_within: float,
    start_at: float | None = None,
    grant_id: str | None = None,
) -> Grant:
    """A new pending request; it lapses unless decided within ``decide_within`` seconds."""
    return Grant(
        id=grant_id or new_grant_id(),
        requester=requester,
        route=route,
        rule=rule,
        duration=duration,
        justification=justification,
        requested_at=now,
        decide_by=now + decide_within,
        start_at=start_at,
        history=(GrantEvent(now, "request", requester, justification),),
    )


def _move(grant: Grant, action: Action, event: GrantEvent, **changes: Any) -> Grant:
    target = TRANSITIONS.get((grant.state, action))
    if target is None:
        raise GrantConflict(_IN_STATE[grant.state], detail=f"cannot {action} a {grant.state} grant")
    return dataclasses.replace(grant, state=target, history=(*grant.history, event), **changes)


def _due(grant: Grant, now: float) -> tuple[Action, float] | None:
    """The clock event that has come due for ``grant`` at ``now``, and when it fell due."""
    if grant.state == "pending" and now >= grant.decide_by:
        return "lapse", grant.decide_by
    if grant.state == "approved" and grant.starts_at is not None and now >= grant.starts_at:
        return "start", grant.starts_at
    if grant.state == "active" and grant.ends_at is not None and now >= grant.ends_at:
        return "end", grant.ends_at
    return None


def advance(grant: Grant, now: float) -> Grant:
    """``grant`` with every clock event due by ``now`` applied (each one in its history,
    dated when it fell due); the same object when nothing was due."""
    due = _due(grant, now)
    while due is not None:
        action, at = due
        grant = _move(grant, action, GrantEvent(at, action))
        due = _due(grant, now)
    return grant


def state_at(grant: Grant, now: float) -> State:
    return advance(grant, now).state


def decide(grant: Grant, action: Action, actor: Actor, now: float, reason: str) -> Grant:
    """Apply a person's decision at ``now``; GrantConflict when the state does not allow it.

    Approval fixes the window: from the requested start (or now, if that has
    passed or none was asked for) for the requested duration.
    """
    if action not in DECISIONS:
        raise ValueError(f"{action} is not a decision")
    grant = advance(grant, now)
    event = GrantEvent(now, action, actor, reason)
    if action == "approve":
        starts = max(now, grant.start_at) if grant.start_at is not None else now
        grant = _move(
            grant,
            action,
            event,
            starts_at=starts,
            ends_at=starts + grant.duration,
            decided_by=actor,
            decided_at=now,
        )
        return advance(grant, now)
    if action == "deny":
        return _move(grant, action, event, decided_by=actor, decided_at=now)
    return _move(grant, action, event)
