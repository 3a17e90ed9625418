"""WebSockets on the listener's own connections: limits and timeouts that still apply.

Through a real gatehouse process: the relay's message limit, its idle timeout,
the backend's timeouts on the upstream handshake, the listener's timeouts on a
connection whose upgrade was declined, and the drain deadline.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time

import aiohttp
import pytest

from tests.conftest import GatehouseFactory
from tests.peers.websocket import CountingUpstream
from tests.support.gatehouse import public_route

MIB = 2**20


def ws_routes() -> list[dict[str, object]]:
    return [public_route("ws", "/ws", "up", websocket=True), public_route("all", "/", "up")]


async def test_a_message_over_the_limit_closes_both_sides_and_is_audited(
    gatehouse: GatehouseFactory, counting_upstream: CountingUpstream
) -> None:
    gh = gatehouse(
        backends={"up": {"urls": [counting_upstream.url]}},
        routes=ws_routes(),
        listen={"websocket_max_message": "1MiB"},
    )
    async with aiohttp.ClientSession() as s, s.ws_connect(gh.url + "/ws") as ws:
        await ws.send_bytes(b"a" * (MIB - 10))
        assert (await ws.receive_str()) == str(MIB - 10)  # under the limit: relayed whole
        await ws.send_bytes(b"b" * (MIB + 10))
        closing = await ws.receive()
        assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == 1009
    deadline = time.monotonic() + 5
    while not counting_upstream.closes and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert counting_upstream.closes == [1001]  # the upstream is told the proxy went away
    record = gh.wait_audit(1)[-1]
    assert (record["status"], record["reason"]) == (101, "websocket_message_too_large")
    assert MIB - 10 <= record["bytes_in"] <= 2 * MIB


async def test_no_frame_either_way_for_the_idle_timeout_closes_both_sides(
    gatehouse: GatehouseFactory, counting_upstream: CountingUpstream
) -> None:
    gh = gatehouse(
        backends={"up": {"urls": [counting_upstream.url]}},
        routes=ws_routes(),
        listen={"websocket_idle_timeout": "1s"},
    )
    async with aiohttp.ClientSession() as s, s.ws_connect(gh.url + "/ws", autoping=False) as ws:
        await ws.send_str("hi")
        assert (await ws.receive_str()) == "2"
        opened = time.monotonic()
        closing = await asyncio.wait_for(ws.receive(), 10)
        assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == 1001
        assert 0.8 < time.monotonic() - opened < 4
    record = gh.wait_audit(1)[-1]
    assert (record["status"], record["reason"]) == (101, "websocket_idle_timeout")


async def test_an_upstream_that_never_answers_the_upgrade_is_a_504_within_the_backend_timeouts(
    gatehouse: GatehouseFactory,
) -> None:
    silent = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    try:
        gh = gatehouse(
            backends={
                "up": {
                    "urls": [f"http://127.0.0.1:{silent.getsockname()[1]}"],
                    "timeouts": {"total": "1s"},
                }
            },
            routes=ws_routes(),
        )
        started = time.monotonic()
        async with aiohttp.ClientSession() as s:
            with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                await s.ws_connect(gh.url + "/ws")
        assert err.value.status == 504
        assert time.monotonic() - started < 4
        assert gh.wait_audit(1)[-1]["reason"] == "upstream_timeout"
    finally:
        silent.close()


async def test_the_header_timeout_still_applies_after_a_declined_upgrade(
    gatehouse: GatehouseFactory, upstream_url: str
) -> None:
    gh = gatehouse(
        backends={"up": {"urls": [upstream_url]}},
        routes=[public_route("all", "/", "up")],  # no websocket route: the upgrade is declined
        listen={"header_timeout": "1s"},
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", gh.port)
    writer.write(
        b"GET /echo HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    await reader.readexactly(length)
    # Then a slowloris on the same connection: still timed out.
    writer.write(b"GET /echo HTTP/1.1\r\nHost: a\r\n")
    started = time.monotonic()
    for _ in range(4):
        await asyncio.sleep(0.3)
        writer.write(b"X-Slow: 1\r\n")
    answer = await asyncio.wait_for(reader.read(), 5)
    assert answer.startswith(b"HTTP/1.1 408")
    assert time.monotonic() - started < 4
    writer.close()


async def test_an_open_websocket_at_the_drain_deadline_is_closed_going_away_and_audited_once(
    gatehouse: GatehouseFactory, counting_upstream: CountingUpstream
) -> None:
    gh = gatehouse(
        backends={"up": {"urls": [counting_upstream.url]}},
        routes=ws_routes(),
        extra={"shutdown": {"drain_timeout": "1s"}},
    )
    trace = os.urandom(16).hex()
    headers = {"traceparent": f"00-{trace}-{os.urandom(8).hex()}-01"}
    async with aiohttp.ClientSession() as s, s.ws_connect(gh.url + "/ws", headers=headers) as ws:
        await ws.send_str("hi")
        assert (await ws.receive_str()) == "2"
        gh.signal(signal.SIGTERM)
        closing = await asyncio.wait_for(ws.receive(), 10)
        assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == 1001
    assert await asyncio.to_thread(gh.process.wait, 20) == 0
    mine = [r for r in gh.audit_records() if r["trace_id"] == trace]
    assert len(mine) == 1
    assert (mine[0]["status"], mine[0]["reason"]) == (101, "shutting_down")
