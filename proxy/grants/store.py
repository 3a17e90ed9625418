"""Where grants live: the contract both stores keep, and the in-memory ledger
the file store is built on.

Every change replaces a grant *over the version that was read* (compare and
set): two replicas, or two approvers, deciding one request at once cannot
both succeed, and each expiry is recorded exactly once, by whoever wins.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from proxy.errors import GrantConflict, GrantLimit, Reason
from proxy.grants.model import FINAL, Grant, held
from proxy.model import HeldGrant

OPEN_STATES = ("pending", "approved", "active")


@dataclass(frozen=True, slots=True)
class Limits:
    max_pending_per_caller: int
    max_open: int
    # Finished grants are forgotten this long after their last event.
    retention: float


class GrantStore(Protocol):
    async def add(self, grant: Grant, now: float) -> None:
        """Store a new pending request; GrantLimit past the limits, GrantConflict
        (``request_pending``) when the caller already waits for the same rule."""

    async def get(self, grant_id: str) -> Grant | None: ...

    async def replace(self, old: Grant, new: Grant) -> Grant | None:
        """Store ``new`` (with the next version) if ``old`` is still what is stored;
        the stored grant, or None when someone else changed it first."""

    async def of_caller(self, issuer: str, subject: str, limit: int) -> list[Grant]:
        """The caller's grants, newest first."""

    async def open_grants(self) -> list[Grant]:
        """Every pending, approved or active grant."""

    async def due(self, now: float) -> list[Grant]:
        """Open grants whose next clock event (lapse, start, end) has come."""

    async def held(self, issuer: str, subject: str, route: str) -> tuple[HeldGrant, ...]:
        """The caller's approved grants on ``route``: what the decision reads."""

    async def counts(self) -> tuple[int, int]:
        """(pending requests, active grants) as stored."""

    async def close(self) -> None: ...


def finished_at(grant: Grant) -> float:
    return grant.history[-1].at if grant.history else grant.requested_at


def next_version(old: Grant, new: Grant) -> Grant:
    return dataclasses.replace(new, version=old.version + 1)


class Ledger:
    """All grants in memory, keeping the store contract (for one process at a time)."""

    def __init__(self, limits: Limits, grants: Iterable[Grant] = ()) -> None:
        self.limits = limits
        self.grants: dict[str, Grant] = {g.id: g for g in grants}

    def add(self, grant: Grant, now: float) -> None:
        open_grants = [g for g in self.grants.values() if g.state in OPEN_STATES]
        if len(open_grants) >= self.limits.max_open:
            raise GrantLimit(detail="max_open reached")
        waiting = [
            g
            for g in open_grants
            if g.state == "pending"
            and g.decide_by > now
            and g.requester.same_identity(grant.requester)
        ]
        if any((g.route, g.rule) == (grant.route, grant.rule) for g in waiting):
            raise GrantConflict(Reason.REQUEST_PENDING, detail="a request for this rule is pending")
        if len(waiting) >= self.limits.max_pending_per_caller:
            raise GrantLimit(detail="max_pending_per_caller reached")
        self.grants[grant.id] = grant

    def replace(self, old: Grant, new: Grant) -> Grant | None:
        current = self.grants.get(old.id)
        if current is None or current.version != old.version:
            return None
        stored = next_version(old, new)
        self.grants[old.id] = stored
        return stored

    def of_caller(self, issuer: str, subject: str, limit: int) -> list[Grant]:
        mine = [
            g
            for g in self.grants.values()
            if (g.requester.issuer, g.requester.subject) == (issuer, subject)
        ]
        return sorted(mine, key=lambda g: g.requested_at, reverse=True)[:limit]

    def open_grants(self) -> list[Grant]:
        return [g for g in self.grants.values() if g.state in OPEN_STATES]

    def due(self, now: float) -> list[Grant]:
        out = []
        for grant in self.open_grants():
            at = grant.next_clock_event()
            if at is not None and at <= now:
                out.append(grant)
        return out

    def held_index(self) -> dict[tuple[str, str, str], tuple[HeldGrant, ...]]:
        index: dict[tuple[str, str, str], tuple[HeldGrant, ...]] = {}
        for grant in self.grants.values():
            hold = held(grant)
            if hold is not None:
                key = (grant.requester.issuer, grant.requester.subject, grant.route)
                index[key] = (*index.get(key, ()), hold)
        return index

    def counts(self) -> tuple[int, int]:
        pending = sum(1 for g in self.grants.values() if g.state == "pending")
        active = sum(1 for g in self.grants.values() if g.state == "active")
        return pending, active

    def prune(self, now: float) -> None:
        """Forget finished grants past their retention."""
        horizon = now - self.limits.retention
        self.grants = {
            gid: g
            for gid, g in self.grants.items()
            if g.state not in FINAL or finished_at(g) > horizon
        }
