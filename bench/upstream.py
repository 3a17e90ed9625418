"""The benchmark's upstream when nginx is missing: a preformatted ~50-byte JSON response.

``python -m bench.upstream PORT`` serves every request on 127.0.0.1:PORT with the
same bytes, HTTP/1.1 keep-alive. It frames request bodies by Content-Length only
(the benchmark sends bodiless GETs); anything it cannot frame closes the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from typing import cast

BODY = b'{"ok":true,"service":"bench-upstream","n":123456}\n'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: " + str(len(BODY)).encode() + b"\r\n"
    b"\r\n" + BODY
)
_CLOSE_RESPONSE = RESPONSE.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)


def _content_length(head: bytes) -> int | None:
    """Body length of a request head (lower-cased); None when it cannot be framed here."""
    if b"\r\ntransfer-encoding:" in head:
        return None
    i = head.find(b"\r\ncontent-length:")
    if i < 0:
        return 0
    j = head.find(b"\r\n", i + 2)
    try:
        return int(head[i + 17 : j if j > 0 else None])
    except ValueError:
        return None


class UpstreamProtocol(asyncio.Protocol):
    __slots__ = ("buf", "transport")

    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        buf = self.buf + data if self.buf else data
        out: list[bytes] = []
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buf[:end].lower()
            length = _content_length(head)
            if length is None:
                self.transport.close()
                return
            total = end + 4 + length
            if len(buf) < total:
                break
            buf = buf[total:]
            if b"\r\nconnection: close" in head:
                out.append(_CLOSE_RESPONSE)
                self.transport.write(b"".join(out))
                self.transport.close()
                return
            out.append(RESPONSE)
        if out:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
        if len(buf) > 1 << 20:
            self.transport.close()
            return
        self.buf = buf


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(UpstreamProtocol, "127.0.0.1", port, backlog=4096)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(serve(int(args[0])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
