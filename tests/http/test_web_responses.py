"""aiohttp responses a handler returns (errors, redirects, local endpoints) on the lean server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web

from proxy.http.config import Address, ListenConfig
from proxy.http.protocol import HttpServer, Request, Written
from proxy.http.server import bind_socket, start_listener

Handler = Callable[[Request], web.StreamResponse]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], asyncio.Future[int]]]:
    servers: list[asyncio.Server] = []

    def start(answer: Handler) -> asyncio.Future[int]:
        async def handler(request: Request) -> web.StreamResponse | Written:
            return answer(request)

        async def go() -> int:
            listen = ListenConfig(Address("127.0.0.1", 0))
            sock = bind_socket(listen.address, reuse_port=False, backlog=16)
            listener = await start_listener(HttpServer(handler, listen, None), sock, None)
            servers.append(listener)
            port: int = sock.getsockname()[1]
            return port

        return asyncio.ensure_future(go())

    yield start
    for server in servers:
        server.close()


async def exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    data = await asyncio.wait_for(reader.read(), 5)  # until the server closes
    writer.close()
    return data


async def test_a_returned_response_is_sent_with_server_date_and_framing(
    serve: Callable[[Handler], asyncio.Future[int]],
) -> None:
    port = await serve(lambda _: web.Response(status=302, headers={"Location": "/next"}))
    data = await exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head = data.split(b"\r\n\r\n")[0].split(b"\r\n")
    assert head[0] == b"HTTP/1.1 302 Found"
    assert b"Location: /next" in head and b"Server: gatehouse" in head
    assert b"Content-Length: 0" in head and b"Connection: close" in head
    assert any(line.startswith(b"Date: ") for line in head)


@pytest.mark.parametrize("value", ["zł", "a\r\nX-Injected: 1"])
async def test_a_header_that_cannot_be_sent_safely_closes_the_connection_without_an_answer(
    serve: Callable[[Handler], asyncio.Future[int]], value: str
) -> None:
    port = await serve(lambda _: web.Response(headers={"X-Echo": value}))
    data = await exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert data == b""  # closed at once: no half-written head, no hang
