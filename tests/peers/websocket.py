"""A WebSocket upstream for tests: counts what it receives and keeps none of it."""

from __future__ import annotations

import asyncio

from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

from proxy.upstream.websocket import accept_token


class CountingUpstream:
    """A WebSocket upstream that counts what it receives and keeps none of it.

    For every finished message it answers ``"<bytes of the message>"``; a
    ``"hold"`` text message makes it stop reading (a slow upstream).
    """

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.closes: list[int] = []
        self.handshakes = 0
        # What a held connection waits on. Referenced from here, so a holding
        # handler is never garbage: asyncio keeps only weak references to tasks, and
        # a task waiting on an Event nothing else holds was collected mid-test (its
        # finally closed the socket, and the proxy saw the upstream reset).
        self.held = asyncio.Event()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            key = b""
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"sec-websocket-key":
                    key = value.strip()
            self.handshakes += 1
            writer.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + accept_token(key) + b"\r\n\r\n"
            )
            ws = Connection(ConnectionType.SERVER)
            size = 0
            while True:
                data = await reader.read(65536)
                ws.receive_data(data or None)
                for event in ws.events():
                    if isinstance(event, BytesMessage | TextMessage):
                        size += len(event.data)
                        if event.message_finished:
                            if event.data == "hold":
                                await self.held.wait()
                            writer.write(ws.send(TextMessage(data=str(size))))
                            size = 0
                    elif isinstance(event, Ping):
                        writer.write(ws.send(event.response()))
                    elif isinstance(event, CloseConnection):
                        self.closes.append(event.code)
                        if data:
                            writer.write(ws.send(event.response()))
                        return
                await writer.drain()
                if not data:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
