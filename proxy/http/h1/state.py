"""The HTTP/1.1 connection state machine: sentinels, transition tables, one reuse guard.

Modelled on h11's ``_state.py`` (whose theory of operation this follows):
a connection carries two state machines, one per role, plus a keep-alive
flag and a pending-upgrade flag that couple them.

* **Event-triggered transitions** (:data:`EVENT_TRIGGERED`): a role's state
  changes when that role emits an event (a request head, a response head, the
  end of a message, the connection closing). An event its state does not
  allow is a :class:`LocalProtocolError` and changes nothing. The server's
  machine also sees the client's request (``REQUEST_SEEN``), which moves it
  from IDLE to SEND_RESPONSE.
* **State-triggered transitions** (:meth:`ConnectionState.settle`): joint
  states that force a change whatever led to them. Keep-alive off turns DONE
  into MUST_CLOSE; a closed or failed peer turns a DONE side into MUST_CLOSE;
  a client that asked to upgrade and finished its request waits in
  MIGHT_SWITCH_PROTOCOL until the server either switches (both sides
  SWITCHED_PROTOCOL) or answers normally (back to DONE).

A connection is reused only through :meth:`ConnectionState.start_next_cycle`,
which refuses unless both sides are DONE: that is the single reuse guard of
both edges of the proxy (the listener and the upstream client).

There is no I/O here and nothing about bytes: the reader and writer in this
package translate bytes to events and back.
"""

from __future__ import annotations

from typing import Final


