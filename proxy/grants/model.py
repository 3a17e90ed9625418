"""Grant requests and grants as plain data, and their JSON form for the stores.

A grant belongs to one identity (issuer + subject), one route and one rule,
and, once approved, has a start and an end. The same record is the request
before a decision and the grant after one: its ``state`` says which.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast, get_args

from proxy.model import HeldGrant

State = Literal["pending", "approved", "active", "denied", "expired", "revoked"]
# Decisions people take, and the clock's own events (see machine.TRANSITIONS).
Action = Literal["request", "approve", "deny", "revoke", "lapse", "start", "end"]

STATES: tuple[State, ...] = get_args(State)
ACTIONS: tuple[Action, ...] = get_args(Action)
# What an action did to a grant, as events name it (metrics, the webhook).
PAST_TENSE: dict[str, str] = {
    "request": "requested",
    "approve": "approved",
    "deny": "denied",
    "revoke": "revoked",
    "lapse": "expired",
    "end": "expired",
}
# States a grant never leaves.
FINAL: frozenset[State] = frozenset({"denied", "expired", "revoked"})


@dataclass(frozen=True, slots=True)
class Actor:
    """Who did something: an identity by issuer and subject (email for people to read)."""

    issuer: str
    subject: str
    email: str | None = None

    def same_identity(self, other: Actor) -> bool:
        return (self.issuer, self.subject) == (other.issuer, other.subject)

    def same_person(self, other: Actor) -> bool:
        """One identity, or one mailbox under two identities (a person's API key and
        browser session): for refusing self-approval, where a wider match is safer."""
        if self.same_identity(other):
            return True
        return (
            self.email is not None
            and other.email is not None
            and self.email.lower() == other.email.lower()
        )

    def label(self) -> str:
        return self.email or self.subject


@dataclass(frozen=True, slots=True)
class GrantEvent:
    """One step of a grant's audit trail; ``actor`` is None for the clock."""

    at: float
    action: Action
    actor: Actor | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Grant:
    id: str
    requester: Actor
    route: str
    rule: str
    duration: float  # seconds of access asked for
    justification: str
    requested_at: float
    # A request nobody decides lapses at this time.
    decide_by: float
    state: State = "pending"
    # Requested start (None: as soon as it is approved).
    start_at: float | None = None
    # Set by approval: the grant's window, [starts_at, ends_at).
    starts_at: float | None = None
    ends_at: float | None = None
    decided_by: Actor | None = None
    decided_at: float | None = None
    history: tuple[GrantEvent, ...] = ()
    # Bumped by every stored change: stores replace a grant only over the version read.
    version: int = 0

    def next_clock_event(self) -> float | None:
        """When the clock moves this grant next (lapse, start or end); None when final."""
        if self.state == "pending":
            return self.decide_by
        if self.state == "approved":
            return self.starts_at
        if self.state == "active":
            return self.ends_at
        return None


def new_grant_id() -> str:
    # Unguessable: an id alone never lets anyone see or act on a grant, but it
    # appears in audit logs and URLs, so it must not be enumerable either.
    return "g_" + secrets.token_urlsafe(12)


def held(grant: Grant) -> HeldGrant | None:
    """The decision's view of a grant that is (or will be) in force; None otherwise."""
    if grant.state not in ("approved", "active"):
        return None
    if grant.starts_at is None or grant.ends_at is None:
        return None
    return HeldGrant(grant.id, grant.rule, grant.starts_at, grant.ends_at)


# -- JSON form ---------------------------------------------------------------------
def actor_dict(actor: Actor | None) -> dict[str, Any] | None:
    if actor is None:
        return None
    return {"issuer": actor.issuer, "subject": actor.subject, "email": actor.email}


def actor_from(data: object) -> Actor | None:
    if not isinstance(data, Mapping):
        return None
    email = data.get("email")
    return Actor(str(data["issuer"]), str(data["subject"]), str(email) if email else None)


def grant_dict(grant: Grant) -> dict[str, Any]:
    return {
        "id": grant.id,
        "requester": actor_dict(grant.requester),
        "route": grant.route,
        "rule": grant.rule,
        "duration": grant.duration,
        "justification": grant.justification,
        "requested_at": grant.requested_at,
        "decide_by": grant.decide_by,
        "state": grant.state,
        "start_at": grant.start_at,
        "starts_at": grant.starts_at,
        "ends_at": grant.ends_at,
        "decided_by": actor_dict(grant.decided_by),
        "decided_at": grant.decided_at,
        "history": [
            {"at": e.at, "action": e.action, "actor": actor_dict(e.actor), "reason": e.reason}
            for e in grant.history
        ],
        "version": grant.version,
    }


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def grant_from(data: Mapping[str, Any]) -> Grant | None:
    """A grant from its JSON form; None for anything malformed (never a half-read grant)."""
    try:
        requester = actor_from(data["requester"])
        state = data["state"]
        if requester is None or state not in STATES:
            return None
        history = tuple(
            GrantEvent(
                float(e["at"]),
                cast(Action, e["action"]),
                actor_from(e.get("actor")),
                str(e.get("reason") or ""),
            )
            for e in data.get("history") or ()
            if e.get("action") in ACTIONS
        )
        return Grant(
            id=str(data["id"]),
            requester=requester,
            route=str(data["route"]),
            rule=str(data["rule"]),
            duration=float(data["duration"]),
            justification=str(data.get("justification") or ""),
            requested_at=float(data["requested_at"]),
            decide_by=float(data["decide_by"]),
            state=cast(State, state),
            start_at=_number(data.get("start_at")),
            starts_at=_number(data.get("starts_at")),
            ends_at=_number(data.get("ends_at")),
            decided_by=actor_from(data.get("decided_by")),
            decided_at=_number(data.get("decided_at")),
            history=history,
            version=int(data.get("version") or 0),
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
