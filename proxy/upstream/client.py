"""The upstream HTTP/1.1 client: pooled keep-alive connections on asyncio protocols.

Why not ``aiohttp.ClientSession``: it builds a ``ClientRequest`` and a
``ClientResponse``, merges default headers, resolves cookies and redirects and
runs a trace machinery on every request, and it was the single largest cost
of the proxy's request path (about half the CPU of a pass-through). A proxy
needs none of it: the request head is already final, so this client writes it
with one ``transport.write`` and parses the answer with llhttp through
``httptools`` (the parser aiohttp also builds on, strict mode), keeping the
header bytes as they came and handing over a body that arrived with its head
as bytes: no header multidict, message tuple or stream object per response.

What it keeps from a full client, because a proxy depends on it:

* connect, read and head timeouts, each failure named by what it says about
  the request (see :class:`ClientFailure`): a retry is only safe when the
  request provably never left;
* a connection is reused only after a complete, well-framed exchange; any
  doubt (framing error, early answer while the body was still being sent,
  unread body, ``Connection: close``) closes it;
* back-pressure both ways (the request body waits for ``drain``, the response
  body pauses the socket when its buffer fills);
* TLS to the upstream with the backend's context and server name.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import ssl
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httptools
from aiohttp.base_protocol import BaseProtocol
from aiohttp.streams import StreamReader

from proxy.http.headers import serialise_head
from proxy.upstream.retry import Failure

_READ_LIMIT = 2**16
_MAX_LINE = 8190
_MAX_HEADERS = 128
# The whole response head, 1xx heads included: llhttp itself sets no limit.
_MAX_HEAD = _MAX_HEADERS * _MAX_LINE
_KEEPALIVE = 30.0
_MAX_IDLE_PER_ORIGIN = 256
_BODYLESS_DEFAULT_LENGTH = frozenset({"POST", "PUT", "PATCH"})


class ClientFailure(Exception):
    """One attempt failed; ``reached`` says whether the upstream may have seen the request."""

    failure: Failure = Failure.RESET
    reached: bool = True


class ConnectFailed(ClientFailure):
    """Refused, unreachable, unresolved, TLS refused or connect timeout: nothing was sent."""

    failure, reached = Failure.CONNECT_ERROR, False


class ConnectTimeout(ConnectFailed):
    """No connection within the connect timeout (504 like other timeouts; still never sent)."""


class ConnectionDropped(ClientFailure):
    """The connection ended after (part of) the request was written."""

    failure, reached = Failure.RESET, True


class ResponseTimeout(ClientFailure):
    """The upstream took the request and went quiet for longer than the read timeout."""

    failure, reached = Failure.TIMEOUT, True


class MalformedResponse(ClientFailure):
    """The answer broke HTTP/1.1 framing (never retried: the upstream did something)."""

    failure, reached = Failure.PROTOCOL, True


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an endpoint's requests go, parsed once per endpoint URL."""

    host: str
    port: int
    tls: bool
    host_header: str
    prefix: str  # the endpoint URL's path, prepended to every request target


@functools.lru_cache(maxsize=1024)
def parse_origin(base_url: str) -> Origin:
    parts = urlsplit(base_url)
    tls = parts.scheme == "https"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {base_url!r}")
    default = 443 if tls else 80
    port = parts.port or default
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if port == default else f"{shown}:{port}"
    return Origin(host, port, tls, host_header, parts.path.rstrip("/"))


