"""The upstream HTTP/1.1 client: pooled keep-alive connections on asyncio protocols.

Why not ``aiohttp.ClientSession``: it builds a ``ClientRequest`` and a
``ClientResponse``, merges default headers, resolves cookies and redirects and
runs a trace machinery on every request, and it was the single largest cost
of the proxy's request path. A proxy needs none of it: the request head is
already final, so this client writes it with one ``transport.write``, and the
answer is read by :class:`~proxy.http.h1.connection.ClientConnection` (the
same pure HTTP/1.1 core as the listener's: llhttp in strict mode for heads,
bodies framed and bounded there), keeping the header bytes as they came and
handing over a body that arrived with its head as bytes.

What it keeps from a full client, because a proxy depends on it:

* connect, read and head timeouts, each failure named by what it says about
  the request (see :class:`ClientFailure`): a retry is only safe when the
  request provably never left;
* a connection is reused only when its state machine says both sides are
  DONE (a complete, well-framed exchange); any doubt (framing error, early
  answer while the body was still being sent, unread body,
  ``Connection: close``) closes it;
* back-pressure both ways (the request body waits for ``drain``, the response
  body pauses the socket when its buffer fills);
* TLS to the upstream with the backend's context and server name;
* a connection switched to WebSocket (:meth:`UpstreamClient.open_tunnel`).
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

from proxy.errors import Failure
from proxy.http.flow import BodyStream, FlowProtocol, Tunnel
from proxy.http.h1.connection import END_OF_MESSAGE, NEED_DATA, ClientConnection
from proxy.http.h1.reader import ResponseHead
from proxy.http.h1.rules import IncompleteMessage, Limits, RemoteProtocolError
from proxy.http.h1.state import LocalProtocolError
from proxy.http.h1.writer import request_head

# Response heads: 8 KiB a field line (nginx's default buffer), 128 fields, 64 KiB in all.
LIMITS = Limits(max_line=8190, max_headers=128, max_head=64 * 1024)
_BODY_BUFFER = 2**16  # response body bytes held for the reader before the socket pauses
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


# What the head future resolves with: the response head, and its body: all of it
# (bytes) when it came with the head, else the stream the rest will arrive on.
Head = tuple[ResponseHead, bytes | None, BodyStream | None]


class _Connection(FlowProtocol):
    """One upstream connection, carrying one exchange at a time.

    Received bytes go to the pure :class:`ClientConnection` at once (so a
    malformed or stalled answer is noticed even while nobody reads it); its
    events fill the head future, then the body: as bytes when the head's
    ``data_received`` call also completed it (the common small answer), else
    through a :class:`BodyStream` that pauses the socket when it fills.
    """

    __slots__ = (
        "_body",
        "_broken",
        "_complete",
        "_head",
        "_head_deadline",
        "_last_read",
        "_parts",
        "_read_timeout",
        "_response",
        "_timer",
        "_tunnel",
        "_tunnel_limit",
        "h1",
        "idle_since",
        "key",
        "on_lost",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, key: tuple[Any, ...]) -> None:
        super().__init__(loop)
        self.key = key
        self.idle_since = 0.0
        self.on_lost: Callable[[_Connection], None] | None = None
        self.h1 = ClientConnection(LIMITS)
        self._head: asyncio.Future[Head] | None = None
        self._response: ResponseHead | None = None
        self._parts: list[bytes] = []
        self._body: BodyStream | None = None
        self._complete = False
        self._read_timeout: float | None = None
        self._head_deadline: float | None = None
        self._last_read = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._broken = False
        self._tunnel: Tunnel | None = None
        self._tunnel_limit = 0

    # -- the exchange --------------------------------------------------------
    def start(
        self,
        method: str,
        head: bytes,
        *,
        length: int | None,
        chunked: bool,
        read_timeout: float | None,
        head_deadline: float | None,
        tunnel_limit: int = 0,
    ) -> asyncio.Future[Head]:
        """Write the request head; the future resolves with the response's :data:`Head`.

        ``tunnel_limit``: the request asks to switch protocols; a 101 answer
        turns the connection into a tunnel reading at most that much ahead.
        """
        assert self.transport is not None
        self.h1.start_request(method, length=length, chunked=chunked, upgrade=bool(tunnel_limit))
        self._tunnel_limit = tunnel_limit
        self._head = waiter = self.loop.create_future()
        self._read_timeout = read_timeout
        self._head_deadline = head_deadline
        if read_timeout or head_deadline is not None:
            self._last_read = now = self.loop.time()
            due = _earliest(read_timeout and now + read_timeout, head_deadline)
            if due is not None:
                self._timer = self.loop.call_at(due, self._on_timer)
        self.transport.write(head)
        return waiter

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionDropped("connection lost while sending the request body")
        transport.write(data)

    async def drain(self) -> None:
        try:
            await super().drain()
        except ConnectionError as exc:
            raise ConnectionDropped("connection lost while sending the request body") from exc

    @property
    def tunnel(self) -> Tunnel | None:
        """What the connection became after a 101 answer, if it did."""
        return self._tunnel

    def fail(self, exc: BaseException) -> None:
        """End the exchange with ``exc`` (the request body failed): the connection is spent."""
        self._broken = True
        head = self._head
        if head is not None and not head.done():
            head.set_exception(exc)
        self.close()

    @property
    def reusable(self) -> bool:
        transport = self.transport
        return (
            not self._broken
            and self.h1.reusable
            and transport is not None
            and not transport.is_closing()
            and not self._reading_paused
        )

    def next_exchange(self) -> bool:
        """End this exchange; True when the connection may carry another.

        It may only when the state machine's one reuse guard lets it back to
        IDLE (both sides DONE) and the transport is whole and not held back.
        """
        self.finish()
        transport = self.transport
        return (
            not self._broken
            and transport is not None
            and not self._reading_paused
            and not transport.is_closing()
            and self.h1.state.next_cycle()
        )

    def finish(self) -> None:
        """The exchange is over (reused or not): forget its state."""
        if self._timer is not None:
            self._cancel_timer()
        self._head = None
        self._response = None
        self._body = None
        self._parts = []
        self._complete = False

    def close(self) -> None:
        self._broken = True
        self._cancel_timer()
        if self.transport is not None:
            self.transport.close()

    # -- back-pressure -----------------------------------------------------------
    def pause_reading(self) -> None:
        # The body stream is full: the socket stays unread meanwhile.
        super().pause_reading()
        # The silence while we hold the upstream back is ours, not the upstream's.
        self._cancel_timer()

    def resume_reading(self) -> None:
        if not self._reading_paused:
            return
        super().resume_reading()
        if self._read_timeout and self._head is not None and self._timer is None:
            self._last_read = self.loop.time()
            self._timer = self.loop.call_at(self._last_read + self._read_timeout, self._on_timer)

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
        if self.loop.time() < due:
            # Data arrived since the timer was set: sleep until the new due time.
            self._timer = self.loop.call_at(due, self._on_timer)
            return
        if waiting_for_head or (self._body is not None and not self._body.is_eof()):
            self._fail_read(ResponseTimeout("upstream did not answer in time"))

    # -- reading ---------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        tunnel = self._tunnel
        if tunnel is not None:
            tunnel.feed(data)
            return
        if self._head is None:
            # Bytes nobody asked for (an idle connection): never trust it again.
            self.close()
            return
        if self._timer is not None:
            self._last_read = self.loop.time()
        self.h1.receive_data(data)
        self._pump()

    def _pump(self) -> None:
        """Turn what the pure connection has into the head future and the body."""
        h1 = self.h1
        while True:
            try:
                event = h1.next_event()
            except IncompleteMessage as exc:
                self._fail_read(ConnectionDropped(f"upstream closed the connection: {exc}"))
                return
            except RemoteProtocolError as exc:
                if self._complete:
                    # The answer is whole; what follows it (a second answer,
                    # garbage) breaks the framing: the answer stands, the
                    # connection goes.
                    self.close()
                    break
                self._fail_read(MalformedResponse(exc.detail))
                return
            if event is NEED_DATA:
                break
            kind = type(event)
            if kind is bytes:
                body = self._body
                if body is None:
                    self._parts.append(event)  # type: ignore[arg-type]
                else:
                    body.feed_data(event)  # type: ignore[arg-type]
            elif kind is ResponseHead:
                assert isinstance(event, ResponseHead)
                if event.status >= 200:
                    self._response = event
                    if event.body is not None:  # the whole body came with the head
                        self._complete = True
                        if self._timer is not None:
                            self._cancel_timer()
                        if not h1.buffered:
                            # Nothing after it: the exchange is whole (the common case).
                            head = self._head
                            if head is not None and not head.done():
                                head.set_result((event, event.body, None))
                            return
                        self._parts.append(event.body)
                    elif not event.framing:  # no body: the head ended the exchange
                        self._complete = True
                        self._cancel_timer()
                elif event.status == 101:
                    self._switch(event)
                    return
                # Informational (100 Continue, 103 Early Hints): the answer follows.
            elif event is END_OF_MESSAGE:
                self._complete = True
                self._cancel_timer()
                if self._body is not None:
                    self._body.feed_eof()
            else:
                break  # the connection closed, or nothing more belongs to this exchange
        head = self._head
        response = self._response
        if response is None or head is None or head.done():
            return
        if self._complete:
            whole = b"".join(self._parts) if len(self._parts) != 1 else self._parts[0]
            head.set_result((response, whole, None))
        else:
            stream = self._body = BodyStream(
                self.loop, _BODY_BUFFER, self.pause_reading, self.resume_reading
            )
            for part in self._parts:
                stream.feed_data(part)
            head.set_result((response, None, stream))
        self._parts = []

    def _switch(self, response: ResponseHead) -> None:
        """The upstream accepted the upgrade: the rest of the connection is the tunnel's."""
        self._cancel_timer()
        self._complete = True
        self._tunnel = Tunnel(self, self.h1.trailing_data(), self._tunnel_limit)
        head = self._head
        if head is not None and not head.done():
            head.set_result((response, None, None))

    def _fail_read(self, exc: ClientFailure) -> None:
        head = self._head
        if head is not None and not head.done():
            head.set_exception(exc)
        elif self._body is not None and not self._body.is_eof() and not self._body.exception():
            self._body.set_exception(exc)
        self.close()

    def eof_received(self) -> bool:
        if self._tunnel is not None:
            self._tunnel.feed(b"")
        elif self._head is not None:
            self.h1.receive_data(b"")
            self._pump()
        return False  # close our side too; connection_lost finishes the exchange

    def connection_lost(self, exc: BaseException | None) -> None:
        self._broken = True
        self._cancel_timer()
        if self._tunnel is not None:
            self._tunnel.lost()
        elif self._head is not None and not self.h1.their_eof:
            # A body without Content-Length or chunking ends with the connection.
            self.h1.receive_data(b"")
            self._pump()
        body = self._body
        if body is not None and not body.is_eof() and body.exception() is None:
            body.set_exception(ConnectionDropped("upstream closed mid-body"))
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
        response, self._body, self._content = head
        self.status = response.status
        self.reason = response.reason
        self.raw_headers: list[tuple[bytes, bytes]] = response.headers
        self.content_length = response.content_length
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
    def content(self) -> BodyStream:
        """The body as a stream (built on demand when it all came with the head)."""
        if self._content is None:
            loop = self._client._loop or asyncio.get_running_loop()
            self._content = BodyStream(loop, _BODY_BUFFER)
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
        length: int | None = None
        chunked = False
        if body_length is not None:
            length = body_length
        elif body is not None:
            chunked = True
        elif method in _BODYLESS_DEFAULT_LENGTH:
            length = 0
        if length and body is None:
            raise ValueError("a request body length without a body")
        # Built first: a head that cannot be sent is refused before any connection is used.
        head = request_head(
            method,
            origin.prefix + target,
            host or origin.host_header,
            headers,
            length=length,
            chunked=chunked,
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
        waiter = conn.start(
            method,
            head,
            length=length,
            chunked=chunked,
            read_timeout=read_timeout,
            head_deadline=head_deadline,
        )
        sender: asyncio.Task[None] | None = None
        if body is not None and (chunked or length):
            sender = loop.create_task(_send_body(conn, body))
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

    async def open_tunnel(
        self,
        origin: Origin,
        target: str,
        headers: Sequence[tuple[str, str]],
        *,
        limit: int,
        connect_timeout: float | None = None,
        deadline: float | None = None,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        host: str | None = None,
        max_connections: int = 0,
    ) -> tuple[ResponseHead, Tunnel | None]:
        """Send a GET asking to switch protocols (``headers`` say to what) on a connection
        of its own; return the answer's head and, when it is 101, the tunnel the
        connection has become (reading at most ``limit`` bytes ahead). Any other
        answer's connection is closed."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        head_deadline = None if deadline is None else loop.time() + deadline
        head = request_head("GET", origin.prefix + target, host or origin.host_header, headers)
        context = ssl_context if origin.tls else None
        if origin.tls and context is None:
            context = _default_context()
        key = (origin.host, origin.port, context, server_hostname)
        conn = await self._connection(
            loop, origin, key, connect_timeout, head_deadline, max_connections
        )
        waiter = conn.start(
            "GET",
            head,
            length=None,
            chunked=False,
            read_timeout=None,
            head_deadline=head_deadline,
            tunnel_limit=limit,
        )
        try:
            response, _, _ = await waiter
        except BaseException:
            conn.close()
            raise
        tunnel = conn.tunnel
        if tunnel is None:
            conn.close()
        conn.finish()
        return response, tunnel

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
                raise ConnectTimeout("connect timed out") from exc
            if isinstance(exc, OSError | ssl.SSLError):
                raise ConnectFailed(_describe(exc)) from exc
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
        except TimeoutError as exc:
            raise ConnectFailed("connection limit reached: none came free in time") from exc
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
        if not conn.next_exchange() or self._closed:
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


async def _send_body(conn: _Connection, body: AsyncIterator[bytes]) -> None:
    h1 = conn.h1
    try:
        async for chunk in body:
            if chunk:
                conn.write(h1.send_data(chunk))
                await conn.drain()
        end = h1.send_end()
    except LocalProtocolError as exc:
        # Longer than declared: the excess would be read upstream as the start
        # of another request. Shorter: the upstream would wait for the rest.
        raise ValueError(str(exc)) from exc
    if end:
        conn.write(end)


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
