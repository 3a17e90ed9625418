"""One HTTP/1.1 connection without I/O: bytes in, events out; events in, bytes out.

:class:`ServerConnection` is the listener's side of a client connection,
:class:`ClientConnection` the upstream client's side of a connection to an
upstream. Both follow h11's model: the owner feeds received bytes with
``receive_data`` (``b""`` for the peer's end of stream) and asks for
``next_event()``, which answers with a head, a piece of body (``bytes``),
:data:`END_OF_MESSAGE`, or :data:`NEED_DATA` / :data:`PAUSED` /
:data:`CONNECTION_CLOSED`; it sends by calling ``send_*`` methods that return
the bytes to write. Every event goes through the state machine of
:mod:`proxy.http.h1.state`, so an exchange the machine does not allow is
refused, and a connection is reused only through its one guard,
:meth:`start_next_cycle`.

Received bytes wait in one buffer until the owner asks for the next event,
so a request pipelined behind one still being answered, or the first bytes of
another protocol behind an upgrade request, stay unparsed until their turn:
:attr:`buffered` tells the owner when to stop reading from the socket. A
message without a body ends with its head: a head whose ``framing`` is 0 is
followed by no body events and no END_OF_MESSAGE; nor is a response head
that carries its whole ``body`` (it came with the head).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from proxy.http.h1 import state as events
from proxy.http.h1.reader import (
    BodyReader,
    ChunkedReader,
    LengthReader,
    RequestHead,
    RequestHeadParser,
    ResponseHead,
    ResponseHeadParser,
    UntilCloseReader,
)
from proxy.http.h1.rules import (
    CHUNKED,
    UNTIL_CLOSE,
    IncompleteMessage,
    Limits,
    RemoteProtocolError,
    malformed,
    response_has_body,
    status_has_body,
)
from proxy.http.h1.state import (
    CLIENT,
    CLOSED,
    DONE,
    IDLE,
    MIGHT_SWITCH_PROTOCOL,
    MUST_CLOSE,
    SEND_BODY,
    SEND_RESPONSE,
    SERVER,
    SWITCHED_PROTOCOL,
    ConnectionState,
    LocalProtocolError,
    Role,
    Steps,
)
from proxy.http.h1.writer import CONTINUE, LAST_CHUNK, chunk, request_head, response_head

# The event sequences each step of an exchange applies (see ConnectionState.process_events).
_REQUEST_AND_END = Steps(CLIENT, events.REQUEST, events.END_OF_MESSAGE)
_REQUEST = Steps(CLIENT, events.REQUEST)
_REQUEST_END = Steps(CLIENT, events.END_OF_MESSAGE)
_RESPONSE_AND_END = Steps(SERVER, events.RESPONSE, events.END_OF_MESSAGE)
_RESPONSE = Steps(SERVER, events.RESPONSE)
_RESPONSE_END = Steps(SERVER, events.END_OF_MESSAGE)
_SWITCH = Steps(SERVER, events.SWITCH)
_INFORMATIONAL = Steps(SERVER, events.INFORMATIONAL)


class Sentinel:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA: Final = Sentinel("NEED_DATA")  # nothing to report until more bytes arrive
PAUSED: Final = Sentinel("PAUSED")  # the peer is ahead of us: finish our side first
END_OF_MESSAGE: Final = Sentinel("END_OF_MESSAGE")
CONNECTION_CLOSED: Final = Sentinel("CONNECTION_CLOSED")

_COMPACT_AFTER = 64 * 1024


Received = RequestHead | ResponseHead | bytes | Sentinel


class _Connection:
    """What both roles share: the state machine, the receive buffer and body framing."""

    __slots__ = ("_body", "_buf", "_ended", "_eof", "_pos", "limits", "state")

    their_role: Role
    _their_end: Steps

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.state = ConnectionState()
        self._buf: bytes | bytearray = b""
        self._pos = 0
        self._eof = False
        self._body: BodyReader | None = None
        self._ended = False  # the body's last bytes went out with the previous event

    # -- receiving -------------------------------------------------------------
    def receive_data(self, data: bytes) -> int:
        """Bytes from the peer (``b""`` is its end of stream); how many are now buffered."""
        if not data:
            self._eof = True
            return len(self._buf) - self._pos
        buf = self._buf
        if self._pos >= len(buf):
            self._buf, self._pos = data, 0
            return len(data)
        if type(buf) is bytes:
            # Bytes left over: keep them in a bytearray, which grows in place.
            buf = self._buf = bytearray(memoryview(buf)[self._pos :])
            self._pos = 0
        buf += data
        return len(buf) - self._pos

    @property
    def buffered(self) -> int:
        """Bytes received and not yet turned into events."""
        return len(self._buf) - self._pos

    @property
    def their_eof(self) -> bool:
        return self._eof

    def _consume(self, size: int) -> None:
        pos = self._pos + size
        buf = self._buf
        if pos >= len(buf):
            self._buf, self._pos = b"", 0
        elif pos > _COMPACT_AFTER and type(buf) is bytearray and pos > len(buf) // 2:
            del buf[:pos]
            self._pos = 0
        else:
            self._pos = pos

    def trailing_data(self) -> bytes:
        """After a protocol switch: the bytes received beyond the last HTTP message."""
        if self.state.client is not SWITCHED_PROTOCOL:
            raise LocalProtocolError("no protocol switch happened")
        data = bytes(self._buf[self._pos :])
        self._buf, self._pos = b"", 0
        return data

    def _read_body(self) -> bytes | Sentinel:
        if self._ended:
            return self._end_of_body()
        reader = self._body
        assert reader is not None
        try:
            data, used, done = reader.read(self._buf, self._pos, self._eof)
        except RemoteProtocolError:
            self.state.process_error(self.their_role)
            raise
        if used:
            self._consume(used)
        if data:
            self._ended = done
            return data
        if done:
            return self._end_of_body()
        return NEED_DATA

    def _end_of_body(self) -> Sentinel:
        self._ended = False
        self._body = None
        self.state.process_events(self._their_end)
        return END_OF_MESSAGE

    def _start_body(self, framing: int) -> None:
        if framing == CHUNKED:
            self._body = ChunkedReader(self.limits)
        elif framing == UNTIL_CLOSE:
            self._body = UntilCloseReader()
        else:
            self._body = LengthReader(framing)

    def _failed(self, exc: RemoteProtocolError) -> RemoteProtocolError:
        self.state.process_error(self.their_role)
        return exc

    # -- reuse -------------------------------------------------------------------
    @property
    def reusable(self) -> bool:
        """Both sides finished a clean exchange (the state machine's reuse condition)."""
        state = self.state
        return state.client is DONE and state.server is DONE

    def start_next_cycle(self) -> None:
        """Back to IDLE for the next exchange; refused unless both sides are DONE."""
        self.state.start_next_cycle()


class ServerConnection(_Connection):
    """The listener's side of one client connection: requests in, responses out."""

    __slots__ = ("_chunked_out", "_head", "_method", "_remaining_out", "_version")

    their_role = CLIENT
    _their_end = _REQUEST_END

    def __init__(self, limits: Limits, head_type: type[RequestHead] = RequestHead) -> None:
        super().__init__(limits)
        self._head = RequestHeadParser(limits, head_type)
        self._method: str | None = None  # of the request being answered
        self._version = "1.1"
        self._chunked_out = False
        self._remaining_out: int | None = None  # bytes of a Content-Length body still to send

    def next_event(self) -> RequestHead | bytes | Sentinel:
        state = self.state
        client = state.client
        if client is SEND_BODY:
            return self._read_body()
        if client is IDLE and state.server is IDLE:
            if self._pos >= len(self._buf) and not self._eof:
                return NEED_DATA  # between requests, nothing received yet
            return self._read_request()
        if client is CLOSED:
            return CONNECTION_CLOSED
        if (client is DONE or client is MUST_CLOSE) and self._eof and self._pos >= len(self._buf):
            state.process_event(CLIENT, events.CONNECTION_CLOSED)
            return CONNECTION_CLOSED
        if client is IDLE or client is DONE or client is MUST_CLOSE:
            return PAUSED  # our answer to the last request is not finished
        if client is MIGHT_SWITCH_PROTOCOL or client is SWITCHED_PROTOCOL:
            return PAUSED
        raise malformed("the client already broke the protocol")

    def _read_request(self) -> RequestHead | Sentinel:
        buf = self._buf
        pos = self._pos
        # RFC 9112 §2.2: empty lines before a request line are ignored.
        while buf.startswith(b"\r\n", pos):
            pos += 2
        if pos != self._pos:
            self._consume(pos - self._pos)
            buf, pos = self._buf, self._pos
            self._head.discard()  # what it saw of them was no head
        if pos >= len(buf):
            return self._closed_between_requests()
        try:
            request = self._head.read(buf, pos)
        except RemoteProtocolError as exc:
            self._head.discard()
            raise self._failed(exc) from None
        if request is None:
            return self._closed_between_requests() if self._eof else NEED_DATA
        size = request.size
        if pos + size >= len(buf):
            self._buf, self._pos = b"", 0
        else:
            self._consume(size)
        state = self.state
        self._method = request.method
        self._version = request.version
        # As h11 does: the flags the head sets come before its events.
        if request.raw_upgrade is not None:
            state.process_upgrade_proposal()
        if not request.keep_alive:
            state.process_keep_alive_disabled()
        if request.framing:
            state.process_events(_REQUEST)
            self._start_body(request.framing)
            reader = self._body
            if isinstance(reader, ChunkedReader) and self._pos < len(self._buf):
                try:
                    reader.check_ahead(self._buf, self._pos)
                except RemoteProtocolError as exc:
                    raise self._failed(exc) from None
        else:
            state.process_events(_REQUEST_AND_END)
        return request

    def _closed_between_requests(self) -> Sentinel:
        if not self._eof:
            return NEED_DATA
        # Between requests, or inside a head that will never be finished: nothing to answer.
        self._buf, self._pos = b"", 0
        self._head.discard()
        self.state.process_event(CLIENT, events.CONNECTION_CLOSED)
        return CONNECTION_CLOSED

    # -- sending -------------------------------------------------------------------
    def _close_after_response(self) -> bool:
        """Decided when a response head goes out: ``Connection: close`` or not."""
        state = self.state
        client = state.client
        close = (
            not state.keep_alive
            # The request body is not read to its end: its rest cannot be skipped safely.
            or (client is not DONE and client is not MIGHT_SWITCH_PROTOCOL)
            # The client has sent its last byte and nothing of it waits to be answered.
            or (self._eof and self._pos >= len(self._buf))
        )
        if close and state.keep_alive:
            state.process_keep_alive_disabled()
        return close

    def send_continue(self) -> bytes:
        """``100 Continue``, once, while the final answer has not started; else nothing."""
        state = self.state
        if state.server is not SEND_RESPONSE or state.client is not SEND_BODY:
            return b""
        state.process_event(SERVER, events.INFORMATIONAL)
        return CONTINUE

    def send_whole(
        self, status: int, reason: str, lines: list[bytes], body: bytes, *, has_date: bool = False
    ) -> bytes:
        """A complete response (head, and body unless HEAD/1xx/204/304) as one piece."""
        # RFC 9110 §6.4.1: 1xx, 204 and 304 carry no content (nor a length); a HEAD
        # answer carries the length of the body it omits, but not the body.
        bodiless_status = status < 200 or status == 204 or status == 304
        length = None if bodiless_status else len(body)
        # Built before any transition: a head that cannot be serialised changes nothing.
        close = self._close_after_response()
        head = response_head(status, reason, lines, length, close=close, has_date=has_date)
        self.state.process_events(_RESPONSE_AND_END)
        if body and not bodiless_status and self._method != "HEAD":
            return head + body
        return head

    def send_head(
        self,
        status: int,
        reason: str,
        lines: list[bytes],
        length: int | None,
        *,
        has_date: bool = False,
    ) -> tuple[bytes, bool]:
        """A streamed response's head, and whether body bytes may follow.

        ``length`` None: chunked for HTTP/1.1 clients, delimited by the close
        for HTTP/1.0 ones.
        """
        method = self._method or "GET"
        body = response_has_body(method, status)
        if not status_has_body(status):
            length = None
        chunked = body and length is None and self._version == "1.1"
        if body and length is None and not chunked:
            self.state.process_keep_alive_disabled()  # the close ends the body
        close = self._close_after_response()
        head = response_head(
            status, reason, lines, length, chunked=chunked, close=close, has_date=has_date
        )
        self.state.process_events(_RESPONSE if body else _RESPONSE_AND_END)
        self._chunked_out = chunked
        self._remaining_out = length if body else None
        return head, body

    def send_data(self, data: bytes) -> bytes:
        self.state.process_event(SERVER, events.DATA)
        if self._chunked_out:
            return chunk(data) if data else b""
        remaining = self._remaining_out
        if remaining is not None:
            if len(data) > remaining:
                raise LocalProtocolError("body longer than its Content-Length")
            self._remaining_out = remaining - len(data)
        return data

    def send_end(self) -> bytes:
        if self._remaining_out:
            raise LocalProtocolError("body shorter than its Content-Length")
        self.state.process_event(SERVER, events.END_OF_MESSAGE)
        if self._chunked_out:
            self._chunked_out = False
            return LAST_CHUNK
        return b""

    def send_switch(self, lines: list[bytes]) -> bytes:
        """``101 Switching Protocols``: from here on the connection is not HTTP/1.1."""
        if self.state.client is not MIGHT_SWITCH_PROTOCOL:
            raise LocalProtocolError("no finished upgrade request to accept")
        head = response_head(101, "Switching Protocols", lines, None, has_date=True)
        self.state.process_event(SERVER, events.SWITCH)
        return head

    def send_failure(self, status: int, lines: list[bytes], body: bytes) -> bytes:
        """An error answer outside the normal exchange (a refused head, a timed-out one).

        The connection closes after it, whatever state the request was in.
        """
        self.state.process_keep_alive_disabled()
        head = response_head(status, "", lines, len(body), close=True, has_date=True)
        state = self.state
        if state.server is IDLE or state.server is SEND_RESPONSE:
            state.process_event(SERVER, events.RESPONSE)
            state.process_event(SERVER, events.END_OF_MESSAGE)
        return head + body

    def start_next_cycle(self) -> None:
        self.state.start_next_cycle()
        self._method = None


class ClientConnection(_Connection):
    """The upstream client's side of one connection: requests out, responses in."""

    __slots__ = ("_chunked_out", "_head", "_method", "_remaining_out")

    their_role = SERVER
    _their_end = _RESPONSE_END

    def __init__(self, limits: Limits) -> None:
        super().__init__(limits)
        self._head = ResponseHeadParser(limits)
        self._method = "GET"
        self._chunked_out = False
        self._remaining_out: int | None = None

    # -- sending -------------------------------------------------------------------
    def send_request(
        self,
        method: str,
        target: str,
        host: str,
        headers: Sequence[tuple[str, str]],
        *,
        length: int | None = None,
        chunked: bool = False,
        upgrade: bool = False,
    ) -> bytes:
        """The request head. A body follows when ``length`` (> 0) is given or ``chunked``.

        ``upgrade``: the headers ask to switch protocols, and a 101 is expected.
        """
        head = request_head(method, target, host, headers, length=length, chunked=chunked)
        self.start_request(method, length=length, chunked=chunked, upgrade=upgrade)
        return head

    def start_request(
        self,
        method: str,
        *,
        length: int | None = None,
        chunked: bool = False,
        upgrade: bool = False,
    ) -> None:
        """Record a request whose head the caller built with :func:`request_head` (same
        ``length`` and ``chunked``): building it first lets a head that cannot be
        sent be refused before any connection is chosen."""
        state = self.state
        if upgrade:
            state.process_upgrade_proposal()
        state.process_events(_REQUEST if chunked or length else _REQUEST_AND_END)
        self._method = method
        self._chunked_out = chunked
        self._remaining_out = None if chunked else (length or 0)

    def send_data(self, data: bytes) -> bytes:
        self.state.process_event(CLIENT, events.DATA)
        if self._chunked_out:
            return chunk(data) if data else b""
        remaining = self._remaining_out or 0
        if len(data) > remaining:
            # The excess would be read upstream as the start of another request.
            raise LocalProtocolError("request body longer than its Content-Length")
        self._remaining_out = remaining - len(data)
        return data

    def send_end(self) -> bytes:
        if self._remaining_out:
            raise LocalProtocolError("request body shorter than its Content-Length")
        self.state.process_event(CLIENT, events.END_OF_MESSAGE)
        if self._chunked_out:
            self._chunked_out = False
            return LAST_CHUNK
        return b""

    # -- receiving -------------------------------------------------------------------
    def next_event(self) -> ResponseHead | bytes | Sentinel:
        state = self.state
        server = state.server
        if server is SEND_BODY:
            return self._read_body()
        if server is SEND_RESPONSE:
            return self._read_response()
        if server is CLOSED:
            return CONNECTION_CLOSED
        if server is SWITCHED_PROTOCOL:
            return PAUSED
        if server is IDLE or server is DONE or server is MUST_CLOSE:
            if self.buffered:
                raise self._failed(malformed("bytes from the upstream that no request asked for"))
            if self._eof:
                state.process_event(SERVER, events.CONNECTION_CLOSED)
                return CONNECTION_CLOSED
            return NEED_DATA
        raise malformed("the upstream already broke the protocol")

    def _read_response(self) -> ResponseHead | Sentinel:
        buf = self._buf
        try:
            response = self._head.read(buf, self._pos, self._method)
            if response is None:
                if self._eof:
                    raise IncompleteMessage("connection closed before a complete response head")
                return NEED_DATA
            if response.status == 101 and not self.state.upgrade_proposed:
                raise malformed("unexpected protocol switch")
        except RemoteProtocolError as exc:
            self._head.discard()
            raise self._failed(exc) from None
        state = self.state
        status = response.status
        pos = self._pos + response.size
        framing = response.framing
        if status >= 200 and 0 < framing <= len(buf) - pos:
            # The whole body came with the head (the common small answer): one step.
            end = pos + framing
            response.body = bytes(buf[pos:end])
            pos = end
        if pos >= len(buf):
            self._buf, self._pos = b"", 0
        else:
            self._pos = pos
            if type(buf) is bytearray and pos > _COMPACT_AFTER:
                self._consume(0)
        if status < 200:
            state.process_events(_SWITCH if status == 101 else _INFORMATIONAL)
            return response
        if not response.keep_alive or framing == UNTIL_CLOSE:
            state.process_keep_alive_disabled()
        if response.body is not None or not framing:
            state.process_events(_RESPONSE_AND_END)
        else:
            state.process_events(_RESPONSE)
            self._start_body(framing)
        return response
