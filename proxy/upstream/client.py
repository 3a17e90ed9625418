"""The upstream HTTP/1.1 client: pooled keep-alive connections on asyncio protocols.

Why not ``aiohttp.ClientSession``: it builds a ``ClientRequest`` and a
``ClientResponse``, merges default headers, resolves cookies and redirects and
runs a trace machinery on every request, and it was the single largest cost
of the proxy's request path (about half the CPU of a pass-through). A proxy
needs none of it: the request head is already final, so this client writes it
with one ``transport.write`` and parses the answer with aiohttp's own C
parser (llhttp, the same parser and the same limits as before).

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

from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_parser import HttpResponseParser
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader

from proxy.http.headers import serialise_head
from proxy.upstream.retry import Failure

_READ_LIMIT = 2**16
_MAX_LINE = 8190
_MAX_HEADERS = 128
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


class _Connection(BaseProtocol):
    """One upstream connection, carrying one exchange at a time."""

    __slots__ = (
        "_broken",
        "_head",
        "_head_deadline",
        "_last_read",
        "_payload",
        "_read_timeout",
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
        self._head: asyncio.Future[tuple[Any, StreamReader]] | None = None
        self._payload: StreamReader | None = None
        self._read_timeout: float | None = None
        self._head_deadline: float | None = None
        self._last_read = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._broken = False

    # -- the exchange --------------------------------------------------------
    def start(
        self, method: str, head: bytes, read_timeout: float | None, head_deadline: float | None
    ) -> asyncio.Future[tuple[Any, StreamReader]]:
        """Write the request head; the future resolves with the response's (message, body)."""
        assert self.transport is not None
        self._parser = HttpResponseParser(
            self,
            self._loop,
            _READ_LIMIT,
            max_line_size=_MAX_LINE,
            max_field_size=_MAX_LINE,
            max_headers=_MAX_HEADERS,
            response_with_body=method != "HEAD",
            read_until_eof=True,
            auto_decompress=False,
        )
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
        payload = self._payload
        return (
            not self._broken
            and self.transport is not None
            and not self.transport.is_closing()
            and self._head is not None
            and self._head.done()
            and not self._head.cancelled()
            and self._head.exception() is None
            and payload is not None
            and payload.is_eof()
            and payload.exception() is None
            and not self._reading_paused
        )

    def finish(self) -> None:
        """The exchange is over (reused or not): forget its state."""
        self._cancel_timer()
        self._head = None
        self._payload = None
        self._parser = None

    def close(self) -> None:
        self._broken = True
        self._cancel_timer()
        if self.transport is not None:
            self.transport.close()

    # -- back-pressure -----------------------------------------------------------
    def pause_reading(self) -> None:
        super().pause_reading()
        # The silence while we hold the upstream back is ours, not the upstream's.
        self._cancel_timer()

    def resume_reading(self, resume_parser: bool = True) -> None:
        if not self._reading_paused:
            return  # the body reader calls this after every read; only a pause needs undoing
        super().resume_reading(resume_parser)
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

    # -- asyncio.Protocol ------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:
            # Bytes nobody asked for (an idle connection): never trust it again.
            self.close()
            return
        if data:
            self._last_read = self._loop.time()
        try:
            messages, _upgraded, _tail = parser.feed_data(data)
        except Exception:
            self._fail_read(MalformedResponse("malformed response from upstream"))
            return
        for message, payload in messages:
            code = message.code
            if 100 <= code < 200:
                if code == 101:
                    self._fail_read(MalformedResponse("unexpected protocol switch"))
                    return
                continue  # informational (100 Continue, 103 Early Hints): the answer follows
            head = self._head
            if head is None or head.done():
                # A second answer to one request: the framing cannot be trusted.
                self._fail_read(MalformedResponse("unsolicited response from upstream"))
                return
            if message.should_close or message.upgrade:
                self._broken = True
            if code in (204, 304):
                payload = EMPTY_PAYLOAD
            self._payload = payload
            if payload.is_eof() and self._timer is not None:
                self._cancel_timer()
            head.set_result((message, payload))

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
        parser = self._parser
        self._parser = None
        if parser is not None:
            try:
                # Completes a body delimited by the close; raises on a cut one.
                parser.feed_eof()
            except Exception:
                payload = self._payload
                if payload is not None and not payload.is_eof() and payload.exception() is None:
                    payload.set_exception(ConnectionDropped("upstream closed mid-body"))
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
        "_client",
        "_conn",
        "_sender",
        "content",
        "content_length",
        "raw_headers",
        "reason",
        "status",
    )

    def __init__(
        self,
        message: Any,
        payload: StreamReader,
        conn: _Connection,
        client: UpstreamClient,
        sender: asyncio.Task[None] | None,
    ) -> None:
        self.status: int = message.code
        self.reason: str = message.reason
        self.raw_headers: tuple[tuple[bytes, bytes], ...] = message.raw_headers
        length = message.headers.get("Content-Length")
        self.content_length = int(length) if length is not None and length.isdigit() else None
        self.content = payload
        self._conn: _Connection | None = conn
        self._client = client
        self._sender = sender

    @property
    def complete(self) -> bool:
        """The whole body is already buffered (read it with ``content.read_nowait()``)."""
        return self.content.is_eof()

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

        conn = await self._connection(
            loop,
            origin,
            connect_timeout,
            head_deadline,
            ssl_context,
            server_hostname,
            max_connections,
        )
        waiter = conn.start(method, head, read_timeout, head_deadline)
        sender: asyncio.Task[None] | None = None
        if body is not None:
            sender = loop.create_task(_send_body(conn, body, length=body_length))
            sender.add_done_callback(functools.partial(_sender_done, conn))
        try:
            message, payload = await waiter
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
        return UpstreamResponse(message, payload, conn, self, sender)

    async def _connection(
        self,
        loop: asyncio.AbstractEventLoop,
        origin: Origin,
        connect_timeout: float | None,
        head_deadline: float | None,
        ssl_context: ssl.SSLContext | None,
        server_hostname: str | None,
        limit: int = 0,
    ) -> _Connection:
        context = ssl_context if origin.tls else None
        if origin.tls and context is None:
            context = _default_context()
        key = (origin.host, origin.port, context, server_hostname)
        while True:
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
            if not limit or self._open.get(key, 0) < limit:
                break
            await self._wait_for_room(loop, key, head_deadline)
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
