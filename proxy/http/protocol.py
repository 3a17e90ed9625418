"""The listening edge: asyncio protocols feeding bytes to :mod:`proxy.http.h1`, writing its answers.

What is decided here is only what needs a loop or a clock; the HTTP rules
(framing, keep-alive, limits, the state of each exchange) are the pure
:class:`~proxy.http.h1.connection.ServerConnection`'s:

* one task per connection answers its requests in order; a request pipelined
  behind one still being answered stays unparsed in the connection's buffer,
  and the socket stops being read once that buffer holds
  ``listen.max_head_size`` + 64 KiB;
* a malformed, oversized or ambiguous head never reaches the gateway: it gets
  a short JSON 400/431, one audit record, and the connection is closed;
  a head still incomplete after ``listen.header_timeout`` gets 408; an idle
  connection is closed after ``listen.keepalive_timeout``;
* a response goes out in one ``transport.write`` when its body is known
  (:meth:`Request.send_whole`), or streamed with back-pressure
  (:meth:`Request.start_stream`);
* a connection is kept alive only when both sides finished a clean exchange;
  an answer sent before the request body was read says ``Connection: close``,
  and the rest of the client's bytes are drained briefly before closing, so
  the client reads the answer instead of a reset;
* a WebSocket upgrade the gateway accepts switches the same connection
  (:meth:`Request.switch_protocols`): the bytes after the upgrade request are
  handed to the WebSocket relay, bounded like everything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Protocol

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy, MultiDictProxy, MultiMapping
from yarl import URL

from proxy.errors import (
    ClientDisconnected,
    GatehouseError,
    RequestTimeout,
)
from proxy.http.config import ListenConfig
from proxy.http.flow import FlowProtocol, Tunnel
from proxy.http.forwarding import new_request_id
from proxy.http.h1.connection import (
    CONNECTION_CLOSED,
    END_OF_MESSAGE,
    NEED_DATA,
    ServerConnection,
)
from proxy.http.h1.reader import RequestHead
from proxy.http.h1.rules import CHUNKED, IncompleteMessage, Limits, RemoteProtocolError
from proxy.http.h1.state import IDLE, SEND_BODY
from proxy.http.responses import rejection_response

log = logging.getLogger("gatehouse.server")

_READ_AHEAD = 64 * 1024  # buffered beyond one head before the socket is paused
_LINGER_SECONDS = 2.0
_LINGER_BYTES = 2**20
_SWEEP_EVERY = 1.0
_FRAMING = frozenset({"content-length", "transfer-encoding", "connection"})


class RequestView(Protocol):
    """What the proxy's own endpoints (login, JWKS) read of a request."""

    @property
    def method(self) -> str: ...

    @property
    def path(self) -> str: ...

    @property
    def host(self) -> str: ...

    @property
    def headers(self) -> CIMultiDictProxy[str]: ...

    @property
    def query(self) -> MultiMapping[str]: ...


class Written:
    """The response already went out through the request (the gateway reads ``status``).

    A plain class, not a frozen dataclass: one is made per request, and a
    frozen dataclass takes three times as long to build. Never changed once made.
    """

    __slots__ = ("status",)

    def __init__(self, status: int) -> None:
        self.status = status


