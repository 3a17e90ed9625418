"""An upstream that breaks HTTP framing: 502, and its connection is never reused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.conftest import GatehouseFactory
from tests.support.gatehouse import public_route

GOOD = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"
# Both Content-Length and Transfer-Encoding: a smuggling vector (RFC 9112 §6.1).
SMUGGLED = (
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsmuggl"
)
BAD_STATUS = b"HTTP/1.1 OK-ish\r\n\r\n"


class RawUpstream:
    """Answers the very first request with ``first``, every later one with GOOD."""

    def __init__(self, first: bytes) -> None:
        self.first = first
        self.requests = 0
        self.connections = 0  # connections that carried at least one request
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        counted = False
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                if not counted:
                    self.connections += 1
                    counted = True
                self.requests += 1
                writer.write(self.first if self.requests == 1 else GOOD)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])


@pytest.fixture(params=[SMUGGLED, BAD_STATUS], ids=["cl_and_te", "bad_status_line"])
async def raw_upstream(request: pytest.FixtureRequest) -> AsyncIterator[RawUpstream]:
    upstream = RawUpstream(request.param)
    upstream.server = await asyncio.start_server(upstream.handle, "127.0.0.1", 0)
    yield upstream
    upstream.server.close()
    await upstream.server.wait_closed()


async def test_framing_error_is_502_and_the_connection_is_discarded(
    gatehouse: GatehouseFactory, raw_upstream: RawUpstream
) -> None:
    gh = gatehouse(
        backends={"raw": {"urls": [f"http://127.0.0.1:{raw_upstream.port}"]}},
        routes=[public_route("raw", "/", "raw")],
    )
    async with aiohttp.ClientSession() as s:
        async with s.get(gh.url + "/first") as r:
            assert r.status == 502
            assert (await r.json())["error"] == "upstream_protocol_error"
        for _ in range(3):
            async with s.get(gh.url + "/next") as r:
                assert r.status == 200
                assert await r.read() == b"ok"
    # The broken connection was closed; the next requests used a fresh one.
    assert raw_upstream.connections == 2
    records = gh.wait_audit(4)
    assert records[0]["reason"] == "upstream_protocol_error"
