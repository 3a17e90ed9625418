"""The listening edge: a lean HTTP/1.1 server on asyncio protocols with aiohttp's C parser.

Why not aiohttp's ``web.Server``: per request it builds a ``BaseRequest``, a
``StreamWriter`` and a ``StreamResponse``, runs the response through
``prepare()`` and a chain of awaits, and that machinery cost about a third
of the proxy's CPU per request. Gatehouse needs one thing from a server:
bytes in, parsed by llhttp with strict limits, and bytes out. So:

* requests are parsed by aiohttp's ``HttpRequestParser`` (llhttp, the same
  parser, limits and rejections as before: malformed framing never reaches
  the gateway; it gets a short JSON 400/431, one audit record, and the
  connection is closed);
* pipelined requests are answered in order, one at a time per connection;
* a response goes out in one ``transport.write`` when its body is known
  (:meth:`Request.send_whole`), or streamed with back-pressure
  (:meth:`Request.start_stream`), framed by Content-Length or chunked;
* a connection is kept alive only when the exchange ended cleanly and the
  request body was read to its end; otherwise the response says
  ``Connection: close`` and the rest of the client's bytes are drained
  briefly before closing, so the client reads the answer instead of a reset;
* a WebSocket upgrade is handed, with the bytes already received, to
  aiohttp's own server protocol (:mod:`proxy.http.server`), which owns the
  connection from then on.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Protocol

from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import HttpRequestParser
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from multidict import CIMultiDictProxy, MultiDictProxy, MultiMapping
from yarl import URL

from proxy.config.schema import ListenConfig
from proxy.errors import RequestTimeout
from proxy.http.forwarding import new_request_id
from proxy.http.headers import serialise_head
from proxy.http.server import GatehouseServer, audit_rejection, rejection, rejection_response
from proxy.observability.audit import AuditWriter

log = logging.getLogger("gatehouse.server")

_READ_LIMIT = 2**16
_MAX_QUEUED = 32  # pipelined requests buffered before reading pauses
_LINGER_SECONDS = 2.0
_LINGER_BYTES = 2**20
_SWEEP_EVERY = 1.0
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_FRAMING = frozenset({"content-length", "transfer-encoding", "connection"})


def status_has_body(status: int) -> bool:
    """RFC 9110 §6.4.1: 1xx, 204 and 304 answers never carry content (nor a length)."""
    return status >= 200 and status != 204 and status != 304


def response_has_body(method: str, status: int) -> bool:
    """A HEAD answer carries the length of the body it omits, but never the body."""
    return method != "HEAD" and status_has_body(status)


class RequestView(Protocol):
    """What the proxy's own endpoints (login, JWKS) read of a request, on either server."""

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


@dataclass(frozen=True, slots=True)
class Written:
    """The response already went out through the request (the gateway reads ``status``)."""

    status: int