def _text(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


_STARTED, _ENDED, _READING = 1, 2, 4


class Request(RequestHead):
    """One parsed request: what the gateway reads, and the way to answer it.

    The very head the parser built (this class is the one it builds for the
    listener), with the connection and the answer's progress added.
    """

    __slots__ = ("_conn", "_headers", "_query", "_state")

    _conn: _Connection
    _state: int  # _STARTED | _ENDED | _READING

    # -- what the gateway reads ------------------------------------------------
    @property
    def raw_path(self) -> str:
        return self.target

    @property
    def transport(self) -> asyncio.Transport | None:
        return self._conn.transport

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def host(self) -> str:
        host = self.raw_host
        return "" if host is None else _text(host)

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        """The header fields as text (built on first use: the hot path reads ``raw_headers``)."""
        try:
            return self._headers
        except AttributeError:
            fields = CIMultiDict((_text(n), _text(v)) for n, v in self.raw_headers)
            self._headers: CIMultiDictProxy[str] = CIMultiDictProxy(fields)
            return self._headers

    @property
    def query(self) -> MultiDictProxy[str]:
        try:
            return self._query
        except AttributeError:
            self._query: MultiDictProxy[str] = URL(self.target, encoded=True).query
            return self._query

    @property
    def body_exists(self) -> bool:
        return self.framing != 0

    @property
    def content_length(self) -> int | None:
        """The declared body length (None for a chunked body)."""
        framing = self.framing
        return None if framing == CHUNKED else framing

    @property
    def expects_continue(self) -> bool:
        return self.expect_continue

    @property
    def upgrade(self) -> str | None:
        """The protocol a request asks to switch to (``Upgrade`` + ``Connection: upgrade``)."""
        upgrade = self.raw_upgrade
        return None if upgrade is None else upgrade.decode("latin-1").strip().lower()

    @property
    def started(self) -> bool:
        """A response head has gone out."""
        return bool(self._state & _STARTED)

    @property
    def ended(self) -> bool:
        """The response went out whole."""
        return bool(self._state & _ENDED)

    async def body(self) -> AsyncIterator[bytes]:
        """The request body as it arrives (read once). Raises a phase error if it breaks."""
        if self._state & _READING:
            raise RuntimeError("the request body is read only once")
        self._state |= _READING
        if not self.framing:
            return
        read = self._conn.read_body
        while True:
            data = await read()
            if data is None:
                return
            yield data

    # -- answering -------------------------------------------------------------
    def send_continue(self) -> None:
        """Invite the client to send the body it announced with ``Expect: 100-continue``."""
        if not self._state & _STARTED:
            self._conn.write(self._conn.h1.send_continue())

    def send_whole(
        self, status: int, reason: str, lines: list[bytes], body: bytes, *, has_date: bool = False
    ) -> Written:
        """The whole response in one write (HEAD, 204 and 304 get no body).

        ``lines`` are the header lines (``b"Name: value"``) besides Date
        (added unless ``has_date``) and the framing, which is the server's.
        """
        conn = self._conn
        h1 = conn.h1
        if conn.server.closing:
            h1.state.process_keep_alive_disabled()
        data = h1.send_whole(status, reason, lines, body, has_date=has_date)
        self._state |= _STARTED | _ENDED
        transport = conn.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("connection closed")
        transport.write(data)
        return Written(status)

    def start_stream(
        self,
        status: int,
        reason: str,
        lines: list[bytes],
        length: int | None,
        *,
        has_date: bool = False,
    ) -> bool:
        """Send the head of a streamed response; False when no body may follow (HEAD, 204, 304)."""
        conn = self._conn
        conn.before_response()
        head, body = conn.h1.send_head(status, reason, lines, length, has_date=has_date)
        self._state |= _STARTED if body else _STARTED | _ENDED
        conn.write(head)
        return body

    async def write(self, chunk: bytes) -> None:
        if chunk:
            conn = self._conn
            conn.write(conn.h1.send_data(chunk))
            await conn.drain()

    def end_stream(self, status: int) -> Written:
        conn = self._conn
        data = conn.h1.send_end()
        self._state |= _ENDED
        if data:
            conn.write(data)
        return Written(status)

    def abort(self) -> None:
        """A streamed response cannot be completed: cut the connection, never fake an end."""
        self._conn.abort()

    def switch_protocols(self, lines: list[bytes], limit: int) -> Tunnel:
        """Accept the client's upgrade with ``101 Switching Protocols``; the connection is
        the returned tunnel's from here on (its reads bounded by ``limit`` bytes)."""
        conn = self._conn
        conn.write(conn.h1.send_switch(lines))
        self._state |= _STARTED | _ENDED
        return conn.tunnel(limit)


def response_lines(headers: Iterable[tuple[str, str]]) -> tuple[list[bytes], bool]:
    """Text headers (an aiohttp response's) as head lines, and whether Date is among them."""
    lines = []
    has_date = False
    for name, value in headers:
        has_date = has_date or name.lower() == "date"
        lines.append(f"{name}: {value}".encode("latin-1"))
    return lines, has_date


Handler = Callable[[Request], Awaitable["web.StreamResponse | Written"]]


class RejectionLog(Protocol):
    """Where the listener reports a request it refused before the gateway saw it.

    The audit writer (:class:`proxy.observability.audit.AuditWriter`) is one:
    every request that reached the proxy gets one audit record, these too. The
    listener names what it needs here instead of importing the I/O layer.
    """

    def rejected(self, client_ip: str | None, status: int, reason: str, request_id: str) -> None:
        """Record the refusal (answered ``status`` with ``reason``)."""


class HttpServer:
    """The protocol factory for the listener: connections, their sweep, and shutdown."""

    def __init__(
        self,
        handler: Handler,
        listen: ListenConfig,
        audit: RejectionLog | None,
        clear_on_431: tuple[str, ...] = (),
    ) -> None:
        self.handler = handler
        self.audit = audit
        # Set-Cookie values for a 431 (see proxy.http.responses.rejection_response).
        self.clear_on_431 = clear_on_431
        self.keepalive = listen.keepalive_timeout
        self.header_timeout = listen.header_timeout
        self.limits = Limits(
            max_line=listen.max_header_size,
            max_headers=listen.max_headers,
            max_head=listen.max_head_size,
        )
        # A whole head must fit before the socket pauses, or it would never complete.
        self.high_water = listen.max_head_size + _READ_AHEAD
        self.connections: set[_Connection] = set()
        self.closing = False
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: asyncio.Event | None = None
        self._gone = asyncio.Event()  # set once closing and every connection is gone

    def __call__(self) -> _Connection:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
            self._sweeper = loop.call_later(_SWEEP_EVERY, self._sweep)
        return _Connection(self, loop)

    def _sweep(self) -> None:
        """One timer for all connections: idle ones past the keep-alive timeout are
        closed, and so are clients that take longer than ``header_timeout`` to send
        one request head (a slowloris holds connections open with a trickle)."""
        assert self._loop is not None
        now = self._loop.time()
        stale_before = now - self.keepalive
        slow_before = now - self.header_timeout
        for conn in list(self.connections):
            if conn.head_since and conn.head_since < slow_before:
                conn.time_out_head()
            elif conn.idle_since and conn.idle_since < stale_before:
                conn.abort()
        self._sweeper = self._loop.call_later(_SWEEP_EVERY, self._sweep)

    async def shutdown(self, grace: float) -> None:
        """Stop taking requests and let in-flight ones finish, for up to ``grace`` seconds.

        A request still running then is cancelled: the gateway answers it 503
        ``shutting_down`` where a response can still be written (its one audit
        record says so), and its connection is closed.
        """
        self.closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        self._idle = asyncio.Event()
        for conn in list(self.connections):
            if not conn.busy:
                conn.abort()
        if any(c.busy for c in self.connections):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace)
        tasks = [t for c in list(self.connections) if (t := c.cancel()) is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=_LINGER_SECONDS)
        for conn in list(self.connections):
            conn.close()
        # Give the answers written at the deadline a moment to leave (TLS close included).
        if self.connections:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._gone.wait(), _LINGER_SECONDS)
        for conn in list(self.connections):
            conn.abort()

    def connection_gone(self, conn: _Connection) -> None:
        self.connections.discard(conn)
        if self.closing and not self.connections:
            self._gone.set()
        self.connection_idle()

    def connection_idle(self) -> None:
        """A connection finished its work: during shutdown, the last one ends the wait."""
        if self.closing and self._idle is not None and not any(c.busy for c in self.connections):
            self._idle.set()