class _Sentinel:
    """A named constant compared by identity (an Enum's hash is a Python call: too slow here)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"{type(self).__name__}.{self.name.upper()}"


class Role(_Sentinel):
    __slots__ = ()


class State(_Sentinel):
    __slots__ = ()


class Event(_Sentinel):
    __slots__ = ()


CLIENT: Final = Role("client")
SERVER: Final = Role("server")

IDLE: Final = State("idle")
SEND_RESPONSE: Final = State("send_response")  # server: a request arrived, no final answer yet
SEND_BODY: Final = State("send_body")
DONE: Final = State("done")
MUST_CLOSE: Final = State("must_close")
CLOSED: Final = State("closed")
MIGHT_SWITCH_PROTOCOL: Final = State("might_switch_protocol")  # client: asked to upgrade
SWITCHED_PROTOCOL: Final = State("switched_protocol")  # no longer HTTP/1.1
ERROR: Final = State("error")

REQUEST: Final = Event("request")  # a request head (client)
REQUEST_SEEN: Final = Event("request_seen")  # the server's view of the client's request head
INFORMATIONAL: Final = Event("informational")  # a 1xx head other than an accepted 101
RESPONSE: Final = Event("response")  # a final response head (server)
SWITCH: Final = Event("switch")  # 101 Switching Protocols accepting the client's upgrade
DATA: Final = Event("data")
END_OF_MESSAGE: Final = Event("end_of_message")
CONNECTION_CLOSED: Final = Event("connection_closed")


class LocalProtocolError(Exception):
    """An event the state machine does not allow: a bug on our side of the connection."""


# role -> state -> event -> new state
EVENT_TRIGGERED: dict[Role, dict[State, dict[Event, State]]] = {
    CLIENT: {
        IDLE: {REQUEST: SEND_BODY, CONNECTION_CLOSED: CLOSED},
        SEND_BODY: {DATA: SEND_BODY, END_OF_MESSAGE: DONE},
        DONE: {CONNECTION_CLOSED: CLOSED},
        MUST_CLOSE: {CONNECTION_CLOSED: CLOSED},
        CLOSED: {CONNECTION_CLOSED: CLOSED},
        MIGHT_SWITCH_PROTOCOL: {},
        SWITCHED_PROTOCOL: {},
        ERROR: {},
    },
    SERVER: {
        IDLE: {
            REQUEST_SEEN: SEND_RESPONSE,
            # An answer with no request: 408 for a head that never came whole,
            # 400 for one that could not be parsed.
            RESPONSE: SEND_BODY,
            CONNECTION_CLOSED: CLOSED,
        },
        SEND_RESPONSE: {
            INFORMATIONAL: SEND_RESPONSE,
            RESPONSE: SEND_BODY,
            SWITCH: SWITCHED_PROTOCOL,
        },
        SEND_BODY: {DATA: SEND_BODY, END_OF_MESSAGE: DONE},
        DONE: {CONNECTION_CLOSED: CLOSED},
        MUST_CLOSE: {CONNECTION_CLOSED: CLOSED},
        CLOSED: {CONNECTION_CLOSED: CLOSED},
        SWITCHED_PROTOCOL: {},
        ERROR: {},
    },
}

# (client state, server state) -> the states they become, whatever led there.
STATE_TRIGGERED: dict[tuple[State, State], dict[Role, State]] = {
    (MIGHT_SWITCH_PROTOCOL, SWITCHED_PROTOCOL): {CLIENT: SWITCHED_PROTOCOL},
    (CLOSED, DONE): {SERVER: MUST_CLOSE},
    (CLOSED, IDLE): {SERVER: MUST_CLOSE},
    (ERROR, DONE): {SERVER: MUST_CLOSE},
    (DONE, CLOSED): {CLIENT: MUST_CLOSE},
    (IDLE, CLOSED): {CLIENT: MUST_CLOSE},
    (DONE, ERROR): {CLIENT: MUST_CLOSE},
}


class Steps:
    """A fixed sequence of one role's events (a step of an exchange: a request head
    with its end, say), with the outcomes the tables gave it, by the states they
    started from: the whole state space is small, and one lookup is cheaper than
    walking the tables on every exchange."""

    __slots__ = ("events", "outcomes", "role")

    def __init__(self, role: Role, *events: Event) -> None:
        self.role = role
        self.events = events
        # (client, server) -> (client, server), with keep-alive on and no upgrade pending.
        self.outcomes: dict[tuple[State, State], tuple[State, State]] = {}


# The same for the other flag values, keyed by everything that shaped them.
_Key = tuple[Steps, State, State, bool, bool]
_OUTCOMES: dict[_Key, tuple[State, State, bool]] = {}


class ConnectionState:
    """Both roles' states on one connection, plus keep-alive and a pending upgrade."""

    __slots__ = ("client", "keep_alive", "server", "upgrade_proposed")

    def __init__(self) -> None:
        self.client = IDLE
        self.server = IDLE
        self.keep_alive = True  # once False, never True again on this connection
        self.upgrade_proposed = False  # the current request asked to switch protocols

    @property
    def states(self) -> dict[Role, State]:
        return {CLIENT: self.client, SERVER: self.server}

    def state_of(self, role: Role) -> State:
        return self.client if role is CLIENT else self.server

    def process_event(self, role: Role, event: Event) -> None:
        """Apply ``role``'s ``event``; refuse (and change nothing) if its state forbids it."""
        old = self.client if role is CLIENT else self.server
        new = EVENT_TRIGGERED[role].get(old, {}).get(event)
        if new is None:
            raise LocalProtocolError(f"{role.name} cannot send {event.name} in state {old.name}")
        if event is SWITCH and not self.upgrade_proposed:
            raise LocalProtocolError("101 Switching Protocols without an upgrade request")
        if role is CLIENT:
            if event is REQUEST:
                seen = EVENT_TRIGGERED[SERVER].get(self.server, {}).get(REQUEST_SEEN)
                if seen is None:
                    raise LocalProtocolError(f"a request while the server is {self.server.name}")
                self.server = seen
            self.client = new
        else:
            self.server = new
            if event is RESPONSE:
                self.upgrade_proposed = False  # answered normally: the upgrade is declined
        self.settle()

    def process_events(self, steps: Steps) -> None:
        """``process_event`` for each of ``steps`` in turn (all or none are applied),
        looked up once worked out: the hot path's way through the same tables."""
        if self.keep_alive and not self.upgrade_proposed:
            pair = (self.client, self.server)
            found = steps.outcomes.get(pair)
            if found is None:
                client, server, _ = self._work_out(steps)
                found = steps.outcomes[pair] = (client, server)
            self.client, self.server = found
            return
        key = (steps, self.client, self.server, self.keep_alive, self.upgrade_proposed)
        outcome = _OUTCOMES.get(key)
        if outcome is None:
            outcome = _OUTCOMES[key] = self._work_out(steps)
        self.client, self.server, self.upgrade_proposed = outcome

    def _work_out(self, steps: Steps) -> tuple[State, State, bool]:
        """Walk the tables for ``steps`` from this state, on a copy (which may refuse)."""
        trial = ConnectionState()
        trial.client, trial.server = self.client, self.server
        trial.keep_alive, trial.upgrade_proposed = self.keep_alive, self.upgrade_proposed
        for event in steps.events:
            trial.process_event(steps.role, event)  # raises before anything is applied here
        return trial.client, trial.server, trial.upgrade_proposed

    def process_upgrade_proposal(self) -> None:
        """The client's request asks to switch protocols (``Upgrade`` + ``Connection: upgrade``)."""
        self.upgrade_proposed = True
        self.settle()

    def process_keep_alive_disabled(self) -> None:
        self.keep_alive = False
        self.settle()

    def process_error(self, role: Role) -> None:
        """``role`` broke the protocol: nothing it sends can be trusted from here on."""
        if role is CLIENT:
            self.client = ERROR
        else:
            self.server = ERROR
        self.settle()

    def settle(self) -> None:
        """Apply the state-triggered transitions until nothing changes."""
        while True:
            before = (self.client, self.server)
            if self.upgrade_proposed and self.client is DONE:
                self.client = MIGHT_SWITCH_PROTOCOL
            if not self.upgrade_proposed and self.client is MIGHT_SWITCH_PROTOCOL:
                self.client = DONE
            if not self.keep_alive:
                if self.client is DONE:
                    self.client = MUST_CLOSE
                if self.server is DONE:
                    self.server = MUST_CLOSE
            changes = STATE_TRIGGERED.get((self.client, self.server))
            if changes is not None:
                self.client = changes.get(CLIENT, self.client)
                self.server = changes.get(SERVER, self.server)
            if (self.client, self.server) == before:
                return

    @property
    def reusable(self) -> bool:
        """Both sides finished a clean exchange: the connection may carry another."""
        return self.client is DONE and self.server is DONE

    def next_cycle(self) -> bool:
        """The one reuse guard: back to IDLE only from DONE/DONE (keep-alive implied).

        Whether the connection may carry another exchange (if not, nothing changes).
        """
        if self.client is DONE and self.server is DONE:
            self.client = self.server = IDLE
            return True
        return False

    def start_next_cycle(self) -> None:
        """:meth:`next_cycle`, refusing a connection that is not reusable."""
        if not self.next_cycle():
            raise LocalProtocolError(
                f"not reusable: client {self.client.name}, server {self.server.name}"
            )
