"""Bundled HTTP/1.1 load generator, used when ``wrk`` is not installed.

``python -m bench.loadgen URL -c 32 -d 5 [-H 'Name: value'] [--insecure]`` prints one
JSON object. Closed loop: each of N keep-alive connections sends a request, waits for
the whole response, records the latency, and sends the next (no pipelining), for a
fixed duration. Raw asyncio protocols keep the generator's own cost per request low.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import ssl
import sys
import time
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import urlsplit

from bench.histogram import Histogram


@dataclass
class Stats:
    requests: int = 0
    status_errors: int = 0
    socket_errors: int = 0
    reconnects: int = 0
    hist: Histogram = field(default_factory=Histogram)


class _ParseError(Exception):
    pass


class _Response:
    """Incremental HTTP/1.1 response framing: Content-Length, chunked, or none (204/304)."""

    __slots__ = ("body_left", "buf", "chunked", "close", "head_done", "status")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.reset()

    def reset(self) -> None:
        self.head_done = False
        self.status = 0
        self.body_left = 0
        self.chunked = False
        self.close = False

    def feed(self, data: bytes) -> bool:
        """Add bytes; True once a whole response is in (extra bytes stay buffered)."""
        self.buf += data
        return self._advance()

    def _advance(self) -> bool:
        buf = self.buf
        if not self.head_done:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > 65536:
                    raise _ParseError("response head too large")
                return False
            head = bytes(buf[:end]).lower()
            del buf[: end + 4]
            if not head.startswith(b"http/1."):
                raise _ParseError("not an HTTP/1.x response")
            self.status = int(head[9:12])
            self.head_done = True
            self.close = b"\r\nconnection: close" in head
            if self.status in (204, 304) or 100 <= self.status < 200:
                self.body_left = 0
            elif b"\r\ntransfer-encoding: chunked" in head:
                self.chunked = True
                self.body_left = -1
            else:
                i = head.find(b"\r\ncontent-length:")
                if i < 0:
                    raise _ParseError("response without length")
                j = head.find(b"\r\n", i + 2)
                self.body_left = int(head[i + 17 : j if j > 0 else None])
        if self.chunked:
            return self._advance_chunked()
        if len(buf) < self.body_left:
            return False
        del buf[: self.body_left]
        return True

    def _advance_chunked(self) -> bool:
        buf = self.buf
        while True:
            if self.body_left > 0:  # inside chunk data (+ its CRLF)
                if len(buf) < self.body_left:
                    return False
                del buf[: self.body_left]
                self.body_left = -1
            line_end = buf.find(b"\r\n")
            if line_end < 0:
                return False
            size = int(bytes(buf[:line_end]).split(b";", 1)[0], 16)
            if size == 0:
                trailer_end = buf.find(b"\r\n\r\n", line_end)
                if trailer_end == line_end:
                    del buf[: line_end + 4]
                    return True
                if trailer_end < 0:
                    return False
                del buf[: trailer_end + 4]
                return True
            del buf[: line_end + 2]
            self.body_left = size + 2


class _Conn(asyncio.Protocol):
    def __init__(self, gen: _Generator) -> None:
        self.gen = gen
        self.resp = _Response()
        self.transport: asyncio.Transport | None = None
        self.started = 0.0
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        self.started = time.perf_counter()
        self.transport.write(self.gen.request)

    def data_received(self, data: bytes) -> None:
        gen = self.gen
        try:
            done = self.resp.feed(data)
            while done:
                now = time.perf_counter()
                st = gen.stats
                if now >= gen.measure_from:
                    st.requests += 1
                    st.hist.record_us(int((now - self.started) * 1e6))
                    if self.resp.status >= 400:
                        st.status_errors += 1
                must_close = self.resp.close
                self.resp.reset()
                if now >= gen.deadline or must_close:
                    self._close()
                    return
                self._send()
                done = self.resp._advance() if self.resp.buf else False
        except (_ParseError, ValueError):
            gen.stats.socket_errors += 1
            self._close()

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and time.perf_counter() < self.gen.deadline:
            self.gen.stats.socket_errors += 1
        if not self.closed.done():
            self.closed.set_result(None)


class _Generator:
    def __init__(self, url: str, headers: list[tuple[str, str]], insecure: bool) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | None = None
        if parts.scheme == "https":
            self.ssl = ssl.create_default_context()
            if insecure:
                self.ssl.check_hostname = False
                self.ssl.verify_mode = ssl.CERT_NONE
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [f"GET {target} HTTP/1.1", f"Host: {parts.netloc}"]
        lines += [f"{k}: {v}" for k, v in headers]
        self.request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.stats = Stats()
        self.measure_from = 0.0
        self.deadline = 0.0

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while time.perf_counter() < self.deadline:
            try:
                _, conn = await loop.create_connection(
                    lambda: _Conn(self), self.host, self.port, ssl=self.ssl
                )
            except OSError:
                self.stats.socket_errors += 1
                await asyncio.sleep(0.01)
                continue
            await conn.closed
            if time.perf_counter() < self.deadline:
                self.stats.reconnects += 1

    async def run(self, connections: int, duration: float, warmup: float) -> Stats:
        now = time.perf_counter()
        self.measure_from = now + warmup
        self.deadline = self.measure_from + duration
        workers = [asyncio.create_task(self._worker()) for _ in range(connections)]
        # A response that never comes must not hang the run past its deadline.
        _, pending = await asyncio.wait(workers, timeout=warmup + duration + 5.0)
        for t in pending:
            t.cancel()
        return self.stats


def run_load(
    url: str,
    *,
    connections: int,
    duration: float,
    warmup: float = 0.0,
    headers: list[tuple[str, str]] | None = None,
    insecure: bool = True,
) -> dict[str, object]:
    """Run in this process (the harness calls it through ``python -m bench.loadgen``)."""
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    gen = _Generator(url, headers or [], insecure)
    st = asyncio.run(gen.run(connections, duration, warmup))
    return {
        "requests": st.requests,
        "duration": duration,
        "rps": st.requests / duration if duration > 0 else 0.0,
        "p50_ms": st.hist.percentile_us(50) / 1000,
        "p99_ms": st.hist.percentile_us(99) / 1000,
        "status_errors": st.status_errors,
        "socket_errors": st.socket_errors,
        "reconnects": st.reconnects,
    }


def parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"header must be 'Name: value', got {text!r}")
    return name.strip(), value.strip()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    p.add_argument("url")
    p.add_argument("-c", "--connections", type=int, default=32)
    p.add_argument("-d", "--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=0.0)
    p.add_argument("-H", "--header", type=parse_header, action="append", default=[])
    p.add_argument("--insecure", action="store_true", help="skip TLS verification (self-signed)")
    a = p.parse_args(argv)
    result = run_load(
        a.url,
        connections=a.connections,
        duration=a.duration,
        warmup=a.warmup,
        headers=a.header,
        insecure=a.insecure,
    )
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
