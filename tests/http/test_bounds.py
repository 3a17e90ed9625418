"""Every buffer has a bound, and reading stops at it: RSS stays flat under a flood.

Each test floods a real gatehouse through real sockets for a few seconds with
what one connection could make it hold (pipelined requests, bytes behind an
upgrade, an endless chunk extension, trailer section or header line, a huge
WebSocket message, a WebSocket to a stalled upstream) and checks that the
proxy's RSS stays flat and that it stopped reading (the sender could push
only socket buffers' worth) or refused the input at its limit.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time

import aiohttp
import pytest
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, TextMessage

from proxy.upstream.websocket import accept_token
from tests.conftest import GatehouseFactory
from tests.peers.websocket import CountingUpstream
from tests.support.gatehouse import Gatehouse, public_route
from tests.support.rss import MIB, PeakRss

RSS_BUDGET = 16 * MIB
# What the kernel's socket buffers on loopback can hold between a paused
# reader and a blocked writer, with room to spare; far below a real flood.
SENT_BUDGET = 48 * MIB
FLOOD_SECONDS = 3.0


async def flood(gh: Gatehouse, prefix: bytes, filler: bytes) -> tuple[int, bytes, PeakRss]:
    """Send ``prefix`` then ``filler`` over and over for FLOOD_SECONDS (or until the
    proxy closes); what was sent, what came back, and the proxy's RSS meanwhile."""
    await warm_up(gh)
    reader, writer = await asyncio.open_connection("127.0.0.1", gh.port)
    answer = bytearray()

    async def collect() -> None:
        # Read all along: an answer sent early must not be lost to a later reset.
        try:
            while chunk := await reader.read(65536):
                answer.extend(chunk)
        except ConnectionError:
            pass

    collector = asyncio.ensure_future(collect())
    sent = 0
    with PeakRss(gh.process.pid) as rss:
        writer.write(prefix)
        deadline = time.monotonic() + FLOOD_SECONDS
        try:
            while time.monotonic() < deadline and not collector.done():
                writer.write(filler)
                sent += len(filler)
                try:
                    await asyncio.wait_for(writer.drain(), deadline - time.monotonic())
                except TimeoutError:
                    break  # the proxy stopped reading: the kernel's buffers are full
        except ConnectionError:
            pass  # refused and closed
    writer.transport.abort()
    collector.cancel()
    await asyncio.gather(collector, return_exceptions=True)
    return sent, bytes(answer), rss


async def warm_up(gh: Gatehouse) -> None:
    """One ordinary request first, so the baseline includes the code paths and pools."""
    async with aiohttp.ClientSession() as s, s.get(gh.url + "/echo") as r:
        await r.read()


@pytest.fixture
def gh(gatehouse: GatehouseFactory, upstream_url: str) -> Gatehouse:
    return gatehouse(
        backends={"up": {"urls": [upstream_url], "timeouts": {"total": "30s", "read": "30s"}}},
        routes=[public_route("ws", "/ws", "up", websocket=True), public_route("all", "/", "up")],
    )


def assert_refused(gh: Gatehouse, answer: bytes, status: int, reason: str) -> None:
    """Refused at the bound: the audit record says so (the answer itself may be lost
    to the reset that ends a connection still flooding after the refusal)."""
    record = gh.wait_audit(2)[-1]
    assert (record["status"], record["reason"]) == (status, reason), record
    if answer:
        assert answer.startswith(b"HTTP/1.1 %d" % status), answer[:100]


def assert_bounded(sent: int, rss: PeakRss) -> None:
    assert rss.growth < RSS_BUDGET, f"RSS grew by {rss.growth_mib:.1f} MiB"
    assert sent < SENT_BUDGET, f"{sent / MIB:.0f} MiB accepted: reading never paused"


async def test_requests_pipelined_behind_a_slow_one_pause_reading_at_the_bound(
    gh: Gatehouse,
) -> None:
    sent, _, rss = await flood(
        gh,
        b"GET /slow?seconds=10 HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n" * 2048,
    )
    assert_bounded(sent, rss)


