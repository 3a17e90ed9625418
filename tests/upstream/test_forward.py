"""Forwarding per RFC 9110/9112 through a real gatehouse process to a real FastAPI upstream."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import os
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from yarl import URL

from tests.conftest import GatehouseFactory
from tests.support.gatehouse import Gatehouse, public_route, start_gatehouse
from tests.support.net import refused_port


@pytest.fixture(scope="module")
def gh(upstream_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gatehouse]:
    workdir = tmp_path_factory.mktemp("forward")
    # The dead backend's port stays held, so no other process can start answering there.
    with refused_port() as down_port:
        proc = start_gatehouse(
            workdir,
            backends={
                "up": {
                    "urls": [upstream_url],
                    "timeouts": {"connect": "1s", "read": "2s", "total": "2s"},
                },
                "down": {"urls": [f"http://127.0.0.1:{down_port}"]},
            },
            routes=[
                public_route("small", "/echo/small", "up", max_body="1KiB"),
                public_route("slow", "/slow", "up", timeout="500ms"),
                public_route("down", "/down", "down"),
                public_route("host", "/echo/host", "up", preserve_host=True),
                public_route(
                    "headers",
                    "/echo/headers",
                    "up",
                    set_request_headers={"X-Env": "test"},
                    remove_request_headers=["X-Debug"],
                ),
                public_route("ws", "/ws", "up", websocket=True),
                public_route("all", "/", "up", max_body="2GiB"),
            ],
        )
        yield proc
        proc.stop()


async def get_json(url: str, **kwargs: Any) -> tuple[int, dict[str, str], Any]:
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        method = kwargs.pop("method", "GET")
        # encoded=True: send the target exactly as written, no client-side clean-up.
        async with s.request(method, URL(url, encoded=True), **kwargs) as r:
            body = await r.read()
            try:
                data = await r.json(content_type=None) if body else None
            except ValueError:
                data = body
            return r.status, {k.lower(): v for k, v in r.headers.items()}, data


def upstream_headers(data: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in data["headers"]:
        out.setdefault(name, value)
    return out


async def test_upstream_receives_exactly_the_canonical_path_and_raw_query(gh: Gatehouse) -> None:
    status, _, data = await get_json(gh.url + "/echo/a/./b/../c//d?q=%2F..%2F&x=1")
    assert status == 200
    assert data["raw_path"] == "/echo/a/c/d"
    assert data["query"] == "q=%2F..%2F&x=1"


async def test_unreserved_escapes_are_decoded_before_forwarding(gh: Gatehouse) -> None:
    status, _, data = await get_json(gh.url + "/echo/%61%62/%7e?k=v")
    assert status == 200 and data["raw_path"] == "/echo/ab/~"


async def test_connection_named_and_hop_by_hop_headers_do_not_reach_the_upstream(
    gh: Gatehouse,
) -> None:
    status, headers, data = await get_json(
        gh.url + "/echo",
        headers={
            "Connection": "keep-alive, X-Drop-Me, X-Forwarded-For",
            "X-Drop-Me": "1",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "X-Keep": "yes",
            "X_Gatehouse_Subject": "admin",
            "X-Forwarded-Email": "boss@example.com",
            "Authorization": "Bearer abc",
            "Cookie": "__Host-gatehouse=sess; app=1",
        },
    )
    seen = upstream_headers(data)
    assert status == 200
    assert "x-drop-me" not in seen and "keep-alive" not in seen and "te" not in seen
    assert seen["x-keep"] == "yes"
    assert "x_gatehouse_subject" not in seen and "x-forwarded-email" not in seen
    assert "authorization" not in seen
    assert seen["cookie"] == "app=1"
    # The proxy's own forwarding header survives the client's Connection token.
    assert seen["x-forwarded-for"] == "127.0.0.1"
    # And the upstream's Connection-named response header does not reach the client.
    assert "x-upstream-private" not in headers


async def test_untrusted_client_forwarding_headers_are_replaced(gh: Gatehouse) -> None:
    _, headers, data = await get_json(
        gh.url + "/echo",
        headers={
            "X-Forwarded-For": "6.6.6.6",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "evil.example",
            "Forwarded": "for=6.6.6.6",
            "X-Request-Id": "client-chosen",
            "X-Real-IP": "6.6.6.6",
        },
    )
    seen = upstream_headers(data)
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == f"127.0.0.1:{gh.port}"
    assert seen["forwarded"] == f"for=127.0.0.1;proto=http;host=127.0.0.1:{gh.port}"
    assert "x-real-ip" not in seen
    assert seen["x-request-id"] != "client-chosen"
    assert headers["x-request-id"] == seen["x-request-id"]


async def test_host_is_rewritten_to_the_upstream_unless_preserved(
    gh: Gatehouse, upstream_url: str
) -> None:
    _, _, data = await get_json(gh.url + "/echo", headers={"Host": "app.example.com"})
    assert upstream_headers(data)["host"] == upstream_url.removeprefix("http://")
    _, _, data = await get_json(gh.url + "/echo/host", headers={"Host": "app.example.com"})
    assert upstream_headers(data)["host"] == "app.example.com"


async def test_traceparent_is_propagated_with_a_new_span_and_started_when_absent(
    gh: Gatehouse,
) -> None:
    incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    _, _, data = await get_json(gh.url + "/echo", headers={"traceparent": incoming})
    sent = upstream_headers(data)["traceparent"]
    assert sent.startswith("00-0af7651916cd43dd8448eb211c80319c-") and sent != incoming
    _, _, data = await get_json(gh.url + "/echo")
    assert len(upstream_headers(data)["traceparent"]) == 55


async def test_route_header_options_apply(gh: Gatehouse) -> None:
    _, _, data = await get_json(
        gh.url + "/echo/headers", headers={"X-Debug": "1", "X-Env": "client"}
    )
    seen = upstream_headers(data)
    assert "x-debug" not in seen
    assert [v for k, v in data["headers"] if k == "x-env"] == ["client", "test"] or seen[
        "x-env"
    ] in ("test", "client")


async def test_compressed_bodies_pass_through_untouched(gh: Gatehouse) -> None:
    status, headers, body = await get_json(gh.url + "/gzip", headers={"Accept-Encoding": "gzip"})
    assert status == 200 and headers["content-encoding"] == "gzip"
    assert gzip.decompress(body) == b'{"compressed": true}'
    # A gzip request body is not inflated by the proxy either.
    payload = gzip.compress(b"hello" * 100)
    _, _, data = await get_json(
        gh.url + "/echo", method="POST", data=payload, headers={"Content-Encoding": "gzip"}
    )
    assert data["body_size"] == len(payload)


async def test_no_accept_encoding_or_user_agent_is_invented(gh: Gatehouse) -> None:
    async with aiohttp.ClientSession(skip_auto_headers=("User-Agent", "Accept-Encoding")) as s:
        async with s.get(gh.url + "/echo") as r:
            seen = upstream_headers(await r.json())
    assert "accept-encoding" not in seen and "user-agent" not in seen


async def test_redirects_and_cookies_from_the_upstream_are_relayed_not_followed(
    gh: Gatehouse,
) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(gh.url + "/redirect", allow_redirects=False) as r:
            assert r.status == 302 and r.headers["Location"] == "/echo"
        async with s.get(gh.url + "/set-cookie") as r:
            assert "upstream_session=abc" in r.headers["Set-Cookie"]


async def test_content_length_is_kept_when_known_and_chunked_otherwise(gh: Gatehouse) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(gh.url + "/download/1000") as r:
            assert r.headers["Content-Length"] == "1000"
            assert "Transfer-Encoding" not in r.headers
            assert len(await r.read()) == 1000
        async with s.get(gh.url + "/download/1000?chunked=true") as r:
            assert r.headers.get("Transfer-Encoding") == "chunked"
            assert len(await r.read()) == 1000

        async def gen() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield b"a" * 100

        async with s.post(gh.url + "/echo", data=gen()) as r:
            data = await r.json()
            assert data["body_size"] == 1000
            assert upstream_headers(data).get("transfer-encoding") == "chunked"
        async with s.post(gh.url + "/echo", data=b"b" * 1000) as r:
            data = await r.json()
            assert upstream_headers(data)["content-length"] == "1000"
            assert data["body_sha256"] == hashlib.sha256(b"b" * 1000).hexdigest()


async def test_head_and_no_content_responses_have_no_body(gh: Gatehouse) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.head(gh.url + "/echo") as r:
            assert r.status == 200 and await r.read() == b""
        async with s.get(gh.url + "/status/204") as r:
            assert r.status == 204 and await r.read() == b""


async def test_body_over_the_route_limit_is_refused_with_413(gh: Gatehouse) -> None:
    status, _, data = await get_json(gh.url + "/echo/small", method="POST", data=b"x" * 2048)
    assert status == 413 and data["error"] == "body_too_large"

    async def gen() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"y" * 1024

    status, _, data = await get_json(gh.url + "/echo/small", method="POST", data=gen())
    assert status == 413 and data["error"] == "body_too_large"


async def test_refused_upstream_is_502_and_slow_upstream_is_504(gh: Gatehouse) -> None:
    status, _, data = await get_json(gh.url + "/down")
    assert status == 502 and data["error"] == "upstream_unavailable"
    assert set(data) == {"error", "status", "request_id"}
    status, _, data = await get_json(gh.url + "/slow?seconds=3")
    assert status == 504 and data["error"] == "upstream_timeout"


async def test_websocket_upgrade_is_proxied_both_ways(gh: Gatehouse) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(gh.url + "/ws", protocols=("chat",)) as ws:
            hello = await ws.receive_json()
            assert hello["request_id"]
            await ws.send_str("ping")
            assert (await ws.receive_str()) == "echo:ping"
            await ws.send_bytes(b"\x00\x01")
            assert (await ws.receive_bytes()) == b"\x00\x01"
            assert ws.protocol == "chat"


async def test_an_upgrade_to_a_route_without_websockets_is_relayed_as_a_plain_request(
    gh: Gatehouse,
) -> None:
    # The lean server hands upgrades to aiohttp's; its relay filters the same way.
    upgrade = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
    }
    status, headers, data = await get_json(gh.url + "/echo/plain", headers=upgrade)
    assert status == 200
    assert data["raw_path"] == "/echo/plain"
    assert "upgrade" not in upstream_headers(data)
    assert "x-upstream-private" not in headers  # named by the upstream's Connection
    assert headers["x-request-id"] and headers["server"] == "uvicorn"
    assert headers["content-type"] == "application/json"


async def test_every_request_is_audited_once_including_failures(gh: Gatehouse) -> None:
    # Tag this test's requests with one trace id: other tests' records may still be in flight.
    trace_id = os.urandom(16).hex()
    traceparent = {"traceparent": f"00-{trace_id}-{os.urandom(8).hex()}-01"}
    urls = [gh.url + "/echo", gh.url + "/down", gh.url + "/%2e%2e/x", gh.url + "/slow?seconds=0"]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as s:

        async def one(i: int) -> int:
            async with s.get(URL(urls[i % len(urls)], encoded=True), headers=traceparent) as r:
                await r.read()
                return r.status

        statuses = await asyncio.gather(*(one(i) for i in range(1000)))
    assert statuses.count(502) == 250 and statuses.count(400) == 250
    deadline = time.monotonic() + 10
    while True:
        new = [r for r in gh.audit_records() if r["trace_id"] == trace_id]
        if len(new) >= 1000 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)  # a duplicate would show up now
    new = [r for r in gh.audit_records() if r["trace_id"] == trace_id]
    assert len(new) == 1000
    assert len({r["request_id"] for r in new}) == 1000
    assert sorted(r["status"] for r in new) == sorted(statuses)
    for r in new:
        assert set(r) >= {
            "ts",
            "request_id",
            "trace_id",
            "client_ip",
            "method",
            "host",
            "path",
            "route",
            "backend",
            "subject",
            "issuer",
            "auth",
            "decision",
            "reason",
            "status",
            "upstream_status",
            "duration_ms",
            "bytes_in",
            "bytes_out",
        }


async def test_unknown_route_is_404_without_revealing_routes(
    gatehouse: GatehouseFactory, upstream_url: str
) -> None:
    gh = gatehouse(
        backends={"up": {"urls": [upstream_url]}}, routes=[public_route("only", "/echo", "up")]
    )
    status, _, data = await get_json(gh.url + "/admin")
    assert status == 404 and data["error"] == "route_not_found"
    status, _, _ = await get_json(gh.url + "/echoes")
    assert status == 404
    records = gh.wait_audit(2)
    assert [r["reason"] for r in records] == ["route_not_found", "route_not_found"]


async def test_client_leaving_mid_response_is_audited_as_client_disconnected(gh: Gatehouse) -> None:
    trace_id = os.urandom(16).hex()
    reader, writer = await asyncio.open_connection("127.0.0.1", gh.port)
    writer.write(
        f"GET /download/{2**30} HTTP/1.1\r\nHost: a\r\n"
        f"traceparent: 00-{trace_id}-{os.urandom(8).hex()}-01\r\n\r\n".encode()
    )
    await writer.drain()
    await reader.readexactly(65536)  # the response has started
    writer.transport.abort()
    deadline = time.monotonic() + 10
    while not (mine := [r for r in gh.audit_records() if r["trace_id"] == trace_id]):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    [record] = mine
    assert record["reason"] == "client_disconnected"
    assert record["status"] == 200 and record["decision"] == "allow"
    assert 0 < record["bytes_out"] < 2**30
