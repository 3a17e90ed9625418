"""The grant state machine: the transition table, the clock, and decisions (in memory)."""

from __future__ import annotations

from typing import cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.errors import GrantConflict
from proxy.grants import machine
from proxy.grants.model import ACTIONS, FINAL, STATES, Action, Grant, grant_dict, grant_from, held
from tests.grants.support import ALICE, BOB, HOUR, T0, pending


def test_a_request_starts_pending_with_its_justification_in_the_history() -> None:
    grant = pending()
    assert grant.state == "pending"
    assert grant.decide_by == T0 + 24 * HOUR
    assert [(e.action, e.actor, e.reason) for e in grant.history] == [
        ("request", ALICE, "backfill of 2026-11-02")
    ]


def test_approval_opens_a_window_of_the_requested_duration_from_the_approval() -> None:
    grant = machine.decide(pending(), "approve", BOB, T0 + 60, "ticket OPS-1")
    assert grant.state == "active"
    assert (grant.starts_at, grant.ends_at) == (T0 + 60, T0 + 60 + HOUR)
    assert grant.decided_by == BOB
    assert [e.action for e in grant.history] == ["request", "approve", "start"]


def test_a_requested_start_keeps_the_grant_approved_until_then() -> None:
    grant = machine.decide(pending(start_at=T0 + 2 * HOUR), "approve", BOB, T0 + 60, "ok")
    assert grant.state == "approved"
    assert grant.starts_at == T0 + 2 * HOUR
    assert machine.state_at(grant, T0 + 2 * HOUR - 1) == "approved"
    assert machine.state_at(grant, T0 + 2 * HOUR) == "active"
    assert machine.state_at(grant, T0 + 3 * HOUR) == "expired"


def test_a_requested_start_already_past_at_approval_starts_at_approval() -> None:
    grant = machine.decide(pending(start_at=T0 + 10), "approve", BOB, T0 + 60, "ok")
    assert grant.starts_at == T0 + 60


def test_a_grant_expires_at_its_end_and_the_expiry_is_dated_then() -> None:
    grant = machine.decide(pending(), "approve", BOB, T0, "ok")
    later = machine.advance(grant, T0 + 5 * HOUR)
    assert later.state == "expired"
    assert later.history[-1].action == "end"
    assert later.history[-1].at == T0 + HOUR
    assert later.history[-1].actor is None


def test_an_undecided_request_lapses() -> None:
    grant = pending(decide_within=HOUR)
    assert machine.state_at(grant, T0 + HOUR - 1) == "pending"
    lapsed = machine.advance(grant, T0 + HOUR)
    assert lapsed.state == "expired"
    assert lapsed.history[-1].action == "lapse"
    with pytest.raises(GrantConflict) as info:
        machine.decide(grant, "approve", BOB, T0 + HOUR, "too late")
    assert info.value.reason == "grant_expired"


def test_denial_and_revocation_are_final() -> None:
    denied = machine.decide(pending(), "deny", BOB, T0, "no ticket")
    assert denied.state == "denied"
    revoked = machine.decide(
        machine.decide(pending(), "approve", BOB, T0, "ok"), "revoke", BOB, T0 + 5, "done"
    )
    assert revoked.state == "revoked"
    for final in (denied, revoked):
        for action in ("approve", "deny", "revoke"):
            with pytest.raises(GrantConflict):
                machine.decide(final, action, BOB, T0 + 10, "again")


def test_the_clock_is_not_a_decision() -> None:
    with pytest.raises(ValueError, match="not a decision"):
        machine.decide(pending(), "end", BOB, T0, "x")


def test_advance_returns_the_same_grant_when_nothing_is_due() -> None:
    grant = pending()
    assert machine.advance(grant, T0 + 1) is grant


def test_every_transition_leaves_a_non_final_state_and_final_states_have_none() -> None:
    for state, action in machine.TRANSITIONS:
        assert state not in FINAL
        assert action in ACTIONS
    assert set(machine.TRANSITIONS.values()) <= set(STATES)


_decisions = st.lists(
    st.tuples(
        st.sampled_from(["approve", "deny", "revoke"]),
        st.floats(min_value=0, max_value=30 * HOUR, allow_nan=False),
    ),
    max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(
    steps=_decisions,
    duration=st.floats(min_value=1, max_value=8 * HOUR),
    start_in=st.one_of(st.none(), st.floats(min_value=0, max_value=10 * HOUR)),
    probe=st.floats(min_value=0, max_value=60 * HOUR),
)
def test_any_sequence_of_decisions_follows_the_table_and_never_grants_past_the_window(
    steps: list[tuple[str, float]], duration: float, start_in: float | None, probe: float
) -> None:
    grant: Grant = pending(duration=duration, start_at=None if start_in is None else T0 + start_in)
    now = T0
    for action, wait in sorted(steps, key=lambda s: s[1]):
        now = max(now, T0 + wait)
        before = machine.advance(grant, now)
        try:
            after = machine.decide(grant, action, BOB, now, "r")  # type: ignore[arg-type]
        except GrantConflict:
            assert (before.state, action) not in machine.TRANSITIONS
            continue
        assert machine.TRANSITIONS[(before.state, cast(Action, action))] in (
            after.state,
            "approved",
        )
        grant = after
    seen = machine.advance(grant, T0 + probe)
    hold = held(seen)
    if seen.state not in ("approved", "active"):
        assert hold is None
    if hold is not None:
        assert hold.ends_at - hold.starts_at == pytest.approx(duration)
    if grant.ends_at is not None and T0 + probe >= grant.ends_at:
        assert seen.state in FINAL
    # Final states are absorbing.
    if seen.state in FINAL:
        assert machine.advance(seen, T0 + probe + 10 * HOUR).state == seen.state


def test_the_json_form_round_trips() -> None:
    grant = machine.decide(pending(start_at=T0 + 100), "approve", BOB, T0, "ticket")
    assert grant_from(grant_dict(grant)) == grant


def test_a_malformed_record_is_no_grant() -> None:
    data = grant_dict(pending())
    assert grant_from({**data, "state": "granted"}) is None
    assert grant_from({k: v for k, v in data.items() if k != "route"}) is None
    assert grant_from({**data, "requester": "alice"}) is None