async def test_bytes_after_an_upgrade_request_behind_a_slow_one_pause_reading_at_the_bound(
    gh: Gatehouse,
) -> None:
    # The probe that grew the old edge from 41 to 441 MiB in 5 s.
    upgrade = (
        b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    sent, _, rss = await flood(
        gh, b"GET /slow?seconds=10 HTTP/1.1\r\nHost: a\r\n\r\n" + upgrade, b"\x00" * 65536
    )
    assert_bounded(sent, rss)


async def test_an_endless_chunk_extension_is_refused_at_its_limit(gh: Gatehouse) -> None:
    sent, answer, rss = await flood(
        gh,
        b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1;ext=",
        b"x" * 65536,
    )
    assert_refused(gh, answer, 400, "malformed_request")
    assert_bounded(sent, rss)


async def test_a_100_kb_chunk_extension_gets_400(gh: Gatehouse) -> None:
    await warm_up(gh)
    reader, writer = await asyncio.open_connection("127.0.0.1", gh.port)
    writer.write(
        b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"1;ext=" + b"x" * 100_000 + b"\r\na\r\n0\r\n\r\n"
    )
    answer = await asyncio.wait_for(reader.read(65536), 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 400") and b"malformed_request" in answer


async def test_an_endless_trailer_section_is_refused_at_its_limit(gh: Gatehouse) -> None:
    sent, answer, rss = await flood(
        gh,
        b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n",
        b"X-Trailer: " + b"t" * 65000 + b"\r\n",
    )
    assert_refused(gh, answer, 431, "headers_too_large")
    assert_bounded(sent, rss)


async def test_an_endless_header_line_is_refused_at_the_head_limit(gh: Gatehouse) -> None:
    sent, answer, rss = await flood(
        gh, b"GET /echo HTTP/1.1\r\nHost: a\r\nX-Endless: ", b"a" * 65536
    )
    assert_refused(gh, answer, 431, "headers_too_large")
    assert_bounded(sent, rss)


async def test_endless_header_fields_are_refused_at_the_head_limit(gh: Gatehouse) -> None:
    sent, answer, rss = await flood(gh, b"GET /echo HTTP/1.1\r\nHost: a\r\n", b"X-A: b\r\n" * 8192)
    assert_refused(gh, answer, 431, "headers_too_large")
    assert_bounded(sent, rss)


async def open_websocket(
    gh: Gatehouse,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, Connection]:
    """A WebSocket client on a raw connection: wsproto writes its frames one by one."""
    key = base64.b64encode(os.urandom(16))
    reader, writer = await asyncio.open_connection("127.0.0.1", gh.port)
    writer.write(
        b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n\r\n"
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101") and accept_token(key) in head
    return reader, writer, Connection(ConnectionType.CLIENT)


async def test_a_huge_websocket_message_is_relayed_in_frames_with_flat_memory(
    gatehouse: GatehouseFactory, counting_upstream: CountingUpstream
) -> None:
    size = 256 * MIB
    gh = gatehouse(
        backends={"up": {"urls": [counting_upstream.url]}},
        routes=[public_route("ws", "/ws", "up", websocket=True)],
        listen={"websocket_max_message": "1GiB"},
    )
    await asyncio.sleep(0)
    reader, writer, ws = await open_websocket(gh)
    block = b"z" * MIB
    with PeakRss(gh.process.pid) as rss:
        # One message in 1 MiB frames: the proxy relays each, never holding the whole.
        for i in range(size // len(block)):
            last = i == size // len(block) - 1
            writer.write(ws.send(BytesMessage(data=block, message_finished=last)))
            await writer.drain()
        ws.receive_data(await asyncio.wait_for(reader.read(100), 30))
        (answer,) = [e for e in ws.events() if isinstance(e, TextMessage)]
    writer.close()
    assert answer.data == str(size)  # the upstream counted the whole message
    assert rss.growth < RSS_BUDGET, f"RSS grew by {rss.growth_mib:.1f} MiB"


async def test_a_websocket_flooding_a_stalled_upstream_pauses_reading_at_the_bound(
    gatehouse: GatehouseFactory, counting_upstream: CountingUpstream
) -> None:
    gh = gatehouse(
        backends={"up": {"urls": [counting_upstream.url]}},
        routes=[public_route("ws", "/ws", "up", websocket=True)],
        listen={"websocket_max_message": "1GiB"},
    )
    _, writer, ws = await open_websocket(gh)
    writer.write(ws.send(TextMessage(data="hold")))  # the upstream stops reading after this
    block = b"f" * MIB
    sent = 0
    with PeakRss(gh.process.pid) as rss:
        deadline = time.monotonic() + FLOOD_SECONDS
        while time.monotonic() < deadline:
            writer.write(ws.send(BytesMessage(data=block, message_finished=False)))
            sent += len(block)
            try:
                await asyncio.wait_for(writer.drain(), deadline - time.monotonic())
            except TimeoutError:
                break
    writer.transport.abort()
    assert_bounded(sent, rss)
