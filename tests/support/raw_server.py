"""A loopback TCP (or TLS) server that speaks exactly the bytes a test writes.

For client tests that need what a real HTTP server would never send: broken
framing, a close mid-body, a stall, two answers to one request. It records
every request it read (head bytes and decoded body) and every connection it
accepted, and notices when the client closes a connection.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Received:
    """One request as the server read it."""

    connection: int  # index of the accepted connection it came on, from 0
    head: bytes  # request line and headers, up to and including the blank line
    body: bytes  # decoded (chunked framing removed)

    @property
    def request_line(self) -> str:
        return self.head.split(b"\r\n", 1)[0].decode("latin-1")

    @property
    def headers(self) -> list[tuple[str, str]]:
        lines = self.head.decode("latin-1").split("\r\n")[1:]
        out = []
        for line in lines:
            if line:
                name, _, value = line.partition(":")
                out.append((name, value.strip()))
        return out

    def header_values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


class Peer:
    """One accepted connection, seen from the server."""

    def __init__(
        self,
        server: RawServer,
        index: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.server = server
        self.index = index
        self.reader = reader
        self.writer = writer
        self.sent = 0
        self.client_closed = asyncio.Event()  # the client's end-of-stream (or reset) was seen

    async def read_head(self) -> bytes | None:
        """The next request head, or None once the client closed."""
        try:
            return await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            self.client_closed.set()
            return None

    async def read_request(self) -> Received | None:
        """The next whole request (body decoded per its framing), or None once the client closed."""
        head = await self.read_head()
        if head is None:
            return None
        partial = Received(self.index, head, b"")
        length = partial.header_values("Content-Length")
        chunked = "chunked" in [v.lower() for v in partial.header_values("Transfer-Encoding")]
        try:
            if chunked:
                body = await self._read_chunked()
            elif length:
                body = await self.reader.readexactly(int(length[0]))
            else:
                body = b""
        except (asyncio.IncompleteReadError, ConnectionError):
            self.client_closed.set()
            return None
        received = Received(self.index, head, body)
        self.server.received.append(received)
        return received

    async def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self.reader.readuntil(b"\r\n")  # no trailers from our client
                return b"".join(parts)
            parts.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)

    def send(self, data: bytes) -> None:
        self.writer.write(data)
        self.sent += len(data)

    async def send_drained(self, data: bytes) -> None:
        """Write and wait for the socket to take it (blocks while the client is not reading)."""
        self.writer.write(data)
        await self.writer.drain()
        self.sent += len(data)

    async def until_client_closes(self) -> bytes:
        """Read (and return) whatever the client still sends until it closes its end."""
        data = bytearray()
        try:
            while chunk := await self.reader.read(65536):
                data += chunk
        except ConnectionError:
            pass
        self.client_closed.set()
        return bytes(data)

    def close(self) -> None:
        self.writer.close()


Handler = Callable[[Peer], Awaitable[None]]
Answer = Callable[[Peer, Received], Awaitable[None]]


def each_request(answer: Answer) -> Handler:
    """A connection handler calling ``answer`` for every request until the client closes."""

    async def handle(peer: Peer) -> None:
        while (request := await peer.read_request()) is not None:
            await answer(peer, request)

    return handle


def response(
    body: bytes = b"ok",
    *,
    status: str = "200 OK",
    headers: Sequence[tuple[str, str]] = (),
    length: int | None = None,
) -> bytes:
    """A response with a Content-Length (``length`` overrides the real one)."""
    lines = [f"HTTP/1.1 {status}", f"Content-Length: {len(body) if length is None else length}"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class RawServer:
    """Accepts connections on 127.0.0.1 (port chosen at run time) and runs ``handler`` on each."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.peers: list[Peer] = []
        self.received: list[Received] = []
        self.port = 0

    @property
    def connections(self) -> int:
        return len(self.peers)

    def url(self, path: str = "", *, tls: bool = False) -> str:
        return f"{'https' if tls else 'http'}://127.0.0.1:{self.port}{path}"

    async def start(self, tls: ssl.SSLContext | None = None) -> RawServer:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0, ssl=tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        peer = Peer(self, len(self.peers), reader, writer)
        self.peers.append(peer)
        try:
            await self._handler(peer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            peer.client_closed.set()  # the client went away mid-answer: expected in some tests
        finally:
            writer.close()
            self._tasks.discard(task)

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for peer in self.peers:
            peer.writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None
