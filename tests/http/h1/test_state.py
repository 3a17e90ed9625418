"""The connection state machine in memory, in the style of h11's test_state.py."""

from __future__ import annotations

import pytest

from proxy.http.h1.state import (
    CLIENT,
    CLOSED,
    CONNECTION_CLOSED,
    DATA,
    DONE,
    END_OF_MESSAGE,
    ERROR,
    IDLE,
    INFORMATIONAL,
    MIGHT_SWITCH_PROTOCOL,
    MUST_CLOSE,
    REQUEST,
    RESPONSE,
    SEND_BODY,
    SEND_RESPONSE,
    SERVER,
    SWITCH,
    SWITCHED_PROTOCOL,
    ConnectionState,
    LocalProtocolError,
    Steps,
)


def test_a_full_exchange_walks_both_machines_to_done_and_back_to_idle() -> None:
    cs = ConnectionState()
    assert cs.states == {CLIENT: IDLE, SERVER: IDLE}
    cs.process_event(CLIENT, REQUEST)
    # The server's machine sees the client's request.
    assert cs.states == {CLIENT: SEND_BODY, SERVER: SEND_RESPONSE}
    cs.process_event(CLIENT, DATA)
    cs.process_event(SERVER, INFORMATIONAL)
    assert cs.states == {CLIENT: SEND_BODY, SERVER: SEND_RESPONSE}
    cs.process_event(SERVER, RESPONSE)
    assert cs.states == {CLIENT: SEND_BODY, SERVER: SEND_BODY}
    cs.process_event(CLIENT, END_OF_MESSAGE)
    cs.process_event(SERVER, DATA)
    cs.process_event(SERVER, END_OF_MESSAGE)
    assert cs.states == {CLIENT: DONE, SERVER: DONE}
    assert cs.reusable
    cs.start_next_cycle()
    assert cs.states == {CLIENT: IDLE, SERVER: IDLE}


def test_an_event_the_state_does_not_allow_is_refused_and_changes_nothing() -> None:
    cs = ConnectionState()
    cs.process_event(CLIENT, REQUEST)
    with pytest.raises(LocalProtocolError):
        cs.process_event(CLIENT, REQUEST)
    with pytest.raises(LocalProtocolError):
        cs.process_event(SERVER, DATA)  # no response head yet
    assert cs.states == {CLIENT: SEND_BODY, SERVER: SEND_RESPONSE}


def test_a_server_may_answer_without_a_request_but_then_no_request_may_follow() -> None:
    # 408 for a head that never came whole, 400 for one that could not be parsed.
    cs = ConnectionState()
    cs.process_keep_alive_disabled()
    cs.process_event(SERVER, RESPONSE)
    cs.process_event(SERVER, END_OF_MESSAGE)
    assert cs.states == {CLIENT: IDLE, SERVER: MUST_CLOSE}
    with pytest.raises(LocalProtocolError):
        cs.process_event(CLIENT, REQUEST)


def test_keep_alive_off_turns_done_into_must_close_on_both_sides() -> None:
    cs = ConnectionState()
    cs.process_event(CLIENT, REQUEST)
    cs.process_keep_alive_disabled()
    cs.process_event(CLIENT, END_OF_MESSAGE)
    assert cs.states == {CLIENT: MUST_CLOSE, SERVER: SEND_RESPONSE}
    cs.process_event(SERVER, RESPONSE)
    cs.process_event(SERVER, END_OF_MESSAGE)
    assert cs.states == {CLIENT: MUST_CLOSE, SERVER: MUST_CLOSE}
    assert not cs.reusable


def test_keep_alive_off_after_done_still_forces_must_close() -> None:
    cs = ConnectionState()
    cs.process_event(CLIENT, REQUEST)
    cs.process_event(CLIENT, END_OF_MESSAGE)
    assert cs.client is DONE
    cs.process_keep_alive_disabled()
    assert cs.client is MUST_CLOSE


@pytest.mark.parametrize("answer_early", [True, False])
def test_a_declined_upgrade_returns_the_client_to_done(answer_early: bool) -> None:
    cs = ConnectionState()
    cs.process_event(CLIENT, REQUEST)
    cs.process_upgrade_proposal()
    if answer_early:
        cs.process_event(SERVER, RESPONSE)  # declined before the request ended
        assert not cs.upgrade_proposed
    cs.process_event(CLIENT, END_OF_MESSAGE)
    if answer_early:
        assert cs.states == {CLIENT: DONE, SERVER: SEND_BODY}
        return
    assert cs.states == {CLIENT: MIGHT_SWITCH_PROTOCOL, SERVER: SEND_RESPONSE}
    cs.process_event(SERVER, INFORMATIONAL)  # 100 Continue does not decide
    assert cs.client is MIGHT_SWITCH_PROTOCOL
    cs.process_event(SERVER, RESPONSE)
    assert cs.states == {CLIENT: DONE, SERVER: SEND_BODY}
    cs.process_event(SERVER, END_OF_MESSAGE)
    assert cs.reusable