class Request:
    """One parsed request: what the gateway reads, and the way to answer it.

    Carries the same read-only attributes the gateway and the login
    endpoints use on aiohttp's ``BaseRequest`` (``method``, ``raw_path``,
    ``headers``, ``raw_headers``, ``content``, ``body_exists``, ``transport``,
    ``path``, ``host``, ``query``), so both servers feed one gateway.
    """

    __slots__ = (
        "_chunked",
        "_conn",
        "_query",
        "_started",
        "_version_11",
        "content",
        "headers",
        "method",
        "raw_headers",
        "raw_path",
        "should_close",
    )

    def __init__(self, conn: _Connection, message: Any, payload: StreamReader) -> None:
        self._conn = conn
        self.method: str = message.method
        self.raw_path: str = message.path
        self.headers: CIMultiDictProxy[str] = message.headers
        self.raw_headers: tuple[tuple[bytes, bytes], ...] = message.raw_headers
        self.content = payload
        self.should_close: bool = message.should_close
        self._version_11: bool = message.version >= (1, 1)
        self._query: MultiDictProxy[str] | None = None
        self._started = False
        self._chunked = False

    # -- what the gateway reads ------------------------------------------------
    @property
    def body_exists(self) -> bool:
        return self.content is not EMPTY_PAYLOAD

    @property
    def transport(self) -> asyncio.Transport | None:
        return self._conn.transport

    @property
    def path(self) -> str:
        return self.raw_path.partition("?")[0]

    @property
    def host(self) -> str:
        return self.headers.get("Host", "")

    @property
    def query(self) -> MultiDictProxy[str]:
        if self._query is None:
            self._query = URL(self.raw_path, encoded=True).query
        return self._query

    # -- answering -------------------------------------------------------------
    def send_continue(self) -> None:
        """Invite the client to send the body it announced with ``Expect: 100-continue``."""
        if not self._started:
            self._conn.write(_CONTINUE)

    def send_whole(
        self, status: int, reason: str, lines: list[bytes], body: bytes, *, has_date: bool = False
    ) -> Written:
        """The whole response in one write (HEAD, 204 and 304 get no body).

        ``lines`` are the header lines (``b"Name: value"``) besides Date
        (added unless ``has_date``) and the framing, which is the server's.
        """
        self._started = True
        no_body = not response_has_body(self.method, status)
        length = len(body) if status_has_body(status) else None
        head = self._head(status, reason, lines, length, has_date)
        self._conn.write(head if no_body or not body else head + body)
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
        self._started = True
        no_body = not response_has_body(self.method, status)
        if not status_has_body(status):
            length = None
        elif length is None and not no_body:
            if self._version_11:
                self._chunked = True
            else:
                self._conn.closing = True  # HTTP/1.0: the close delimits the body
        self._conn.write(self._head(status, reason, lines, length, has_date))
        return not no_body

    async def write(self, chunk: bytes) -> None:
        if not chunk:
            return
        if self._chunked:
            chunk = b"%x\r\n%b\r\n" % (len(chunk), chunk)
        await self._conn.write_drained(chunk)

    def end_stream(self, status: int) -> Written:
        if self._chunked:
            self._conn.write(b"0\r\n\r\n")
        return Written(status)

    def abort(self) -> None:
        """A streamed response cannot be completed: cut the connection, never fake an end."""
        self._conn.abort()

    def _head(
        self, status: int, reason: str, lines: list[bytes], length: int | None, has_date: bool
    ) -> bytes:
        conn = self._conn
        last = conn.client_eof and not conn.has_queued
        if self.should_close or not self.content.is_eof() or conn.server.closing or last:
            # An unread request body cannot be skipped safely: end the connection.
            conn.closing = True
        return response_head(
            status,
            reason,
            lines,
            length,
            chunked=self._chunked,
            close=conn.closing,
            has_date=has_date,
        )


def response_head(
    status: int,
    reason: str,
    lines: list[bytes],
    length: int | None,
    *,
    chunked: bool = False,
    close: bool = False,
    has_date: bool = False,
) -> bytes:
    """A response head: the header lines plus Date (unless ``has_date``) and the framing."""
    head = [b"HTTP/1.1 %d %s" % (status, (reason or _phrase(status)).encode("latin-1"))]
    head += lines
    if not has_date:
        head.append(_http_date())
    if length is not None:
        head.append(b"Content-Length: %d" % length)
    elif chunked:
        head.append(b"Transfer-Encoding: chunked")
    if close:
        head.append(b"Connection: close")
    return serialise_head(head)


def header_lines(headers: Iterable[tuple[str, str]]) -> tuple[list[bytes], bool]:
    """Text headers (an aiohttp response's) as head lines, and whether Date is among them."""
    lines = []
    has_date = False
    for name, value in headers:
        has_date = has_date or name.lower() == "date"
        lines.append(f"{name}: {value}".encode("latin-1"))
    return lines, has_date


Handler = Callable[[Request], Awaitable["web.StreamResponse | Written"]]


class HttpServer:
    """The protocol factory for the listener: connections, keep-alive sweep, shutdown."""

    def __init__(
        self,
        handler: Handler,
        listen: ListenConfig,
        audit: AuditWriter | None,
        upgrades: GatehouseServer,
        clear_on_431: tuple[str, ...] = (),
    ) -> None:
        self.handler = handler
        self.audit = audit
        self.upgrades = upgrades
        # Set-Cookie values for a 431 (see proxy.http.server.rejection_response).
        self.clear_on_431 = clear_on_431
        self.keepalive = listen.keepalive_timeout
        self.header_timeout = listen.header_timeout
        self.max_line = listen.max_header_size
        self.max_headers = listen.max_headers
        self.connections: set[_Connection] = set()
        self.closing = False
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drained: asyncio.Event | None = None

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
        """Stop taking requests, let in-flight ones finish (up to ``grace`` s), close the rest."""
        self.closing = True
        self._drained = asyncio.Event()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in list(self.connections):
            if not conn.busy:
                conn.abort()
        started = time.monotonic()
        if any(c.busy for c in self.connections):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), grace)
        for conn in list(self.connections):
            conn.abort()
        await self.upgrades.shutdown(max(0.0, grace - (time.monotonic() - started)))

    def connection_idle(self) -> None:
        """A connection finished its queue: during shutdown, the last one ends the wait."""
        if self._drained is not None and not any(c.busy for c in self.connections):
            self._drained.set()