class _Connection(FlowProtocol):
    """One client connection: parse, answer in order, close safely."""

    __slots__ = (
        "_lingering",
        "_task",
        "_tunnel",
        "_waiter",
        "busy",
        "h1",
        "head_since",
        "idle_since",
        "server",
        "tls",
    )

    def __init__(self, server: HttpServer, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.server = server
        self.h1 = ServerConnection(server.limits, Request)
        self._task: asyncio.Task[None] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._tunnel: Tunnel | None = None
        self._lingering = 0
        self.busy = False  # a request is being answered (or its head parsed)
        self.tls = False
        self.idle_since = 0.0
        self.head_since = 0.0  # when the bytes of a still-incomplete request head began

    # -- asyncio.Protocol ------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.tls = transport.get_extra_info("sslcontext") is not None
        self.server.connections.add(self)
        self.idle_since = self.loop.time()

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        tunnel = self._tunnel
        if tunnel is not None:
            tunnel.lost()
        self._wake()
        self.server.connection_gone(self)

    def eof_received(self) -> bool:
        tunnel = self._tunnel
        if tunnel is not None:
            tunnel.feed(b"")
        else:
            # A half-close: the requests sent before it are still answered.
            self.h1.receive_data(b"")
            self._wake()
            if self._task is None:
                self.abort()
        # TLS has no half-close (and asyncio warns if asked to keep one open).
        return not self.tls

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            self._lingering -= len(data)
            if self._lingering <= 0:
                self.abort()
            return
        tunnel = self._tunnel
        if tunnel is not None:
            tunnel.feed(data)
            return
        buffered = self.h1.receive_data(data)
        self.idle_since = 0.0
        if not self.busy and not self.head_since:
            self.head_since = self.loop.time()
        if buffered > self.server.high_water:
            self.pause_reading()
        waiter = self._waiter
        if waiter is not None:
            if not waiter.done():
                waiter.set_result(None)
        elif self._task is None and self.transport is not None:
            self._task = self.loop.create_task(self._serve())

    # -- helpers for Request ---------------------------------------------------
    def before_response(self) -> None:
        if self.server.closing:
            self.h1.state.process_keep_alive_disabled()

    async def read_body(self) -> bytes | None:
        """The next piece of the request body, None at its end."""
        h1 = self.h1
        while True:
            try:
                event = h1.next_event()
            except IncompleteMessage:
                raise ClientDisconnected(detail="client closed the connection mid-body") from None
            except RemoteProtocolError as exc:
                raise exc.rejected() from None
            if self._reading_paused and h1.buffered <= self.server.high_water // 2:
                self.resume_reading()
            if type(event) is bytes:
                return event
            if event is END_OF_MESSAGE:
                return None
            if event is NEED_DATA and not self._lost:
                await self._wait()
                continue
            raise ClientDisconnected(detail="client closed the connection mid-body")

    def tunnel(self, limit: int) -> Tunnel:
        tunnel = self._tunnel = Tunnel(self, self.h1.trailing_data(), limit)
        if self._reading_paused:
            self.resume_reading()  # the tunnel pauses at its own bound
        return tunnel

    def time_out_head(self) -> None:
        """The client took too long to send a request head: 408, then close."""
        self.head_since = 0.0
        if self.busy or self.h1.state.client is not IDLE:
            return
        self._reject(RequestTimeout())
        self._wake()

    def abort(self) -> None:
        transport = self.transport
        if transport is not None:
            transport.close()

    def close(self) -> None:
        self.abort()

    def cancel(self) -> asyncio.Task[None] | None:
        """Cancel the request being answered (the drain deadline); the task, to wait for."""
        task = self._task
        if task is None or task.done() or not self.busy:
            return None
        task.cancel()
        return task

    # -- the connection's task -----------------------------------------------------
    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        waiter = self._waiter = self.loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    async def _serve(self) -> None:
        """The connection's one task: answer requests in order, then wait for more.

        One long-lived task per connection rather than one per request: a
        task's creation and registration cost more than waking a future.
        """
        h1 = self.h1
        server = self.server
        try:
            while self.transport is not None and not self._lingering:
                try:
                    event = h1.next_event()
                except RemoteProtocolError as exc:
                    rejected = exc.rejected()
                    log.debug("rejected request: %s (%s)", rejected.reason, exc.detail)
                    self._reject(rejected)
                    return
                if self._reading_paused and h1.buffered <= server.high_water // 2:
                    self.resume_reading()
                if event is NEED_DATA:
                    if server.closing:
                        return
                    self.busy = False
                    if h1.buffered:
                        self.head_since = self.head_since or self.loop.time()
                    else:
                        self.idle_since = self.loop.time()
                    waiter = self._waiter = self.loop.create_future()
                    try:
                        await waiter
                    finally:
                        self._waiter = None
                    self.busy = True
                    continue
                if type(event) is not Request:  # closed by the client, or nothing to read
                    if event is not CONNECTION_CLOSED:
                        log.error("unexpected %r between requests", event)
                    return
                self.busy = True
                self.head_since = 0.0
                request = event
                request._conn = self
                request._state = 0
                try:
                    result = await server.handler(request)
                except Exception:
                    log.exception("unexpected failure answering a request")
                    return
                if type(result) is not Written:
                    self._answer_with(request, result)  # type: ignore[arg-type]
                elif not request._state & _ENDED:
                    self.abort()  # a streamed answer the handler did not finish: never fake its end
                if self._tunnel is not None:
                    return
                if not h1.state.next_cycle():  # the one reuse guard: both sides DONE
                    self._finish_closing()
                    return
        finally:
            self.busy = False
            self._task = None
            if self._tunnel is None and not self._lingering:
                self.abort()
            if server.closing:
                server.connection_idle()

    def _answer_with(self, request: Request, response: web.StreamResponse) -> None:
        """Send the aiohttp response a handler returned instead of writing its own."""
        if request.started:
            self.abort()  # a response began through the request but was not finished
        else:
            self._send_web_response(request, response)

    def _send_web_response(self, request: Request, response: web.StreamResponse) -> None:
        """Serialise an (unprepared) aiohttp response: errors, redirects, local endpoints."""
        body = response.body if isinstance(response, web.Response) else None
        if body is not None and not isinstance(body, bytes | bytearray):
            log.error("cannot serialise a %s body", type(body).__name__)
            self.abort()
            return
        if response.keep_alive is False:
            self.h1.state.process_keep_alive_disabled()
        # Framing is the server's to set, from the body it actually sends.
        headers = [(k, v) for k, v in response.headers.items() if k.lower() not in _FRAMING]
        for cookie in response.cookies.values():
            headers.append(("Set-Cookie", cookie.output(header="")[1:]))
        if body and "Content-Type" not in response.headers:
            headers.append(("Content-Type", "application/octet-stream"))
        if "Server" not in response.headers:
            headers.append(("Server", "gatehouse"))
        try:
            lines, has_date = response_lines(headers)
            request.send_whole(
                response.status, response.reason, lines, bytes(body or b""), has_date=has_date
            )
        except ConnectionError:
            pass
        except ValueError:
            # A value that is not latin-1 text or holds a line break (echoed
            # request data): nothing was sent, and nothing safe can be.
            log.error("cannot serialise the headers of a %d response", response.status)
            self.abort()

    def _finish_closing(self) -> None:
        """Close after a response, draining the rest of the client's bytes for a moment first."""
        transport = self.transport
        if transport is None:
            return
        h1 = self.h1
        if h1.state.client is SEND_BODY or (h1.buffered and not h1.their_eof):
            self._linger()  # a body or pipelined bytes unread: a close now could reset
        else:
            transport.close()

    def _linger(self) -> None:
        """Read and discard what the client still sends, briefly, then close.

        The client may still be sending a body we did not read; closing at once
        would reset the connection and could destroy the answer in flight.
        """
        transport = self.transport
        if transport is None:
            return
        self._lingering = _LINGER_BYTES
        self.resume_reading()
        if transport.can_write_eof():
            transport.write_eof()
        self.loop.call_later(_LINGER_SECONDS, self.abort)

    def _reject(self, error: GatehouseError) -> None:
        """A request refused before the gateway: JSON 400/408/431, one audit record, close."""
        rid = new_request_id()
        response = rejection_response(error, rid, self.server.clear_on_431)
        if self.server.audit is not None:
            peer = self.transport.get_extra_info("peername") if self.transport else None
            client_ip = str(peer[0]) if isinstance(peer, tuple) else None
            self.server.audit.rejected(client_ip, error.status, error.reason, rid)
        body = response.body
        assert isinstance(body, bytes)
        lines, _ = response_lines(response.headers.items())
        try:
            self.write(self.h1.send_failure(error.status, lines, body))
        except ConnectionError:
            return
        self._linger()