def test_an_accepted_upgrade_switches_both_sides_for_good() -> None:
    cs = ConnectionState()
    cs.process_event(CLIENT, REQUEST)
    cs.process_upgrade_proposal()
    cs.process_event(CLIENT, END_OF_MESSAGE)
    cs.process_event(SERVER, SWITCH)
    assert cs.states == {CLIENT: SWITCHED_PROTOCOL, SERVER: SWITCHED_PROTOCOL}
    assert not cs.reusable
    for role, event in ((CLIENT, DATA), (SERVER, DATA), (CLIENT, CONNECTION_CLOSED)):
        with pytest.raises(LocalProtocolError):
            cs.process_event(role, event)


def test_switching_protocols_needs_an_upgrade_request() -> None:
    cs = ConnectionState()
    cs.process_event(CLIENT, REQUEST)
    cs.process_event(CLIENT, END_OF_MESSAGE)
    with pytest.raises(LocalProtocolError):
        cs.process_event(SERVER, SWITCH)
    assert cs.server is SEND_RESPONSE


def test_a_switch_waits_for_the_end_of_the_upgrade_request() -> None:
    cs = ConnectionState()
    cs.process_event(CLIENT, REQUEST)
    cs.process_upgrade_proposal()
    cs.process_event(SERVER, SWITCH)
    assert cs.states == {CLIENT: SEND_BODY, SERVER: SWITCHED_PROTOCOL}
    cs.process_event(CLIENT, END_OF_MESSAGE)
    assert cs.states == {CLIENT: SWITCHED_PROTOCOL, SERVER: SWITCHED_PROTOCOL}


def test_a_peer_that_closes_leaves_the_other_side_must_close() -> None:
    cs = ConnectionState()
    cs.process_event(CLIENT, CONNECTION_CLOSED)
    assert cs.states == {CLIENT: CLOSED, SERVER: MUST_CLOSE}

    cs = ConnectionState()
    cs.process_event(CLIENT, REQUEST)
    cs.process_event(CLIENT, END_OF_MESSAGE)
    cs.process_event(SERVER, RESPONSE)
    cs.process_event(SERVER, END_OF_MESSAGE)
    cs.process_event(SERVER, CONNECTION_CLOSED)
    assert cs.states == {CLIENT: MUST_CLOSE, SERVER: CLOSED}


def test_a_protocol_error_is_final_and_the_other_side_must_close() -> None:
    cs = ConnectionState()
    cs.process_event(CLIENT, REQUEST)
    cs.process_event(CLIENT, END_OF_MESSAGE)
    cs.process_event(SERVER, RESPONSE)
    cs.process_event(SERVER, END_OF_MESSAGE)
    cs.process_error(CLIENT)  # bytes after the request that make no sense
    assert cs.states == {CLIENT: ERROR, SERVER: MUST_CLOSE}
    with pytest.raises(LocalProtocolError):
        cs.start_next_cycle()


@pytest.mark.parametrize(
    ("client", "server"),
    [
        (SEND_BODY, DONE),
        (DONE, SEND_BODY),
        (DONE, SEND_RESPONSE),
        (MUST_CLOSE, DONE),
        (DONE, MUST_CLOSE),
        (IDLE, IDLE),
        (ERROR, DONE),
    ],
)
def test_the_one_reuse_guard_refuses_anything_but_done_and_done(
    client: object, server: object
) -> None:
    cs = ConnectionState()
    cs.client, cs.server = client, server  # type: ignore[assignment]
    assert not cs.reusable
    with pytest.raises(LocalProtocolError):
        cs.start_next_cycle()


STATES = (
    IDLE,
    SEND_RESPONSE,
    SEND_BODY,
    DONE,
    MUST_CLOSE,
    CLOSED,
    MIGHT_SWITCH_PROTOCOL,
    SWITCHED_PROTOCOL,
    ERROR,
)
EVENTS = (REQUEST, INFORMATIONAL, RESPONSE, SWITCH, DATA, END_OF_MESSAGE, CONNECTION_CLOSED)


@pytest.mark.parametrize("role", [CLIENT, SERVER], ids=["client", "server"])
def test_looked_up_steps_agree_with_the_tables_event_by_event(role: object) -> None:
    # The hot path's memo must never differ from walking the tables.
    sequences = [(e,) for e in EVENTS] + [(a, b) for a in EVENTS for b in EVENTS]
    for events in sequences:
        steps = Steps(role, *events)  # type: ignore[arg-type]
        for client in STATES:
            for server in STATES:
                for keep_alive in (True, False):
                    for upgrade in (False, True):
                        slow, fast = ConnectionState(), ConnectionState()
                        for cs in (slow, fast):
                            cs.client, cs.server = client, server
                            cs.keep_alive, cs.upgrade_proposed = keep_alive, upgrade
                        try:
                            for event in events:
                                slow.process_event(role, event)  # type: ignore[arg-type]
                        except LocalProtocolError:
                            with pytest.raises(LocalProtocolError):
                                fast.process_events(steps)
                            continue
                        fast.process_events(steps)
                        assert (fast.client, fast.server, fast.upgrade_proposed) == (
                            slow.client,
                            slow.server,
                            slow.upgrade_proposed,
                        ), (events, client, server, keep_alive, upgrade)
