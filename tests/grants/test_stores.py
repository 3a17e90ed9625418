"""The store contract, kept by the file store and the Redis store alike."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from proxy.errors import GrantConflict, GrantLimit
from proxy.grants import machine
from proxy.grants.store import Limits
from tests.grants.conftest import MakeStore
from tests.grants.support import ALICE, BOB, CAROL, HOUR, T0, pending


async def test_a_request_reads_back_as_stored(make_store: MakeStore) -> None:
    store = await make_store()
    grant = pending()
    await store.add(grant, T0)
    assert await store.get(grant.id) == grant
    assert await store.get("g_nothing") is None


async def test_a_second_request_for_a_rule_already_waiting_is_refused(
    make_store: MakeStore,
) -> None:
    store = await make_store()
    await store.add(pending(), T0)
    with pytest.raises(GrantConflict) as info:
        await store.add(pending(now=T0 + 1), T0 + 1)
    assert info.value.reason == "request_pending"
    await store.add(pending(rule="other-rule"), T0 + 2)
    await store.add(pending(BOB), T0 + 2)


async def test_pending_requests_are_bounded_per_caller_and_open_grants_in_all(
    make_store: MakeStore,
) -> None:
    store = await make_store(Limits(max_pending_per_caller=2, max_open=3, retention=HOUR))
    await store.add(pending(rule="r1"), T0)
    await store.add(pending(rule="r2"), T0)
    with pytest.raises(GrantLimit):
        await store.add(pending(rule="r3"), T0)
    await store.add(pending(BOB, rule="r1"), T0)
    with pytest.raises(GrantLimit):
        await store.add(pending(CAROL, rule="r1"), T0)


async def test_only_one_of_two_concurrent_decisions_on_one_request_wins(
    make_store: MakeStore,
) -> None:
    one, two = await make_store(), await make_store()
    grant = pending()
    await one.add(grant, T0)
    approve = machine.decide(grant, "approve", BOB, T0 + 5, "ok")
    deny = machine.decide(grant, "deny", CAROL, T0 + 5, "no")
    results = await asyncio.gather(one.replace(grant, approve), two.replace(grant, deny))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    stored = await one.get(grant.id)
    assert stored == winners[0]
    assert stored is not None and stored.version == 1


async def test_an_approved_grant_is_held_on_its_route_until_revoked(
    make_store: MakeStore,
) -> None:
    store = await make_store()
    grant = pending()
    await store.add(grant, T0)
    assert await store.held(ALICE.issuer, ALICE.subject, "prod-api") == ()
    approved = await store.replace(grant, machine.decide(grant, "approve", BOB, T0, "ok"))
    assert approved is not None
    (hold,) = await store.held(ALICE.issuer, ALICE.subject, "prod-api")
    assert (hold.id, hold.rule) == (grant.id, "prod-writers")
    assert await store.held(ALICE.issuer, ALICE.subject, "other-route") == ()
    assert await store.held(BOB.issuer, BOB.subject, "prod-api") == ()
    revoked = machine.decide(approved, "revoke", BOB, T0 + 10, "done")
    assert await store.replace(approved, revoked) is not None
    assert await store.held(ALICE.issuer, ALICE.subject, "prod-api") == ()


async def test_the_sweeper_sees_only_grants_with_a_clock_event_due(
    make_store: MakeStore,
) -> None:
    store = await make_store()
    lapsing = pending(decide_within=60)
    waiting = pending(BOB)
    await store.add(lapsing, T0)
    await store.add(waiting, T0)
    assert await store.due(T0 + 59) == []
    assert [g.id for g in await store.due(T0 + 60)] == [lapsing.id]
    assert {g.id for g in await store.open_grants()} == {lapsing.id, waiting.id}


async def test_counts_are_pending_requests_and_active_grants(make_store: MakeStore) -> None:
    store = await make_store()
    first, second = pending(), pending(BOB)
    await store.add(first, T0)
    await store.add(second, T0)
    assert await store.counts() == (2, 0)
    await store.replace(first, machine.decide(first, "approve", CAROL, T0, "ok"))
    assert await store.counts() == (1, 1)


async def test_a_callers_requests_are_listed_newest_first(make_store: MakeStore) -> None:
    store = await make_store()
    older, newer = pending(rule="r1"), pending(rule="r2", now=T0 + 10)
    await store.add(older, T0)
    await store.add(newer, T0 + 10)
    await store.add(pending(BOB), T0)
    listed = await store.of_caller(ALICE.issuer, ALICE.subject, 10)
    assert [g.id for g in listed] == [newer.id, older.id]
    assert [g.id for g in await store.of_caller(ALICE.issuer, ALICE.subject, 1)] == [newer.id]


async def test_grants_survive_a_restart(make_store: MakeStore) -> None:
    store = await make_store()
    grant = pending()
    await store.add(grant, T0)
    approved = await store.replace(grant, machine.decide(grant, "approve", BOB, T0, "ok"))
    await store.close()
    again = await make_store()
    assert await again.get(grant.id) == approved
    assert len(await again.held(ALICE.issuer, ALICE.subject, "prod-api")) == 1


async def test_a_stale_copy_cannot_overwrite_a_newer_decision(make_store: MakeStore) -> None:
    store = await make_store()
    grant = pending()
    await store.add(grant, T0)
    approved = await store.replace(grant, machine.decide(grant, "approve", BOB, T0, "ok"))
    assert approved is not None
    stale = dataclasses.replace(grant)
    assert await store.replace(stale, machine.decide(stale, "deny", CAROL, T0, "no")) is None
    assert await store.get(grant.id) == approved
