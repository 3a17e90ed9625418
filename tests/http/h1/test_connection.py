"""ServerConnection and ClientConnection in memory: bytes in, events out; bounds and strictness."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.http.h1.connection import (
    CONNECTION_CLOSED,
    END_OF_MESSAGE,
    NEED_DATA,
    PAUSED,
    ClientConnection,
    Sentinel,
    ServerConnection,
)
from proxy.http.h1.reader import RequestHead, ResponseHead
from proxy.http.h1.rules import CHUNKED, UNTIL_CLOSE, IncompleteMessage, Limits, RemoteProtocolError
from proxy.http.h1.state import (
    CLIENT,
    CLOSED,
    DONE,
    ERROR,
    IDLE,
    MIGHT_SWITCH_PROTOCOL,
    MUST_CLOSE,
    SEND_BODY,
    SEND_RESPONSE,
    SERVER,
    SWITCHED_PROTOCOL,
    LocalProtocolError,
)

LIMITS = Limits()
GET = b"GET /a?b=1 HTTP/1.1\r\nHost: example\r\n\r\n"


def server(*chunks: bytes, limits: Limits = LIMITS) -> ServerConnection:
    conn = ServerConnection(limits)
    for chunk in chunks:
        conn.receive_data(chunk)
    return conn


def events(conn: ServerConnection | ClientConnection) -> list[object]:
    """Every event up to the first NEED_DATA/PAUSED/CONNECTION_CLOSED (included)."""
    out: list[object] = []
    while True:
        event = conn.next_event()
        out.append(event)
        if isinstance(event, Sentinel) and event is not END_OF_MESSAGE:
            return out


def request_of(conn: ServerConnection) -> RequestHead:
    event = conn.next_event()
    assert isinstance(event, RequestHead), event
    return event


def refusal(conn: ServerConnection | ClientConnection) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as err:
        events(conn)
    return err.value


# -- requests ----------------------------------------------------------------------


def test_a_bodiless_request_is_one_event_and_the_client_is_done() -> None:
    conn = server(GET)
    head = request_of(conn)
    assert (head.method, head.target, head.version, head.raw_host) == (
        "GET",
        "/a?b=1",
        "1.1",
        b"example",
    )
    assert head.framing == 0 and head.keep_alive and head.raw_upgrade is None
    assert head.raw_headers == [(b"Host", b"example")]
    assert conn.state.states == {CLIENT: DONE, SERVER: SEND_RESPONSE}
    assert conn.next_event() is PAUSED  # nothing more until we answer


def test_header_values_lose_trailing_whitespace_and_keep_their_bytes() -> None:
    head = request_of(server(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b \t\r\nX-B: \xe9\r\n\r\n"))
    assert head.raw_headers == [(b"Host", b"a"), (b"X-A", b"b"), (b"X-B", b"\xe9")]


def test_pipelined_requests_stay_unparsed_until_the_answer_is_done() -> None:
    conn = server(GET + GET + b"GET /third HTT")
    request_of(conn)
    assert conn.next_event() is PAUSED
    assert conn.buffered == len(GET) + len(b"GET /third HTT")
    conn.send_whole(200, "", [], b"one")
    conn.start_next_cycle()
    request_of(conn)
    conn.send_whole(200, "", [], b"two")
    conn.start_next_cycle()
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"P/1.1\r\nHost: a\r\n\r\n")
    assert request_of(conn).target == "/third"


def test_a_body_is_data_then_end_and_framing_is_by_content_length() -> None:
    conn = server(b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhel", b"loGET")
    head = request_of(conn)
    assert head.framing == 5
    assert events(conn) == [b"hello", END_OF_MESSAGE, PAUSED]
    assert conn.buffered == 3  # the next request's first bytes


def test_a_chunked_body_with_extensions_and_trailers_is_read_exactly() -> None:
    body = b'4;a=1;b="x y"\r\nwiki\r\n5\r\npedia\r\n0\r\nX-Trailer: t\r\n\r\n'
    conn = server(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    assert request_of(conn).framing == CHUNKED
    assert events(conn) == [b"wiki", b"pedia", END_OF_MESSAGE, PAUSED]


@pytest.mark.parametrize(
    "body",
    [
        b"zz\r\nabc\r\n0\r\n\r\n",  # not hex
        b"3\r\nabcX\r\n0\r\n\r\n",  # data not followed by CRLF
        b"3 \r\nabc\r\n0\r\n\r\n",  # space after the size
        b"3;\r\nabc\r\n0\r\n\r\n",  # an extension without a name
        b"3\nabc\r\n0\r\n\r\n",  # bare LF
        b"0\r\nBad Trailer: x\r\n\r\n",
        b"11111111111111111\r\n",  # more hex digits than any length needs
    ],
)
def test_a_broken_chunked_body_is_malformed(body: bytes) -> None:
    conn = server(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    error = refusal(conn)
    assert (error.rejection.status, error.rejection.reason) == (400, "malformed_request")
    assert conn.state.client is ERROR


def test_a_100_kb_chunk_extension_is_refused_as_it_arrives() -> None:
    conn = server(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    request_of(conn)
    conn.receive_data(b"1;ext=")
    received = 6

    def feed_until_refused() -> None:
        nonlocal received
        while received < 100 * 1024:
            conn.next_event()
            conn.receive_data(b"x" * 1024)
            received += 1024

    with pytest.raises(RemoteProtocolError) as err:
        feed_until_refused()
    assert err.value.rejection.reason == "malformed_request"
    # Refused within one read past the limit, long before the 100 KB.
    assert received <= LIMITS.max_chunk_line + 2 * 1024


def test_a_trailer_section_over_the_head_limit_is_refused() -> None:
    limits = Limits(max_head=1024)
    conn = server(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n", limits=limits
    )
    request_of(conn)
    conn.receive_data(b"X-T: " + b"t" * 2000)
    assert refusal(conn).rejection.status == 431


def test_chunked_framing_broken_in_the_bytes_that_came_with_the_head_refuses_the_head() -> None:
    conn = server(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    assert refusal(conn).rejection.reason == "malformed_request"


@pytest.mark.parametrize(
    ("head", "reason"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", "ambiguous_request"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", "ambiguous_request"),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            "ambiguous_request",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nUser-Agent: x\r\nUser-Agent: y\r\n\r\n",
            "ambiguous_request",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "malformed_request",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "malformed_request",
        ),
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", "malformed_request"),
        (b"GET / HTTP/1.1\r\nX: y\r\n\r\n", "malformed_request"),  # no Host
        (b"GET / HTTP/1.1\nHost: a\n\n", "malformed_request"),  # bare LF
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n", "malformed_request"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX : b\r\n\r\n", "malformed_request"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n c\r\n\r\n", "malformed_request"),  # obs-fold
        (b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", "malformed_request"),
        (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", "malformed_request"),
        (b"BREW / HTTP/1.1\r\nHost: a\r\n\r\n", "malformed_request"),
    ],
)
def test_a_bad_request_head_is_refused_with_the_reason_a_server_answers(
    head: bytes, reason: str
) -> None:
    conn = server(head)
    error = refusal(conn)
    assert (error.rejection.status, error.rejection.reason) == (400, reason)
    assert conn.state.client is ERROR


def test_a_refusal_reads_the_refused_head_only_not_what_is_pipelined_after_it() -> None:
    conn = server(
        b"GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    assert refusal(conn).rejection.reason == "malformed_request"  # not "a second Host"


def test_an_http_1_0_request_needs_no_host_and_is_not_kept_alive() -> None:
    conn = server(b"GET / HTTP/1.0\r\n\r\n")
    head = request_of(conn)
    assert head.version == "1.0" and not head.keep_alive
    assert conn.state.client is MUST_CLOSE
    assert b"Connection: close" in conn.send_whole(200, "", [], b"x")


def test_connection_close_from_the_client_ends_the_connection_after_the_answer() -> None:
    conn = server(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" + GET)
    assert not request_of(conn).keep_alive
    assert b"Connection: close" in conn.send_whole(200, "", [], b"x")
    assert not conn.reusable
    with pytest.raises(LocalProtocolError):
        conn.start_next_cycle()


@pytest.mark.parametrize(
    ("head", "limits"),
    [
        (b"GET /" + b"a" * 200 + b" HTTP/1.1\r\nHost: a\r\n\r\n", Limits(max_line=100)),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 200 + b"\r\n\r\n", Limits(max_line=100)),
        (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: 1\r\n" * 5 + b"\r\n", Limits(max_headers=5)),
        (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: 1234567\r\n" * 20 + b"\r\n", Limits(max_head=200)),
    ],
    ids=["target", "field-line", "field-count", "whole-head"],
)
def test_a_head_over_a_limit_is_431(head: bytes, limits: Limits) -> None:
    error = refusal(server(head, limits=limits))
    assert (error.rejection.status, error.rejection.reason) == (431, "headers_too_large")


def test_an_endless_head_is_refused_once_it_passes_the_limit_without_waiting_for_its_end() -> None:
    conn = server(b"GET / HTTP/1.1\r\nHost: a\r\nX: ", limits=Limits(max_head=4096))
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"a" * 5000)
    assert refusal(conn).rejection.status == 431


def test_a_head_arriving_byte_by_byte_is_refused_at_its_first_bad_byte() -> None:
    conn = server()
    for byte in b"GET / HTTP/1.1\r\nHost: a\r\nX\x01":
        conn.receive_data(bytes([byte]))
        if byte == 1:
            assert refusal(conn).rejection.reason == "malformed_request"
            return
        assert conn.next_event() is NEED_DATA
    raise AssertionError("never refused")


def test_empty_lines_before_a_request_line_are_ignored() -> None:
    assert request_of(server(b"\r\n\r\n" + GET)).target == "/a?b=1"


def test_the_end_of_stream_between_requests_is_connection_closed() -> None:
    conn = server(GET)
    request_of(conn)
    conn.send_whole(200, "", [], b"x")
    assert conn.reusable
    conn.start_next_cycle()
    conn.receive_data(b"")
    assert conn.next_event() is CONNECTION_CLOSED
    # A head cut off by the end of stream is dropped, not answered.
    assert server(b"GET / HT", b"").next_event() is CONNECTION_CLOSED


def test_the_end_of_stream_inside_a_body_is_an_incomplete_message() -> None:
    conn = server(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9\r\n\r\nabc", b"")
    request_of(conn)
    assert conn.next_event() == b"abc"
    with pytest.raises(IncompleteMessage):
        conn.next_event()


# -- answering ---------------------------------------------------------------------


def test_a_whole_answer_is_one_piece_with_length_date_and_no_close() -> None:
    conn = server(GET)
    request_of(conn)
    data = conn.send_whole(200, "", [b"X-A: 1"], b"hello")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\nX-A: 1\r\nDate: ")
    assert b"Content-Length: 5" in head and b"Connection" not in head and body == b"hello"
    assert conn.reusable


def test_an_answer_before_the_body_was_read_says_close() -> None:
    conn = server(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc")
    request_of(conn)
    assert b"Connection: close" in conn.send_whole(413, "", [], b"too large")
    assert conn.state.states == {CLIENT: SEND_BODY, SERVER: MUST_CLOSE}


def test_the_last_answer_to_a_half_closed_client_says_close() -> None:
    conn = server(GET + GET, b"")
    request_of(conn)
    assert b"Connection" not in conn.send_whole(200, "", [], b"1")
    conn.start_next_cycle()
    request_of(conn)
    assert b"Connection: close" in conn.send_whole(200, "", [], b"2")


@pytest.mark.parametrize("status", [204, 304])
def test_bodiless_statuses_carry_no_body_and_no_length(status: int) -> None:
    conn = server(GET)
    request_of(conn)
    data = conn.send_whole(status, "", [], b"ignored")
    assert data.endswith(b"\r\n\r\n") and b"Content-Length" not in data


def test_a_head_answer_has_the_length_but_not_the_body() -> None:
    conn = server(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
    request_of(conn)
    data = conn.send_whole(200, "", [], b"hello")
    assert data.endswith(b"\r\n\r\n") and b"Content-Length: 5" in data


def test_a_streamed_answer_of_unknown_length_is_chunked_and_counted_when_known() -> None:
    conn = server(GET)
    request_of(conn)
    head, body = conn.send_head(200, "", [], None)
    assert body and b"Transfer-Encoding: chunked" in head
    assert conn.send_data(b"abc") == b"3\r\nabc\r\n"
    assert conn.send_end() == b"0\r\n\r\n"
    assert conn.reusable

    conn = server(GET)
    request_of(conn)
    conn.send_head(200, "", [], 3)
    with pytest.raises(LocalProtocolError):
        conn.send_data(b"abcd")  # never more than announced
    with pytest.raises(LocalProtocolError):
        conn.send_end()  # nor less


def test_a_streamed_answer_to_http_1_0_is_delimited_by_the_close() -> None:
    conn = server(b"GET / HTTP/1.0\r\n\r\n")
    request_of(conn)
    head, _ = conn.send_head(200, "", [], None)
    assert b"Transfer-Encoding" not in head and b"Connection: close" in head
    assert conn.send_data(b"abc") == b"abc"


def test_100_continue_only_while_the_body_is_awaited() -> None:
    conn = server(
        b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
    )
    assert request_of(conn).expect_continue
    assert conn.send_continue() == b"HTTP/1.1 100 Continue\r\n\r\n"
    conn.receive_data(b"ok")
    assert events(conn) == [b"ok", END_OF_MESSAGE, PAUSED]
    assert conn.send_continue() == b""


def test_an_error_answer_outside_an_exchange_closes() -> None:
    conn = server(b"GET / HT")
    assert conn.next_event() is NEED_DATA
    data = conn.send_failure(408, [b"X-Request-Id: r"], b"{}")
    assert data.startswith(b"HTTP/1.1 408 Request Timeout\r\n") and b"Connection: close" in data
    assert conn.state.server is MUST_CLOSE


# -- upgrades --------------------------------------------------------------------------

UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def test_bytes_after_an_upgrade_request_wait_unparsed_for_the_decision() -> None:
    conn = server(UPGRADE + b"\x81\x85frame-or-request?")
    head = request_of(conn)
    assert head.raw_upgrade == b"websocket"
    assert conn.state.client is MIGHT_SWITCH_PROTOCOL
    assert conn.next_event() is PAUSED
    assert conn.buffered == len(b"\x81\x85frame-or-request?")


def test_an_accepted_upgrade_hands_over_exactly_the_bytes_after_the_request() -> None:
    conn = server(UPGRADE + b"\x81\x85tail")
    request_of(conn)
    data = conn.send_switch([b"Upgrade: websocket", b"Connection: Upgrade"])
    assert data.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert conn.state.states == {CLIENT: SWITCHED_PROTOCOL, SERVER: SWITCHED_PROTOCOL}
    assert conn.trailing_data() == b"\x81\x85tail"
    assert conn.next_event() is PAUSED


def test_a_declined_upgrade_is_answered_normally_and_the_next_request_is_parsed() -> None:
    conn = server(UPGRADE + GET)
    request_of(conn)
    conn.send_whole(200, "", [], b"plain")
    assert conn.reusable
    conn.start_next_cycle()
    assert request_of(conn).target == "/a?b=1"


def test_switching_needs_a_finished_upgrade_request() -> None:
    conn = server(GET)
    request_of(conn)
    with pytest.raises(LocalProtocolError):
        conn.send_switch([])


# -- responses (the upstream client's side) ------------------------------------------


def client(method: str = "GET", upgrade: bool = False) -> ClientConnection:
    conn = ClientConnection(LIMITS)
    conn.send_request(method, "/", "h", [("X-A", "1")], upgrade=upgrade)
    return conn


def response_of(conn: ClientConnection, data: bytes) -> ResponseHead:
    conn.receive_data(data)
    event = conn.next_event()
    assert isinstance(event, ResponseHead), event
    return event


def test_a_request_head_is_written_with_host_first_and_its_framing() -> None:
    conn = ClientConnection(LIMITS)
    head = conn.send_request("POST", "/p", "up:80", [("A", "b")], length=3)
    assert head == b"POST /p HTTP/1.1\r\nHost: up:80\r\nA: b\r\nContent-Length: 3\r\n\r\n"
    assert conn.state.states == {CLIENT: SEND_BODY, SERVER: SEND_RESPONSE}
    assert conn.send_data(b"abc") == b"abc"
    with pytest.raises(LocalProtocolError):
        conn.send_data(b"!")  # the excess would start another request upstream
    conn.send_end()
    assert conn.state.client is DONE


def test_a_response_whose_body_came_with_its_head_carries_it_in_one_step() -> None:
    conn = client()
    head = response_of(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX: y\r\n\r\nok")
    assert (head.status, head.reason, head.content_length, head.framing) == (200, "OK", 2, 2)
    assert head.body == b"ok"
    assert events(conn) == [NEED_DATA]
    assert conn.reusable


def test_response_header_values_lose_trailing_whitespace_length_included() -> None:
    conn = client()
    head = response_of(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 2 \t\r\nX: y \r\n\r\nok")
    assert head.headers == [(b"Content-Length", b"2"), (b"X", b"y")]
    assert (head.content_length, head.body) == (2, b"ok")


def test_a_response_body_arriving_later_is_data_then_end() -> None:
    conn = client()
    head = response_of(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nok")
    assert head.body is None
    assert events(conn) == [b"ok", NEED_DATA]
    conn.receive_data(b"!!")
    assert events(conn) == [b"!!", END_OF_MESSAGE, NEED_DATA]
    assert conn.reusable


def test_informational_answers_come_first_and_do_not_end_the_exchange() -> None:
    conn = client()
    conn.receive_data(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n")
    conn.receive_data(b"HTTP/1.1 204 No Content\r\n\r\n")
    statuses = [e.status for e in events(conn) if isinstance(e, ResponseHead)]
    assert statuses == [100, 103, 204]
    assert conn.reusable


def test_a_body_without_framing_ends_with_the_connection_and_is_not_reused() -> None:
    conn = client()
    head = response_of(conn, b"HTTP/1.1 200 OK\r\n\r\npart")
    assert head.framing == UNTIL_CLOSE and head.content_length is None
    assert events(conn) == [b"part", NEED_DATA]
    conn.receive_data(b"")
    assert events(conn) == [END_OF_MESSAGE, CONNECTION_CLOSED]
    assert not conn.reusable


def test_a_head_answer_keeps_its_length_but_has_no_body() -> None:
    conn = client("HEAD")
    head = response_of(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
    assert head.content_length == 100 and head.framing == 0
    assert conn.reusable


def test_bytes_after_a_complete_answer_make_the_connection_unusable() -> None:
    conn = client()
    assert response_of(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxHTTP/1.1").body == b"x"
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    assert conn.state.server is ERROR and not conn.reusable


def test_a_protocol_switch_nobody_asked_for_is_malformed_and_an_asked_one_switches() -> None:
    conn = client()
    conn.receive_data(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n")
    assert refusal(conn).rejection.reason == "malformed_request"
    conn = client(upgrade=True)
    head = response_of(
        conn, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\nframes"
    )
    assert head.status == 101
    assert conn.state.states == {CLIENT: SWITCHED_PROTOCOL, SERVER: SWITCHED_PROTOCOL}
    assert conn.trailing_data() == b"frames"


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
        b"HTTP/1.1 200 OK\r\nX-A: a\x01b\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-A : a\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Split: a\rInjected: yes\r\n\r\n",
    ],
    ids=["bare-lf", "control-char", "space-before-colon", "two-lengths", "gzip-coding", "bare-cr"],
)
def test_a_malformed_response_head_is_refused(answer: bytes) -> None:
    conn = client()
    conn.receive_data(answer)
    refusal(conn)
    assert conn.state.server is ERROR


def test_the_end_of_stream_before_a_whole_answer_is_incomplete() -> None:
    conn = client()
    conn.receive_data(b"HTTP/1.1 200 OK\r\nContent-")
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"")
    with pytest.raises(IncompleteMessage):
        conn.next_event()


def test_bytes_on_an_idle_client_connection_are_refused() -> None:
    conn = ClientConnection(LIMITS)
    conn.receive_data(b"HTTP/1.1 200 OK\r\n\r\n")
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    assert conn.state.client is IDLE and conn.state.server is ERROR


# -- properties --------------------------------------------------------------------------

MESSAGES = [
    b"GET /one HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n\r\n",
    b"POST /two HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    b"PUT /three HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: v\r\n\r\n",
    b"\r\nGET /four HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
]
STREAM = b"".join(MESSAGES)


def serve_all(conn: ServerConnection, pieces: list[bytes]) -> list[tuple[str, bytes]]:
    """Feed ``pieces`` one by one, answering every request; what each request carried."""
    out: list[tuple[str, bytes]] = []
    body = b""
    target = ""
    for piece in [*pieces, b""]:
        conn.receive_data(piece)
        while True:
            event = conn.next_event()
            if isinstance(event, RequestHead):
                target, body = event.target, b""
                if not event.framing:
                    out.append((target, b""))
                    conn.send_whole(200, "", [], b"")
                    if conn.reusable:
                        conn.start_next_cycle()
            elif isinstance(event, bytes):
                body += event
            elif event is END_OF_MESSAGE:
                out.append((target, body))
                conn.send_whole(200, "", [], b"")
                if conn.reusable:
                    conn.start_next_cycle()
            else:
                break
    return out


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_how_the_bytes_are_split_never_changes_the_requests(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    bounds = zip([0, *points], [*points, len(STREAM)], strict=True)
    pieces = [STREAM[a:b] for a, b in bounds if b > a]
    assert serve_all(ServerConnection(LIMITS), pieces) == [
        ("/one", b""),
        ("/two", b"hello"),
        ("/three", b"abcde"),
        ("/four", b""),
    ]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=40))
def test_any_bytes_give_requests_or_a_protocol_error_never_anything_else(
    data: bytes, piece: int
) -> None:
    conn = ServerConnection(Limits(max_line=120, max_headers=8, max_head=256, max_chunk_line=32))
    pieces = [data[i : i + piece] for i in range(0, len(data), piece)]  # b"" is the end
    refused: RemoteProtocolError | None = None
    try:
        serve_all(conn, pieces)
    except RemoteProtocolError as exc:
        refused = exc
    if refused is not None:
        assert (refused.rejection.status, refused.rejection.reason) in {
            (400, "malformed_request"),
            (400, "ambiguous_request"),
            (431, "headers_too_large"),
        }
        assert conn.state.client is ERROR
    assert conn.buffered <= len(data)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_any_bytes_from_an_upstream_give_an_answer_or_a_protocol_error(data: bytes) -> None:
    conn = client()
    conn.receive_data(data)
    conn.receive_data(b"")
    try:
        events(conn)
    except RemoteProtocolError:
        assert conn.state.server is ERROR
    else:
        # An answer read to its end (or to the close that ends it), reusable only when framed.
        assert conn.state.server in (DONE, MUST_CLOSE, CLOSED)


@st.composite
def answers(draw: st.DrawFn) -> bytes:
    """Answers near the common one: a status, a few fields (framing ones included,
    right, wrong or twice), a body, maybe bytes after it."""
    status = draw(st.sampled_from([100, 101, 200, 204, 304, 404]))
    body = draw(st.binary(max_size=12))
    fields = draw(
        st.lists(
            st.sampled_from(
                [
                    b"Content-Length: %d" % len(body),
                    b"Content-Length: %d" % (len(body) + 1),
                    b"content-length: 0",
                    b"Transfer-Encoding: chunked",
                    b"Connection: close",
                    b"X-A: b ",
                ]
            ),
            max_size=4,
        )
    )
    tail = draw(st.sampled_from([b"", b"\r\n", b"HTTP/1.1 200 OK\r\n\r\n", b"0\r\n\r\n"]))
    return (
        b"HTTP/1.1 %d X\r\n" % status
        + b"".join(f + b"\r\n" for f in fields)
        + b"\r\n"
        + body
        + tail
    )


def read_answer(method: str, pieces: list[bytes]) -> object:
    """What a client makes of ``pieces``: the final answer's head fields and body and
    whether the connection is reusable, or the refusal."""
    conn = client(method)
    body = b""
    final: ResponseHead | None = None
    try:
        for piece in pieces:
            if not piece:
                continue  # b"" would be the end of the stream
            conn.receive_data(piece)
            for event in events(conn):
                if isinstance(event, ResponseHead) and event.status >= 200:
                    final = event
                    body += event.body or b""
                elif isinstance(event, bytes):
                    body += event
    except RemoteProtocolError as exc:
        return (exc.rejection.status, exc.rejection.reason)
    if final is None:
        return None
    reusable = conn.reusable
    if reusable:  # the same connection reads the next answer
        conn.start_next_cycle()
        conn.send_request("GET", "/", "h", [])
        assert response_of(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n!").body == b"!"
    return (final.status, final.headers, final.framing, final.keep_alive, body, reusable)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(answers(), st.sampled_from(["GET", "HEAD"]), st.integers(min_value=1, max_value=80))
def test_an_answer_read_whole_is_read_as_when_it_arrives_in_pieces(
    data: bytes, method: str, cut: int
) -> None:
    whole = read_answer(method, [data])
    assert read_answer(method, [data[:cut], data[cut:]]) == whole
    assert read_answer(method, [data[i : i + 1] for i in range(len(data))]) == whole
