"""Requesting, deciding, revoking and expiring grants: the state machine applied to
the store, with every step audited, counted and sent to the webhook.

Who the caller is comes from the Authenticator (the endpoints' business);
whether they are an approver is the rule's ``approvers`` criteria evaluated
by the policy's own code on the caller and their request. People's steps
(request, approve, deny, revoke) are audited in the record of the request
that took them (see :mod:`proxy.grants.endpoint`); the clock's (lapse, end)
get a record of their own, written by whichever replica's sweeper stores the
change first (the store's compare-and-set makes it exactly one).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from proxy.errors import (
    AuditReason,
    GrantConflict,
    GrantError,
    GrantNotFound,
    Reason,
    StateUnavailable,
)
from proxy.grants import machine, permissions
from proxy.grants.catalogue import Catalogue, Requestable, catalogue
from proxy.grants.config import GrantsConfig
from proxy.grants.model import PAST_TENSE, Action, Actor, Grant, GrantEvent
from proxy.grants.store import GrantStore
from proxy.grants.webhook import WebhookSender
from proxy.http.forwarding import new_request_id
from proxy.model import HeldGrant, Identity, RequestFacts
from proxy.observability import metrics
from proxy.observability.audit import AuditRecord, AuditWriter
from proxy.policy.criteria.grant import GrantSpec
from proxy.policy.evaluate import PolicySet

log = logging.getLogger("gatehouse.grants")

# How many of a caller's own grants the page and API list.
LIST_LIMIT = 100
# A decision lost to a concurrent change is tried again on what is stored now.
_RETRIES = 3
# The audit reason of a person's decision.
_DECIDED = {
    "approve": AuditReason.GRANT_APPROVED,
    "deny": AuditReason.GRANT_DENIED,
    "revoke": AuditReason.GRANT_REVOKED,
}


def actor_of(identity: Identity) -> Actor:
    return Actor(identity.issuer, identity.subject, identity.email)


@dataclass(frozen=True, slots=True)
class Outcome:
    """A grant after a step, and the reason code its audit record carries."""

    grant: Grant
    reason: str


class GrantService:
    def __init__(
        self,
        store: GrantStore,
        config: GrantsConfig,
        policies: Callable[[], PolicySet],
        audit: AuditWriter,
        *,
        webhook: WebhookSender | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.config = config
        self._policies = policies
        self._audit = audit
        self._webhook = webhook
        self._clock = clock
        self._sweeper: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[Grant], None]] = []

    # -- policy --------------------------------------------------------------------------
    def catalogue(self) -> Catalogue:
        return catalogue(self._policies())

    def requestable(self) -> list[Requestable]:
        return self.catalogue().items

    def _spec(self, grant: Grant) -> GrantSpec | None:
        return self.catalogue().spec(grant.route, grant.rule)

    def is_approver(self, spec: GrantSpec | None, identity: Identity, facts: RequestFacts) -> bool:
        """The caller satisfies the rule's ``approvers``, by the policy's own evaluation."""
        if spec is None:
            return False
        return spec.approvers.test(facts, identity, self._clock()) is True

    def on_change(self, listener: Callable[[Grant], None]) -> None:
        """Call ``listener`` with every grant this replica stores a change of."""
        self._listeners.append(listener)

    # -- people's steps ----------------------------------------------------------------------
    async def request(
        self,
        caller: Identity,
        *,
        route: str,
        rule: str | None,
        duration: float | None,
        justification: str,
        start_at: float | None = None,
    ) -> Outcome:
        spec = self.catalogue().spec(route, rule)
        if spec is None:
            # Unknown route, or no grant rule by that name: the same answer for both.
            raise GrantError(Reason.NO_SUCH_GRANT_RULE, detail="route has no such grant rule")
        now = self._clock()
        grant = machine.request(
            actor_of(caller),
            route=route,
            rule=spec.rule,
            duration=permissions.request_duration(spec, duration),
            justification=permissions.request_justification(spec, justification),
            now=now,
            decide_within=self.config.decide_within,
            start_at=permissions.request_start(start_at, now, self.config.max_start_delay),
        )
        await self.store.add(grant, now)
        self._recorded(grant, "request", grant.requester, grant.justification)
        return Outcome(grant, AuditReason.GRANT_REQUESTED)

    async def view(self, caller: Identity, facts: RequestFacts, grant_id: str) -> Grant:
        grant = await self.store.get(grant_id)
        if grant is None:
            raise GrantNotFound()
        is_approver = self.is_approver(self._spec(grant), caller, facts)
        if not permissions.may_view(grant, actor_of(caller), is_approver):
            raise GrantNotFound()  # never confirm that someone else's grant exists
        return machine.advance(grant, self._clock())

    async def decide(
        self, caller: Identity, facts: RequestFacts, grant_id: str, action: Action, reason: str
    ) -> Outcome:
        reason = permissions.decision_reason(reason)
        actor = actor_of(caller)
        for _ in range(_RETRIES):
            grant = await self.store.get(grant_id)
            if grant is None:
                raise GrantNotFound()
            is_approver = self.is_approver(self._spec(grant), caller, facts)
            if not permissions.may_view(grant, actor, is_approver) and not actor.same_person(
                grant.requester
            ):
                raise GrantNotFound()
            permissions.check_decision(grant, action, actor, is_approver)
            changed = machine.decide(grant, action, actor, self._clock(), reason)
            stored = await self.store.replace(grant, changed)
            if stored is not None:
                self._recorded_steps(grant, stored)
                return Outcome(stored, _DECIDED[action])
        raise GrantConflict(Reason.GRANT_BUSY, detail="changed concurrently; try again")

    async def mine(self, caller: Identity) -> list[Grant]:
        now = self._clock()
        found = await self.store.of_caller(caller.issuer, caller.subject, LIST_LIMIT)
        return [machine.advance(g, now) for g in found]

    async def decidable(self, caller: Identity, facts: RequestFacts) -> list[Grant]:
        """Requests waiting for a decision this caller may take (never their own)."""
        now = self._clock()
        actor = actor_of(caller)
        out = []
        for grant in await self.store.open_grants():
            grant = machine.advance(grant, now)
            if grant.state != "pending" or actor.same_person(grant.requester):
                continue
            if self.is_approver(self._spec(grant), caller, facts):
                out.append(grant)
        return sorted(out, key=lambda g: g.requested_at)

    async def overseen(self, caller: Identity, facts: RequestFacts) -> list[Grant]:
        """Approved and active grants of others this caller approves for (and may revoke)."""
        now = self._clock()
        actor = actor_of(caller)
        out = []
        for grant in await self.store.open_grants():
            grant = machine.advance(grant, now)
            if grant.state not in ("approved", "active") or actor.same_identity(grant.requester):
                continue
            if self.is_approver(self._spec(grant), caller, facts):
                out.append(grant)
        return sorted(out, key=lambda g: g.ends_at or 0.0)

    # -- the clock ---------------------------------------------------------------------------
    async def sweep(self) -> int:
        """Store every clock event that has come due; the number of grants changed."""
        now = self._clock()
        changed = 0
        for grant in await self.store.due(now):
            moved = machine.advance(grant, now)
            if moved is grant:
                continue
            stored = await self.store.replace(grant, moved)
            if stored is not None:  # None: another replica recorded it first
                changed += 1
                self._recorded_steps(grant, stored)
        pending, active = await self.store.counts()
        metrics.GRANTS_PENDING.set(pending)
        metrics.GRANTS_ACTIVE.set(active)
        return changed

    async def _sweep_forever(self) -> None:
        unavailable = False
        while True:
            try:
                await self.sweep()
                if unavailable:
                    log.info("grant store reachable again: expiries are recorded")
                unavailable = False
            except StateUnavailable:
                if not unavailable:
                    log.warning("grant store unreachable: expiries recorded once it is back")
                unavailable = True
            except Exception:
                log.exception("grant sweep failed")
            await asyncio.sleep(self.config.sweep_interval)

    async def start(self) -> None:
        if self._webhook is not None:
            await self._webhook.start()
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._webhook is not None:
            await self._webhook.close()
        await self.store.close()

    # -- recording -------------------------------------------------------------------------
    def _recorded_steps(self, before: Grant, after: Grant) -> None:
        for event in after.history[len(before.history) :]:
            if event.action == "start":
                continue  # the window opening was decided by the approval
            self._recorded(after, event.action, event.actor, event.reason, event)
        for listener in self._listeners:
            listener(after)

    def _recorded(
        self,
        grant: Grant,
        action: Action,
        actor: Actor | None,
        reason: str,
        event: GrantEvent | None = None,
    ) -> None:
        past = PAST_TENSE[action]
        metrics.GRANT_EVENTS.labels(event=past).inc()
        if action in ("approve", "deny") and grant.decided_at is not None:
            metrics.GRANT_DECISION_DURATION.labels(decision=past).observe(
                grant.decided_at - grant.requested_at
            )
        log.info(
            "grant %s %s: %s on route %s (rule %s) by %s",
            grant.id,
            past,
            grant.requester.label(),
            grant.route,
            grant.rule,
            actor.label() if actor is not None else "the clock",
        )
        if actor is None and event is not None:
            self._audit.write(expiry_record(grant, event))
        if self._webhook is not None:
            self._webhook.notify(action, grant, actor, reason)


def expiry_record(grant: Grant, event: GrantEvent) -> AuditRecord:
    """The audit record of a clock event (no request caused it)."""
    return AuditRecord(
        ts_epoch=event.at,
        request_id=new_request_id(),
        route=grant.route,
        subject=grant.requester.subject,
        issuer=grant.requester.issuer,
        decision="event",
        reason=AuditReason.GRANT_EXPIRED if event.action == "end" else AuditReason.GRANT_LAPSED,
        grant_id=grant.id,
    )


class GrantLookup:
    """A caller's approved grants on a route, for decisions: read from the store,
    reused for at most ``ttl`` seconds per replica (0: read every time).

    A change this replica stores is forgotten at once; other replicas' changes
    (a revocation) reach this one within ``ttl`` plus one read. A plain dict
    of (expiry, value), bounded by ``maxsize``: it is read on every request to
    a route with grant rules, where a general-purpose cache costs more.
    """

    def __init__(
        self,
        store: GrantStore,
        ttl: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        maxsize: int = 10_000,
    ) -> None:
        self._store = store
        self._ttl = ttl
        self._clock = clock
        self._maxsize = maxsize
        self._cache: dict[tuple[str, str, str], tuple[float, tuple[HeldGrant, ...]]] = {}

    def cached(self, identity: Identity, route: str) -> tuple[HeldGrant, ...] | None:
        """The grants read within ``ttl``; None when they must be read (synchronous:
        the common request needs no coroutine here)."""
        hit = self._cache.get((identity.issuer, identity.subject, route))
        if hit is not None and hit[0] > self._clock():
            return hit[1]
        return None

    async def held(self, identity: Identity, route: str) -> tuple[HeldGrant, ...]:
        found = self.cached(identity, route)
        if found is not None:
            return found
        key = (identity.issuer, identity.subject, route)
        found = await self._store.held(*key)
        if self._ttl > 0:
            cache = self._cache
            if len(cache) >= self._maxsize:
                cache.pop(next(iter(cache)))  # the oldest entry
            cache[key] = (self._clock() + self._ttl, found)
        return found

    def forget(self, grant: Grant) -> None:
        self._cache.pop((grant.requester.issuer, grant.requester.subject, grant.route), None)