class _Connection(BaseProtocol):
    """One client connection: parse, queue, answer in order."""

    __slots__ = (
        "_lingering",
        "_queue",
        "_task",
        "_upgrade_tail",
        "_wakeup",
        "busy",
        "client_eof",
        "closing",
        "head_since",
        "idle_since",
        "server",
    )

    def __init__(self, server: HttpServer, loop: asyncio.AbstractEventLoop) -> None:
        parser = HttpRequestParser(
            self,
            loop,
            _READ_LIMIT,
            max_line_size=server.max_line,
            max_field_size=server.max_line,
            max_headers=server.max_headers,
            payload_exception=web.HTTPBadRequest,
            auto_decompress=False,
        )
        super().__init__(loop, parser)
        self.server = server
        self._queue: deque[tuple[Any, StreamReader] | BaseException] = deque()
        self._task: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Future[None] | None = None
        self._upgrade_tail: bytearray | None = None
        self._lingering = 0
        self.busy = False
        self.closing = False
        self.client_eof = False
        self.idle_since = 0.0
        self.head_since = 0.0  # when the bytes of a still-incomplete request head began

    # -- asyncio.Protocol ------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.server.connections.add(self)
        self.idle_since = self._loop.time()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.server.connections.discard(self)
        parser = self._parser
        if parser is not None:
            with contextlib.suppress(Exception):  # a cut request body: the payload says so
                parser.feed_eof()
        self._parser = None
        super().connection_lost(exc)
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)  # ends the waiting task
        if self.busy is False and self.server.closing:
            self.server.connection_idle()

    def eof_received(self) -> bool:
        # Half-close from the client: answer what it sent before, then close.
        self.client_eof = True
        if not self.busy and not self._queue:
            self.abort()
        return True  # keep our half open for those answers

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            self._lingering -= len(data)
            if self._lingering <= 0:
                self.abort()
            return
        if self._upgrade_tail is not None:
            self._upgrade_tail += data
            return
        parser = self._parser
        if parser is None:
            return
        self.idle_since = 0.0
        if not self.head_since and data and not self.busy and not self._queue:
            self.head_since = self._loop.time()
        try:
            messages, upgraded, tail = parser.feed_data(data)
        except HttpProcessingError as exc:
            self._queue.append(exc)
            self._parser = None  # nothing after a framing error can be trusted
            messages, upgraded, tail = [], False, b""
        if messages:
            self._queue.extend(messages)
            self.head_since = 0.0
        if upgraded:
            self._upgrade_tail = bytearray(tail)
        if self._queue and not self.busy:
            self.busy = True
            wakeup = self._wakeup
            if wakeup is not None:
                if not wakeup.done():
                    wakeup.set_result(None)
            elif self._task is None:
                self._task = self._loop.create_task(self._serve())
        if len(self._queue) >= _MAX_QUEUED and not self._reading_paused:
            self._pause_reading_for_buffer()

    def resume_reading(self, resume_parser: bool = True) -> None:
        if self._reading_paused:  # the body reader calls this after every read
            super().resume_reading(resume_parser)

    @property
    def has_queued(self) -> bool:
        return bool(self._queue)

    # -- writing ---------------------------------------------------------------
    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("client connection closed")
        transport.write(data)

    async def write_drained(self, data: bytes) -> None:
        self.write(data)
        if self._paused:
            await self._drain_helper()

    def time_out_head(self) -> None:
        """The client took too long to send a request head: 408, then close."""
        self.head_since = 0.0
        if self.busy or self._queue or self._parser is None:
            return
        self._parser = None
        self._reject_with(RequestTimeout.status, RequestTimeout.reason)

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    # -- answering the queue ---------------------------------------------------
    async def _serve(self) -> None:
        """The connection's one task: answer the queue in order, then wait for more.

        One long-lived task per connection rather than one per request: a
        task's creation and registration cost more than waking a future.
        """
        loop = self._loop
        try:
            while True:
                while self._queue and self.transport is not None:
                    item = self._queue.popleft()
                    if self._buffer_paused and len(self._queue) < _MAX_QUEUED // 2:
                        self._resume_reading_for_buffer()
                    if isinstance(item, BaseException):
                        self._reject(item)
                        return
                    message, payload = item
                    if message.upgrade and self._upgrade_tail is not None and not self._queue:
                        self._hand_over(message)
                        return
                    request = Request(self, message, payload)
                    try:
                        result = await self.server.handler(request)
                    except Exception:
                        log.exception("unexpected failure answering a request")
                        self.abort()
                        return
                    if not isinstance(result, Written):
                        self._answer(request, result)
                    if self.closing:
                        self._finish_closing(payload)
                        return
                if self.transport is None or self.server.closing:
                    return
                if self.client_eof:  # half-closed and all answered
                    self.abort()
                    return
                self.busy = False
                self.idle_since = loop.time()
                self._wakeup = loop.create_future()
                await self._wakeup
                self._wakeup = None
                self.busy = True
        finally:
            self.busy = False
            self._task = self._wakeup = None
            if self.transport is not None and not self._queue:
                self.idle_since = loop.time()
            if self.server.closing:
                self.server.connection_idle()
                self.abort()

    def _answer(self, request: Request, response: web.StreamResponse) -> None:
        """Send an aiohttp response the handler returned instead of writing its own."""
        if request._started:
            # A response began through the request but was not finished.
            self.abort()
            return
        self._send_web_response(request, response)

    def _send_web_response(self, request: Request, response: web.StreamResponse) -> None:
        """Serialise an (unprepared) aiohttp response: errors, redirects, local endpoints."""
        body = response.body if isinstance(response, web.Response) else None
        if body is not None and not isinstance(body, bytes | bytearray):
            log.error("cannot serialise a %s body", type(body).__name__)
            self.abort()
            return
        if response.keep_alive is False:
            self.closing = True
        # Framing is the server's to set, from the body it actually sends.
        headers = [(k, v) for k, v in response.headers.items() if k.lower() not in _FRAMING]
        for cookie in response.cookies.values():
            headers.append(("Set-Cookie", cookie.output(header="")[1:]))
        if body and "Content-Type" not in response.headers:
            headers.append(("Content-Type", "application/octet-stream"))
        if "Server" not in response.headers:
            headers.append(("Server", "gatehouse"))
        try:
            lines, has_date = header_lines(headers)
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

    def _finish_closing(self, payload: StreamReader) -> None:
        """Close after a response, draining an unread request body for a moment first."""
        transport = self.transport
        if transport is None:
            return
        if payload.is_eof():
            transport.close()
            return
        self._linger()

    def _linger(self) -> None:
        """Read and discard what the client still sends, briefly, then close.

        The client may still be sending a body we did not read; closing at once
        would reset the connection and could destroy the answer in flight.
        """
        transport = self.transport
        if transport is None:
            return
        self._parser = None
        self._lingering = _LINGER_BYTES
        if self._reading_paused or self._buffer_paused:
            self._reading_paused = self._buffer_paused = False
            self._resume_transport_reading()
        if transport.can_write_eof():
            transport.write_eof()
        self._loop.call_later(_LINGER_SECONDS, self.abort)

    def _reject(self, exc: BaseException) -> None:
        """A framing error: JSON 400/431, one audit record, then close."""
        status, reason = rejection(exc, 400)
        self._reject_with(status, reason)

    def _reject_with(self, status: int, reason: str) -> None:
        rid = new_request_id()
        log.debug("rejected request: %s", reason)
        response = rejection_response(status, reason, rid, self.server.clear_on_431)
        if self.server.audit is not None:
            peer = self.transport.get_extra_info("peername") if self.transport else None
            audit_rejection(self.server.audit, peer, status, reason, rid)
        self.closing = True
        body = response.body
        assert isinstance(body, bytes)
        lines, has_date = header_lines(response.headers.items())
        head = response_head(status, "", lines, len(body), close=True, has_date=has_date)
        try:
            self.write(head + body)
        except ConnectionError:
            return
        self._linger()

    def _hand_over(self, message: Any) -> None:
        """Give the connection to aiohttp's server protocol (WebSocket upgrades)."""
        transport = self.transport
        assert transport is not None and self._upgrade_tail is not None
        version = message.version
        head = [f"{message.method} {message.path} HTTP/{version.major}.{version.minor}".encode()]
        head += [name + b": " + value for name, value in message.raw_headers]
        replay = b"\r\n".join(head) + b"\r\n\r\n" + bytes(self._upgrade_tail)
        self._upgrade_tail = None
        self._parser = None
        self.server.connections.discard(self)
        protocol = self.server.upgrades()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if self._reading_paused or self._buffer_paused:
            self._resume_transport_reading()
        protocol.data_received(replay)


_date_cache: tuple[int, bytes] = (0, b"")


def _http_date() -> bytes:
    """The Date header line, formatted once per second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, b"Date: " + email.utils.formatdate(now, usegmt=True).encode())
    return _date_cache[1]


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"