def request_head(
    method: str,
    target: str,
    host: str,
    headers: Sequence[tuple[str, str]],
    framing: str | None = None,
) -> bytes:
    """The request line and header block, refusing any line break inside a name or value."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if framing is not None:
        lines.append(framing)
    return serialise_head(lines)


# What the head future resolves with: status, reason, raw headers, Content-Length,
# and the body: all of it (bytes) when it came with the head, else the stream.
Head = tuple[int, str, list[tuple[bytes, bytes]], int | None, bytes | None, StreamReader | None]


class _Connection(BaseProtocol):
    """One upstream connection, carrying one exchange at a time.

    The parser's callbacks (``on_status`` ... ``on_message_complete``) collect
    the response; at the end of the ``data_received`` call that completed the
    head, the head future gets it, with the body as bytes when that call also
    completed the body (the common small answer), else with a stream that the
    later callbacks feed.
    """

    __slots__ = (
        "_body",
        "_broken",
        "_complete",
        "_framed",
        "_head",
        "_head_bytes",
        "_head_deadline",
        "_headers",
        "_last_read",
        "_length",
        "_method_head",
        "_payload",
        "_read_timeout",
        "_reason",
        "_refusal",
        "_response",
        "_status",
        "_timer",
        "idle_since",
        "key",
        "on_lost",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, key: tuple[Any, ...]) -> None:
        super().__init__(loop)
        self.key = key
        self.idle_since = 0.0
        self.on_lost: Callable[[_Connection], None] | None = None
        self._head: asyncio.Future[Head] | None = None
        self._payload: StreamReader | None = None
        self._read_timeout: float | None = None
        self._head_deadline: float | None = None
        self._last_read = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._broken = False
        self._response: httptools.HttpResponseParser | None = None
        self._reset_response()
        self._method_head = False

    def _reset_response(self) -> None:
        self._status = 0  # the final (non-1xx) status, once its head is complete
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._length: int | None = None
        self._framed = False  # Content-Length or chunked: the close does not end the body
        self._body: list[bytes] = []
        self._complete = False
        self._refusal: ClientFailure | None = None

    # -- the exchange --------------------------------------------------------
    def start(
        self, method: str, head: bytes, read_timeout: float | None, head_deadline: float | None
    ) -> asyncio.Future[Head]:
        """Write the request head; the future resolves with the response's :data:`Head`."""
        assert self.transport is not None
        if self._response is None:
            # Kept across exchanges: llhttp is ready for the next message once
            # one completed cleanly (see finish).
            self._response = httptools.HttpResponseParser(self)
        self._reset_response()
        self._method_head = method == "HEAD"
        self._head = waiter = self._loop.create_future()
        self._payload = None
        self._read_timeout = read_timeout
        self._head_deadline = head_deadline
        self._last_read = now = self._loop.time()
        due = _earliest(read_timeout and now + read_timeout, head_deadline)
        if due is not None:
            self._timer = self._loop.call_at(due, self._on_timer)
        self.transport.write(head)
        return waiter

    def write(self, chunk: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionDropped("connection lost while sending the request body")
        self.transport.write(chunk)

    async def drain(self) -> None:
        if self._paused:
            try:
                await self._drain_helper()
            except ConnectionError:
                raise ConnectionDropped("connection lost while sending the request body") from None

    def fail(self, exc: BaseException) -> None:
        """End the exchange with ``exc`` (the request body failed): the connection is spent."""
        self._broken = True
        head = self._head
        if head is not None and not head.done():
            head.set_exception(exc)
        self.close()

    @property
    def reusable(self) -> bool:
        head = self._head
        payload = self._payload
        return (
            not self._broken
            and self._complete
            and self.transport is not None
            and not self.transport.is_closing()
            and head is not None
            and head.done()
            and not head.cancelled()
            and head.exception() is None
            and (payload is None or (payload.is_eof() and payload.exception() is None))
            and not self._reading_paused
        )

    def finish(self) -> None:
        """The exchange is over (reused or not): forget its state."""
        self._cancel_timer()
        self._head = None
        self._payload = None
        if self._broken or not self._complete or self._method_head:
            # Mid-message (a HEAD answer's announced body included): start afresh.
            self._response = None
        self._body = []
        self._headers = []

    def close(self) -> None:
        self._broken = True
        self._cancel_timer()
        if self.transport is not None:
            self.transport.close()

    # -- back-pressure -----------------------------------------------------------
    def pause_reading(self) -> None:
        # The body stream is full. The parser is not paused: the rest of the
        # chunk at hand goes to the stream, and the socket stays unread.
        self._reading_paused = True
        self._pause_transport_reading()
        # The silence while we hold the upstream back is ours, not the upstream's.
        self._cancel_timer()

    def resume_reading(self, resume_parser: bool = True) -> None:
        if not self._reading_paused:
            return  # the body reader calls this after every read; only a pause needs undoing
        self._reading_paused = False
        if not self._buffer_paused:
            self._resume_transport_reading()
        if self._read_timeout and self._head is not None and self._timer is None:
            self._last_read = self._loop.time()
            self._timer = self._loop.call_at(self._last_read + self._read_timeout, self._on_timer)

    # -- timers ----------------------------------------------------------------
    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        head = self._head
        waiting_for_head = head is not None and not head.done()
        due = _earliest(
            self._read_timeout and self._last_read + self._read_timeout,
            self._head_deadline if waiting_for_head else None,
        )
        if due is None:
            return
        now = self._loop.time()
        if now < due:
            # Data arrived since the timer was set: sleep until the new due time.
            self._timer = self._loop.call_at(due, self._on_timer)
            return
        exc = ResponseTimeout("upstream did not answer in time")
        if waiting_for_head:
            assert head is not None
            head.set_exception(exc)
        elif self._payload is not None and not self._payload.is_eof():
            self._payload.set_exception(exc)
        else:
            return
        self.close()

    # -- parser callbacks (httptools) ----------------------------------------------
    def _refuse(self, failure: ClientFailure) -> None:
        # httptools wraps whatever a callback raises in its own error; the
        # failure is kept here for data_received to report.
        self._refusal = failure
        raise failure

    def on_status(self, reason: bytes) -> None:
        self._reason += reason  # may come in pieces

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self._headers
        if len(headers) >= _MAX_HEADERS or len(name) > _MAX_LINE or len(value) > _MAX_LINE:
            self._refuse(MalformedResponse("response head over the limits"))
        headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._response
        assert parser is not None
        if self._status:
            # A second answer to one request: the framing cannot be trusted.
            self._refuse(MalformedResponse("unsolicited response from upstream"))
        code = parser.get_status_code()
        if code < 200:
            if code == 101:
                self._refuse(MalformedResponse("unexpected protocol switch"))
            # Informational (100 Continue, 103 Early Hints): the answer follows.
            self._headers = []
            self._reason = b""
            return
        self._status = code
        if not parser.should_keep_alive():
            self._broken = True
        for name, value in self._headers:
            size = len(name)
            if size == 14 and name.lower() == b"content-length":
                self._length = int(value)  # llhttp accepted exactly one, all digits
                self._framed = True
            elif size == 17 and name.lower() == b"transfer-encoding":
                self._framed = True
                self._length = None
        if code in (204, 304):
            self._length = None  # never a body, whatever the head says
        if self._method_head or code in (204, 304):
            # The exchange ends with the head (llhttp knows this of 204/304 but
            # not of an answer to HEAD, so its announced body is never read).
            self._complete = True

    def on_body(self, body: bytes) -> None:
        if self._complete:
            self._refuse(MalformedResponse("body bytes after a bodiless response"))
        payload = self._payload
        if payload is not None:
            payload.feed_data(body)
        else:
            self._body.append(body)

    def on_message_complete(self) -> None:
        if not self._status:
            return  # the end of an informational answer
        self._complete = True
        payload = self._payload
        if payload is not None:
            payload.feed_eof()
            self._cancel_timer()

    # -- asyncio.Protocol ------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        parser = self._response
        if parser is None or self._head is None:
            # Bytes nobody asked for (an idle connection): never trust it again.
            self.close()
            return
        self._last_read = self._loop.time()
        if not self._status:
            self._head_bytes += len(data)
            if self._head_bytes > _MAX_HEAD:
                self._fail_read(MalformedResponse("response head over the limits"))
                return
        try:
            parser.feed_data(data)
        except Exception:
            if not self._complete:
                failure = self._refusal or MalformedResponse("malformed response from upstream")
                self._fail_read(failure)
                return
            # The answer is whole; what follows it (a second answer, garbage)
            # breaks the framing: the answer stands, the connection goes.
            self.close()
        head = self._head
        if not self._status or head is None or head.done():
            return
        body: bytes | None = None
        if self._complete:
            body = b"".join(self._body) if self._body else b""
            self._cancel_timer()
        else:
            self._payload = StreamReader(self, _READ_LIMIT, loop=self._loop)
            for chunk in self._body:
                self._payload.feed_data(chunk)
        self._body = []
        reason = self._reason.decode("latin-1")
        head.set_result((self._status, reason, self._headers, self._length, body, self._payload))

    def _fail_read(self, exc: ClientFailure) -> None:
        head = self._head
        if head is not None and not head.done():
            head.set_exception(exc)
        elif self._payload is not None and not self._payload.is_eof():
            self._payload.set_exception(exc)
        self.close()

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost finishes the exchange

    def connection_lost(self, exc: BaseException | None) -> None:
        self._broken = True
        self._cancel_timer()
        self._response = None
        payload = self._payload
        if payload is not None and not payload.is_eof() and payload.exception() is None:
            if self._framed:
                payload.set_exception(ConnectionDropped("upstream closed mid-body"))
            else:
                # A body without Content-Length or chunking ends with the connection.
                self._complete = True
                payload.feed_eof()
        head = self._head
        if head is not None and not head.done():
            head.set_exception(ConnectionDropped("upstream closed the connection"))
        super().connection_lost(exc)
        if self.on_lost is not None:
            self.on_lost(self)


def _earliest(a: float | None, b: float | None) -> float | None:
    if not a:
        return b
    if b is None:
        return a
    return a if a < b else b


class _Inert(BaseProtocol):
    """The flow-control peer of a stream over bytes already received: nothing to pause."""

    def pause_reading(self) -> None:
        pass

    def resume_reading(self, resume_parser: bool = True) -> None:
        pass


class UpstreamResponse:
    """The status and headers of an upstream answer, and its body as a stream.

    :meth:`release` once done: the connection goes back to the pool only if
    the exchange completed cleanly, otherwise it is closed.
    """

    __slots__ = (
        "_body",
        "_client",
        "_conn",
        "_content",
        "_sender",
        "content_length",
        "raw_headers",
        "reason",
        "status",
    )

    def __init__(
        self,
        head: Head,
        conn: _Connection,
        client: UpstreamClient,
        sender: asyncio.Task[None] | None,
    ) -> None:
        self.status, self.reason, raw_headers, self.content_length, body, stream = head
        self.raw_headers: list[tuple[bytes, bytes]] = raw_headers
        self._body = body
        self._content = stream
        self._conn: _Connection | None = conn
        self._client = client
        self._sender = sender

    @property
    def complete(self) -> bool:
        """The whole body is already here (take it with :meth:`take_body`)."""
        return self._body is not None or (self._content is not None and self._content.is_eof())

    def take_body(self) -> bytes:
        """The whole body, when :attr:`complete`."""
        body = self._body
        if body is None:
            return self.content.read_nowait(-1)
        self._body = b""
        return body

    @property
    def content(self) -> StreamReader:
        """The body as a stream (built on demand when it all came with the head)."""
        if self._content is None:
            loop = self._client._loop or asyncio.get_running_loop()
            self._content = StreamReader(_Inert(loop), _READ_LIMIT, loop=loop)
            if self._body:
                self._content.feed_data(self._body)
            self._content.feed_eof()
            self._body = None
        return self._content

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        sender = self._sender
        if sender is not None and not sender.done():
            # Answered before the body was all sent: the rest can never be framed.
            sender.cancel()
            conn.close()
        self._client.put_back(conn)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            if self._sender is not None and not self._sender.done():
                self._sender.cancel()
            conn.close()
            conn.finish()


class UpstreamClient:
    """Keep-alive connection pools, one per (origin, TLS settings); one per worker."""

    def __init__(self, keepalive: float = _KEEPALIVE) -> None:
        self._idle: dict[tuple[Any, ...], collections.deque[_Connection]] = {}
        self._keepalive = keepalive
        self._closed = False
        # Per origin: connections open (idle or in use), and requests waiting
        # for one when a backend's max_connections is reached.
        self._open: dict[tuple[Any, ...], int] = {}
        self._waiting: dict[tuple[Any, ...], collections.deque[asyncio.Future[None]]] = {}
        # Found on first use and kept: the pooled connections belong to that loop
        # anyway, and Python 3.11's get_running_loop() costs a getpid() system call.
        self._loop: asyncio.AbstractEventLoop | None = None

    async def request(
        self,
        origin: Origin,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]],
        *,
        body: AsyncIterator[bytes] | None = None,
        body_length: int | None = None,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
        deadline: float | None = None,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        host: str | None = None,
        max_connections: int = 0,
    ) -> UpstreamResponse:
        """Send one request; return once the response head has arrived.

        ``headers`` are final except for ``Host`` (``host``, by default the
        origin's; ``headers`` must not carry one) and the body framing
        (``Content-Length`` when ``body_length`` is known, else chunked).
        ``deadline`` bounds the wait for the response head, in seconds from
        now; ``read_timeout`` any silence while reading. With
        ``max_connections``, at most that many connections to the origin are
        open at once; a request waits (within ``deadline``) for one to free up.
        """
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        head_deadline = None if deadline is None else loop.time() + deadline
        framing = None
        if body_length is not None:
            framing = f"Content-Length: {body_length}"
        elif body is not None:
            framing = "Transfer-Encoding: chunked"
        elif method in _BODYLESS_DEFAULT_LENGTH:
            framing = "Content-Length: 0"
        head = request_head(
            method, origin.prefix + target, host or origin.host_header, headers, framing
        )

        context = ssl_context if origin.tls else None
        if origin.tls and context is None:
            context = _default_context()
        key = (origin.host, origin.port, context, server_hostname)
        # The common case, a pooled connection, without a coroutine.
        conn = self._idle_connection(key)
        if conn is None:
            conn = await self._connection(
                loop, origin, key, connect_timeout, head_deadline, max_connections
            )
        waiter = conn.start(method, head, read_timeout, head_deadline)
        sender: asyncio.Task[None] | None = None
        if body is not None:
            sender = loop.create_task(_send_body(conn, body, length=body_length))
            sender.add_done_callback(functools.partial(_sender_done, conn))
        try:
            answer = await waiter
        except BaseException:
            if sender is not None and not sender.done():
                sender.cancel()
            conn.close()
            conn.finish()
            if sender is not None and sender.done() and not sender.cancelled():
                failed = sender.exception()
                if failed is not None and not isinstance(failed, ClientFailure):
                    # The body's own failure (too large, client gone) names the problem.
                    raise failed from None
            raise
        return UpstreamResponse(answer, conn, self, sender)

    def _idle_connection(self, key: tuple[Any, ...]) -> _Connection | None:
        """The most recently used idle connection to ``key`` still fit for use, if any."""
        idle = self._idle.get(key)
        if idle:
            stale_before = time.monotonic() - self._keepalive
            while idle:
                conn = idle.pop()
                transport = conn.transport
                fresh = conn.idle_since > stale_before
                if fresh and transport is not None and not transport.is_closing():
                    return conn
                conn.close()
        return None

    async def _connection(
        self,
        loop: asyncio.AbstractEventLoop,
        origin: Origin,
        key: tuple[Any, ...],
        connect_timeout: float | None,
        head_deadline: float | None,
        limit: int = 0,
    ) -> _Connection:
        """A new connection to ``key``, waiting first for room under ``limit`` (reusing
        a connection that comes back idle meanwhile)."""
        context: ssl.SSLContext | None = key[2]
        server_hostname: str | None = key[3]
        while limit and self._open.get(key, 0) >= limit:
            await self._wait_for_room(loop, key, head_deadline)
            conn = self._idle_connection(key)
            if conn is not None:
                return conn
        timeout = connect_timeout
        if head_deadline is not None:
            remaining = head_deadline - loop.time()
            timeout = remaining if timeout is None else min(timeout, remaining)
        self._open[key] = self._open.get(key, 0) + 1
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(loop, key),
                    origin.host,
                    origin.port,
                    ssl=context,
                    server_hostname=(server_hostname or origin.host) if context else None,
                )
        except BaseException as exc:
            self._closed_one(key)
            if isinstance(exc, TimeoutError):
                raise ConnectTimeout("connect timed out") from None
            if isinstance(exc, OSError | ssl.SSLError):
                raise ConnectFailed(_describe(exc)) from None
            raise
        conn.on_lost = self._lost
        return conn

    async def _wait_for_room(
        self, loop: asyncio.AbstractEventLoop, key: tuple[Any, ...], head_deadline: float | None
    ) -> None:
        """Wait until a connection to ``key`` comes back idle or closes."""
        waiter: asyncio.Future[None] = loop.create_future()
        queue = self._waiting.setdefault(key, collections.deque())
        queue.append(waiter)
        remaining = None if head_deadline is None else max(0.0, head_deadline - loop.time())
        try:
            async with asyncio.timeout(remaining):
                await waiter
        except TimeoutError:
            raise ConnectFailed("connection limit reached: none came free in time") from None
        finally:
            if not waiter.done():
                waiter.cancel()
            with contextlib.suppress(ValueError):
                queue.remove(waiter)
            if not queue:
                self._waiting.pop(key, None)

    def _wake(self, key: tuple[Any, ...]) -> None:
        queue = self._waiting.get(key)
        while queue:
            waiter = queue.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _closed_one(self, key: tuple[Any, ...]) -> None:
        left = self._open.get(key, 0) - 1
        if left > 0:
            self._open[key] = left
        else:
            self._open.pop(key, None)
        self._wake(key)

    def _lost(self, conn: _Connection) -> None:
        self._closed_one(conn.key)

    def put_back(self, conn: _Connection) -> None:
        reusable = conn.reusable and not self._closed
        conn.finish()
        if not reusable:
            conn.close()
            return
        idle = self._idle.get(conn.key)
        if idle is None:
            idle = self._idle[conn.key] = collections.deque()
        now = time.monotonic()
        conn.idle_since = now
        # Expire from the cold end, amortised over releases: no timer per connection.
        stale_before = now - self._keepalive
        while idle and (idle[0].idle_since < stale_before or len(idle) >= _MAX_IDLE_PER_ORIGIN):
            idle.popleft().close()
        idle.append(conn)
        if self._waiting:
            self._wake(conn.key)

    async def close(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            while idle:
                idle.pop().close()
        self._idle.clear()


async def _send_body(conn: _Connection, body: AsyncIterator[bytes], *, length: int | None) -> None:
    sent = 0
    async for chunk in body:
        if not chunk:
            continue
        sent += len(chunk)
        if length is None:
            conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        elif sent > length:
            # The excess would be read upstream as the start of another request.
            raise ValueError("request body longer than its Content-Length")
        else:
            conn.write(chunk)
        await conn.drain()
    if length is None:
        conn.write(b"0\r\n\r\n")
    elif sent < length:
        raise ValueError("request body shorter than its Content-Length")


def _sender_done(conn: _Connection, task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        conn.fail(exc)


@functools.lru_cache(maxsize=1)
def _default_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate refused: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__
