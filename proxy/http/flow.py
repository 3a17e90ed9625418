"""Flow control for the asyncio protocols of both edges: write drain, read pausing, streams.

:class:`FlowProtocol` is what the listener's and the upstream client's
connections share with the event loop: waiting for the transport's write
buffer to drain, and pausing the socket while what was read is not consumed.
:class:`BodyStream` holds a body's received bytes for one reader, pausing its
producer at a bound; :class:`Tunnel` is a connection after a protocol switch
(WebSocket), read and written as plain bytes with the same bound.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Callable
from typing import cast


class FlowProtocol(asyncio.Protocol):
    """A transport with write back-pressure (:meth:`drain`) and read pausing."""

    __slots__ = ("_drain_waiter", "_lost", "_reading_paused", "_write_paused", "loop", "transport")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self._write_paused = False
        self._reading_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's are not asyncio.Transport subclasses).
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._lost = True
        self.transport = None
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("connection lost"))

    # -- writing -----------------------------------------------------------------
    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("connection closed")
        transport.write(data)

    async def drain(self) -> None:
        """Wait while the transport's write buffer is over its high-water mark."""
        if not self._write_paused:
            return
        if self._lost:
            raise ConnectionResetError("connection lost")
        waiter = self._drain_waiter = self.loop.create_future()
        try:
            await waiter
        finally:
            self._drain_waiter = None

    # -- reading -----------------------------------------------------------------
    def pause_reading(self) -> None:
        if not self._reading_paused:
            self._reading_paused = True
            transport = self.transport
            if transport is not None and not transport.is_closing():
                transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused:
            self._reading_paused = False
            transport = self.transport
            if transport is not None and not transport.is_closing():
                transport.resume_reading()


class BodyStream:
    """A body's bytes as they arrive, for one reader; the producer pauses above ``limit``."""

    __slots__ = (
        "_chunks",
        "_eof",
        "_exc",
        "_loop",
        "_pause",
        "_paused",
        "_resume",
        "_size",
        "_waiter",
        "limit",
        "total_bytes",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        limit: int,
        pause: Callable[[], None] | None = None,
        resume: Callable[[], None] | None = None,
    ) -> None:
        self._loop = loop
        self.limit = limit
        self._pause = pause
        self._resume = resume
        self._paused = False
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._eof = False
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.total_bytes = 0

    # -- the producer's side -----------------------------------------------------
    def feed_data(self, data: bytes) -> None:
        if not data:
            return
        self._chunks.append(data)
        self._size += len(data)
        self.total_bytes += len(data)
        if self._size > self.limit and not self._paused and self._pause is not None:
            self._paused = True
            self._pause()
        self._wake()

    def feed_eof(self) -> None:
        self._eof = True
        self._wake()

    def set_exception(self, exc: BaseException) -> None:
        self._exc = exc
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the reader's side -------------------------------------------------------
    def exception(self) -> BaseException | None:
        return self._exc

    def is_eof(self) -> bool:
        """The producer has delivered the whole body (some of it may still be unread)."""
        return self._eof

    @property
    def buffered(self) -> int:
        return self._size

    def read_nowait(self, n: int = -1) -> bytes:
        """What is already here, up to ``n`` bytes (all of it when ``n`` < 0)."""
        if self._exc is not None:
            raise self._exc
        chunks = self._chunks
        if not chunks:
            return b""
        if n < 0 or n >= self._size:
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            chunks.clear()
        else:
            parts = []
            wanted = n
            while wanted:
                first = chunks[0]
                if len(first) <= wanted:
                    parts.append(chunks.popleft())
                    wanted -= len(first)
                else:
                    parts.append(first[:wanted])
                    chunks[0] = first[wanted:]
                    wanted = 0
            data = b"".join(parts)
        self._size -= len(data)
        if self._paused and self._size <= self.limit // 2:
            self._paused = False
            if self._resume is not None:
                self._resume()
        return data

    async def _wait(self) -> None:
        waiter = self._waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    async def _arrived(self) -> bool:
        """Wait until bytes are here (True) or the body has ended (False)."""
        while not self._chunks:
            if self._exc is not None:
                raise self._exc
            if self._eof:
                return False
            await self._wait()
        return True

    async def readany(self) -> bytes:
        """The next bytes (b"" at the end of the body)."""
        # Bytes already here need no coroutine of their own (the common case).
        if not self._chunks and not await self._arrived():
            return b""
        return self.read_nowait()

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes as soon as some are here; with ``n`` < 0, the rest of the body."""
        if n >= 0:
            if not self._chunks and not await self._arrived():
                return b""
            return self.read_nowait(n)
        parts: list[bytes] = []
        while True:
            data = await self.readany()
            if not data:
                return b"".join(parts)
            parts.append(data)

    async def iter_any(self) -> AsyncIterator[bytes]:
        while True:
            data = await self.readany()
            if not data:
                return
            yield data


class Tunnel:
    """A connection after a protocol switch: bytes both ways, reading bounded and paused.

    The owner's protocol feeds received bytes with :meth:`feed` (``b""`` at
    the peer's end of stream) and reports the loss of the connection with
    :meth:`lost`; the relay reads with :meth:`read` and writes with
    :meth:`write`/:meth:`drain`.
    """

    __slots__ = ("_flow", "_stream")

    def __init__(self, flow: FlowProtocol, trailing: bytes, limit: int) -> None:
        self._flow = flow
        self._stream = BodyStream(flow.loop, limit, flow.pause_reading, flow.resume_reading)
        self._stream.feed_data(trailing)

    def feed(self, data: bytes) -> None:
        if data:
            self._stream.feed_data(data)
        else:
            self._stream.feed_eof()

    def lost(self) -> None:
        self._stream.feed_eof()

    async def read(self) -> bytes:
        """The next bytes received; b"" once the peer has closed."""
        return await self._stream.readany()

    def write(self, data: bytes) -> None:
        self._flow.write(data)

    async def drain(self) -> None:
        await self._flow.drain()

    @property
    def buffered(self) -> int:
        return self._stream.buffered

    def close(self) -> None:
        transport = self._flow.transport
        if transport is not None:
            transport.close()

    def abort(self) -> None:
        transport = self._flow.transport
        if transport is not None:
            transport.abort()
