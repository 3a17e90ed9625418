"""The lean upstream HTTP/1.1 client against raw loopback servers speaking exact bytes."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from proxy.dev.certs import make_ca
from proxy.errors import (
    Failure,
    GatehouseError,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from proxy.upstream.client import (
    ClientFailure,
    ConnectFailed,
    ConnectionDropped,
    ConnectTimeout,
    MalformedResponse,
    Origin,
    ResponseTimeout,
    UpstreamClient,
    UpstreamResponse,
    parse_origin,
)
from proxy.upstream.forward import _classify
from proxy.upstream.pool import classify
from tests.support.pki import loopback_server
from tests.support.raw_server import (
    Handler,
    Peer,
    RawServer,
    Received,
    each_request,
    response,
)

MIB = 2**20

Start = Callable[..., Awaitable[RawServer]]


@pytest.fixture
async def raw_server() -> AsyncIterator[Start]:
    servers: list[RawServer] = []

    async def start(handler: Handler, *, tls: ssl.SSLContext | None = None) -> RawServer:
        server = await RawServer(handler).start(tls)
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


@pytest.fixture
async def client() -> AsyncIterator[UpstreamClient]:
    upstream = UpstreamClient()
    yield upstream
    await upstream.close()


async def answer_ok(peer: Peer, request: Received) -> None:
    peer.send(response(f"answer {len(peer.server.received)}".encode()))


async def read_all(resp: UpstreamResponse) -> bytes:
    try:
        return await resp.content.read()
    finally:
        resp.release()


async def get(
    client: UpstreamClient,
    origin: Origin,
    target: str = "/",
    *,
    read_timeout: float | None = None,
    deadline: float | None = None,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> tuple[int, bytes]:
    resp = await client.request(
        origin,
        "GET",
        target,
        [],
        read_timeout=read_timeout,
        deadline=deadline,
        ssl_context=ssl_context,
        server_hostname=server_hostname,
    )
    return resp.status, await read_all(resp)


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        await asyncio.sleep(0)
        yield part


def forwarded(exc: BaseException) -> GatehouseError:
    """The phase error ``forward.send`` raises for ``exc``, chained the way it chains it."""
    try:
        try:
            raise exc
        except BaseException as original:
            raise _classify(original) from None
    except GatehouseError as phase:
        return phase


async def closed_by_client(peer: Peer) -> None:
    await asyncio.wait_for(peer.client_closed.wait(), 2)


# -- the request head ----------------------------------------------------------


async def test_request_line_is_the_endpoint_prefix_plus_the_target_sent_exactly(
    raw_server: Start, client: UpstreamClient
) -> None:
    server = await raw_server(each_request(answer_ok))
    origin = parse_origin(server.url("/base/"))
    await get(client, origin, "/p/a%2Fb;x?q=1&r=%20")
    assert server.received[0].request_line == "GET /base/p/a%2Fb;x?q=1&r=%20 HTTP/1.1"


async def test_host_is_added_first_from_the_origin(
    raw_server: Start, client: UpstreamClient
) -> None:
    server = await raw_server(each_request(answer_ok))
    await read_all(
        await client.request(parse_origin(server.url()), "GET", "/", [("Accept", "*/*")])
    )
    assert server.received[0].headers[0] == ("Host", f"127.0.0.1:{server.port}")
    assert server.received[0].header_values("Host") == [f"127.0.0.1:{server.port}"]


@pytest.mark.parametrize(
    ("url", "host_header"),
    [
        ("http://h:80/base", "h"),
        ("http://h/base", "h"),
        ("https://h:443", "h"),
        ("http://h:8080", "h:8080"),
        ("https://h:80", "h:80"),
        ("http://[::1]:8080/x", "[::1]:8080"),
        ("http://[::1]/", "[::1]"),
    ],
)
def test_the_origin_host_header_omits_only_the_schemes_default_port(
    url: str, host_header: str
) -> None:
    assert parse_origin(url).host_header == host_header


def test_an_origin_keeps_the_endpoint_path_without_its_trailing_slash() -> None:
    origin = parse_origin("https://h:8443/api/v1/")
    assert (origin.host, origin.port, origin.tls, origin.prefix) == ("h", 8443, True, "/api/v1")


def test_an_origin_that_is_not_http_is_refused() -> None:
    with pytest.raises(ValueError, match="not an http"):
        parse_origin("ftp://h/")


async def test_a_callers_host_header_is_sent_instead_of_the_origins(
    raw_server: Start, client: UpstreamClient
) -> None:
    server = await raw_server(each_request(answer_ok))
    resp = await client.request(parse_origin(server.url()), "GET", "/", [], host="backend.internal")
    await read_all(resp)
    assert server.received[0].header_values("Host") == ["backend.internal"]


async def get_with(
    client: UpstreamClient, server: RawServer, headers: list[tuple[str, str]]
) -> None:
    resp = await client.request(parse_origin(server.url()), "GET", "/", headers)
    await read_all(resp)


async def test_a_known_body_length_is_sent_as_content_length(
    raw_server: Start, client: UpstreamClient
) -> None:
    server = await raw_server(each_request(answer_ok))
    resp = await client.request(
        parse_origin(server.url()),
        "POST",
        "/",
        [],
        body=chunks(b"alpha ", b"beta ", b"gamma"),
        body_length=16,
    )
    await read_all(resp)
    got = server.received[0]
    assert got.header_values("Content-Length") == ["16"]
    assert got.header_values("Transfer-Encoding") == []
    assert got.body == b"alpha beta gamma"


async def test_an_unknown_body_length_is_sent_chunked_and_arrives_whole(
    raw_server: Start, client: UpstreamClient
) -> None:
    server = await raw_server(each_request(answer_ok))
    parts = [bytes([i]) * (1000 * i) for i in range(1, 8)]
    resp = await client.request(
        parse_origin(server.url()), "PUT", "/", [], body=chunks(*parts[:3], b"", *parts[3:])
    )
    await read_all(resp)
    got = server.received[0]
    assert got.header_values("Transfer-Encoding") == ["chunked"]
    assert got.header_values("Content-Length") == []
    assert got.body == b"".join(parts)


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
async def test_a_bodiless_post_put_or_patch_declares_content_length_zero(
    raw_server: Start, client: UpstreamClient, method: str
) -> None:
    server = await raw_server(each_request(answer_ok))
    await read_all(await client.request(parse_origin(server.url()), method, "/", []))
    assert server.received[0].header_values("Content-Length") == ["0"]
    assert server.received[0].header_values("Transfer-Encoding") == []


@pytest.mark.parametrize("method", ["GET", "DELETE", "OPTIONS"])
async def test_a_bodiless_get_sends_no_framing_headers(
    raw_server: Start, client: UpstreamClient, method: str
) -> None:
    server = await raw_server(each_request(answer_ok))
    await read_all(await client.request(parse_origin(server.url()), method, "/", []))
    got = server.received[0]
    assert got.header_values("Content-Length") == []
    assert got.header_values("Transfer-Encoding") == []
    assert got.head.endswith(b"\r\n\r\n")


@pytest.mark.parametrize("value", ["a\r\nX-Injected: 1", "a\nX-Injected: 1", "a\rb", "a\r\n"])
async def test_a_line_break_in_a_header_value_is_refused_before_anything_is_sent(
    raw_server: Start, client: UpstreamClient, value: str
) -> None:
    server = await raw_server(each_request(answer_ok))
    with pytest.raises(ValueError, match="line break"):
        await client.request(parse_origin(server.url()), "GET", "/", [("X-Token", value)])
    await asyncio.sleep(0.05)
    assert server.connections == 0


async def test_a_line_break_in_the_target_is_refused_before_anything_is_sent(
    raw_server: Start, client: UpstreamClient
) -> None:
    server = await raw_server(each_request(answer_ok))
    with pytest.raises(ValueError, match="line break"):
        await client.request(parse_origin(server.url()), "GET", "/a HTTP/1.1\r\nX: y", [])
    await asyncio.sleep(0.05)
    assert server.connections == 0


# -- keep-alive ------------------------------------------------------------------


async def test_sequential_requests_reuse_one_connection_after_a_full_read(
    raw_server: Start, client: UpstreamClient
) -> None:
    server = await raw_server(each_request(answer_ok))
    origin = parse_origin(server.url())
    answers = [await get(client, origin) for _ in range(3)]
    assert answers == [(200, b"answer 1"), (200, b"answer 2"), (200, b"answer 3")]
    assert server.connections == 1
    assert [r.connection for r in server.received] == [0, 0, 0]


async def test_concurrent_requests_use_their_own_connections_which_are_then_pooled(
    raw_server: Start, client: UpstreamClient
) -> None:
    both_in = asyncio.Event()

    async def answer(peer: Peer, request: Received) -> None:
        if len(peer.server.received) == 2:
            both_in.set()
        await both_in.wait()  # neither answers before both are in flight
        peer.send(response(b"x"))

    server = await raw_server(each_request(answer))
    origin = parse_origin(server.url())
    await asyncio.gather(get(client, origin), get(client, origin))
    assert server.connections == 2
    await asyncio.gather(get(client, origin), get(client, origin))
    assert server.connections == 2


async def test_max_connections_makes_requests_wait_for_a_connection_to_come_back(
    raw_server: Start, client: UpstreamClient
) -> None:
    server = await raw_server(each_request(answer_ok))
    origin = parse_origin(server.url())

    async def limited() -> tuple[int, bytes]:
        resp = await client.request(origin, "GET", "/", [], max_connections=1, deadline=5.0)
        await asyncio.sleep(0.05)  # hold the connection a moment
        return resp.status, await read_all(resp)

    answers = await asyncio.gather(*(limited() for _ in range(4)))
    assert sorted(status for status, _ in answers) == [200] * 4
    assert server.connections == 1  # the four took turns on one connection


async def test_max_connections_reached_until_the_deadline_is_a_connect_failure(
    raw_server: Start, client: UpstreamClient
) -> None:
    server = await raw_server(each_request(answer_ok))
    origin = parse_origin(server.url())
    held = await client.request(origin, "GET", "/", [], max_connections=1)
    with pytest.raises(ConnectFailed, match="connection limit"):
        await client.request(origin, "GET", "/", [], max_connections=1, deadline=0.2)
    await read_all(held)
    # A closed connection frees its place too.
    closing = await client.request(origin, "GET", "/", [], max_connections=1)
    closing.close()
    assert (await get_limited(client, origin))[0] == 200
    assert server.connections == 2


async def get_limited(client: UpstreamClient, origin: Origin) -> tuple[int, bytes]:
    resp = await client.request(origin, "GET", "/", [], max_connections=1, deadline=2.0)
    return resp.status, await read_all(resp)


async def test_connection_close_from_the_upstream_means_a_new_connection_next_time(
    raw_server: Start, client: UpstreamClient
) -> None:
    async def answer(peer: Peer, request: Received) -> None:
        peer.send(response(b"bye", headers=[("Connection", "close")]))

    server = await raw_server(each_request(answer))
    origin = parse_origin(server.url())
    assert await get(client, origin) == (200, b"bye")
    assert await get(client, origin) == (200, b"bye")
    assert server.connections == 2
    await closed_by_client(server.peers[0])


async def test_a_body_unread_at_release_closes_the_connection(
    raw_server: Start, client: UpstreamClient
) -> None:
    async def handle(peer: Peer) -> None:
        if await peer.read_request() is None:
            return
        if peer.index == 0:
            peer.send(response(b"0123456789", length=100))  # the other 90 bytes never come
            await peer.until_client_closes()
        else:
            peer.send(response(b"fresh"))
            await peer.until_client_closes()

    server = await raw_server(handle)
    origin = parse_origin(server.url())
    resp = await client.request(origin, "GET", "/", [])
    resp.release()
    await closed_by_client(server.peers[0])
    assert await get(client, origin) == (200, b"fresh")
    assert server.connections == 2


async def test_a_body_buffered_whole_with_the_head_is_complete_and_the_connection_reusable(
    raw_server: Start, client: UpstreamClient
) -> None:
    server = await raw_server(each_request(answer_ok))
    origin = parse_origin(server.url())
    resp = await client.request(origin, "GET", "/", [])
    assert resp.complete
    assert resp.content_length == 8
    assert resp.content.read_nowait(-1) == b"answer 1"
    resp.release()
    assert await get(client, origin) == (200, b"answer 2")
    assert server.connections == 1


async def test_a_closed_response_is_not_reused(raw_server: Start, client: UpstreamClient) -> None:
    server = await raw_server(each_request(answer_ok))
    origin = parse_origin(server.url())
    resp = await client.request(origin, "GET", "/", [])
    assert await resp.content.read() == b"answer 1"
    resp.close()
    resp.release()  # after close: a no-op, not a second hand-back
    await closed_by_client(server.peers[0])
    assert await get(client, origin) == (200, b"answer 2")
    assert server.connections == 2


async def test_an_idle_connection_the_upstream_closed_is_replaced_by_a_fresh_one(
    raw_server: Start, client: UpstreamClient
) -> None:
    async def handle(peer: Peer) -> None:
        await peer.read_request()
        peer.send(response(b"first" if peer.index == 0 else b"second"))  # keep-alive, then...
        await asyncio.sleep(0.01)
        peer.close()  # ...the upstream's idle timeout

    server = await raw_server(handle)
    origin = parse_origin(server.url())
    assert await get(client, origin) == (200, b"first")
    await asyncio.sleep(0.1)  # the close has reached the client
    assert await get(client, origin) == (200, b"second")
    assert server.connections == 2


async def test_idle_connections_older_than_the_keepalive_are_closed_and_replaced(
    raw_server: Start,
) -> None:
    server = await raw_server(each_request(answer_ok))
    origin = parse_origin(server.url())
    client = UpstreamClient(keepalive=0.2)
    try:
        await get(client, origin)
        await get(client, origin)
        assert server.connections == 1
        await asyncio.sleep(0.3)
        assert await get(client, origin) == (200, b"answer 3")
        assert server.connections == 2
        await closed_by_client(server.peers[0])
    finally:
        await client.close()


async def test_closing_the_client_closes_its_idle_connections(raw_server: Start) -> None:
    server = await raw_server(each_request(answer_ok))
    origin = parse_origin(server.url())
    client = UpstreamClient()
    await get(client, origin)
    assert not server.peers[0].client_closed.is_set()
    await client.close()
    await closed_by_client(server.peers[0])


async def test_bytes_arriving_on_an_idle_connection_make_it_unusable(
    raw_server: Start, client: UpstreamClient
) -> None:
    async def handle(peer: Peer) -> None:
        while await peer.read_request() is not None:
            peer.send(response(b"one"))
            if peer.index == 0:
                await asyncio.sleep(0.03)
                peer.send(response(b"nobody asked"))  # lands on the idle connection

    server = await raw_server(handle)
    origin = parse_origin(server.url())
    assert await get(client, origin) == (200, b"one")
    await closed_by_client(server.peers[0])
    assert await get(client, origin) == (200, b"one")
    assert server.connections == 2


async def test_a_second_response_in_the_same_packet_makes_the_connection_unusable(
    raw_server: Start, client: UpstreamClient
) -> None:
    async def answer(peer: Peer, request: Received) -> None:
        if peer.index == 0:
            peer.send(response(b"one") + response(b"two"))
        else:
            peer.send(response(b"fresh"))

    server = await raw_server(each_request(answer))
    origin = parse_origin(server.url())
    assert await get(client, origin) == (200, b"one")
    assert await get(client, origin) == (200, b"fresh")
    assert server.connections == 2


# -- failures and what they say about the request -----------------------------------


async def test_a_refused_connection_is_connect_failed_and_not_reached(
    client: UpstreamClient, refused_url: Callable[[], str]
) -> None:
    origin = parse_origin(refused_url())
    with pytest.raises(ConnectFailed) as err:
        await client.request(origin, "POST", "/", [])
    assert (err.value.failure, err.value.reached) == (Failure.CONNECT_ERROR, False)
    phase = forwarded(err.value)
    assert isinstance(phase, UpstreamConnectError)
    assert classify(phase) == (Failure.CONNECT_ERROR, False)


@pytest.fixture
def unanswering_port() -> Iterator[int]:
    """A listening port whose backlog is full: a new connection's handshake never completes."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers: list[socket.socket] = []
    try:
        for _ in range(8):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


@pytest.mark.parametrize(
    ("connect_timeout", "deadline"), [(0.2, 5.0), (5.0, 0.2)], ids=["connect-timeout", "deadline"]
)
async def test_a_connect_timeout_is_a_504_never_sent_so_safe_to_retry(
    client: UpstreamClient, unanswering_port: int, connect_timeout: float, deadline: float
) -> None:
    origin = parse_origin(f"http://127.0.0.1:{unanswering_port}")
    await asyncio.sleep(0.05)
    started = time.monotonic()
    with pytest.raises(ConnectTimeout) as err:
        await client.request(
            origin, "GET", "/", [], connect_timeout=connect_timeout, deadline=deadline
        )
    assert 0.15 < time.monotonic() - started < 1.5
    assert isinstance(err.value, ConnectFailed)
    assert isinstance(forwarded(err.value), UpstreamTimeout)
    assert classify(forwarded(err.value)) == (Failure.CONNECT_ERROR, False)


async def test_an_untrusted_tls_certificate_is_connect_failed_and_not_reached(
    raw_server: Start, client: UpstreamClient, pki: Pki
) -> None:
    server = await raw_server(each_request(answer_ok), tls=pki.server_context())
    with pytest.raises(ConnectFailed, match="certificate") as err:
        # The default trust store does not know the test CA.
        await client.request(parse_origin(server.url(tls=True)), "POST", "/", [])
    assert classify(err.value) == (Failure.CONNECT_ERROR, False)
    assert isinstance(forwarded(err.value), UpstreamConnectError)
    assert classify(forwarded(err.value)) == (Failure.CONNECT_ERROR, False)
    assert server.received == []


async def test_an_upstream_closing_without_answering_dropped_a_request_that_reached_it(
    raw_server: Start, client: UpstreamClient
) -> None:
    async def handle(peer: Peer) -> None:
        await peer.read_request()
        peer.close()

    server = await raw_server(handle)
    with pytest.raises(ConnectionDropped) as err:
        await client.request(parse_origin(server.url()), "POST", "/", [])
    assert len(server.received) == 1
    assert (err.value.failure, err.value.reached) == (Failure.RESET, True)
    assert isinstance(forwarded(err.value), UpstreamConnectError)
    assert classify(forwarded(err.value)) == (Failure.RESET, True)


async def test_no_answer_within_the_deadline_is_a_response_timeout(
    raw_server: Start, client: UpstreamClient
) -> None:
    async def handle(peer: Peer) -> None:
        await peer.read_request()
        await peer.until_client_closes()  # never answers

    server = await raw_server(handle)
    started = time.monotonic()
    with pytest.raises(ResponseTimeout) as err:
        await client.request(parse_origin(server.url()), "GET", "/", [], deadline=0.2)
    assert 0.18 < time.monotonic() - started < 1.5
    assert isinstance(forwarded(err.value), UpstreamTimeout)
    assert classify(forwarded(err.value)) == (Failure.TIMEOUT, True)
    await closed_by_client(server.peers[0])


async def test_silence_before_the_head_longer_than_the_read_timeout_is_a_response_timeout(
    raw_server: Start, client: UpstreamClient
) -> None:
    async def handle(peer: Peer) -> None:
        await peer.read_request()
        await peer.until_client_closes()

    server = await raw_server(handle)
    started = time.monotonic()
    with pytest.raises(ResponseTimeout):
        await client.request(parse_origin(server.url()), "GET", "/", [], read_timeout=0.2)
    assert 0.18 < time.monotonic() - started < 1.5


async def test_a_body_stalling_longer_than_the_read_timeout_fails_the_read(
    raw_server: Start, client: UpstreamClient
) -> None:
    async def handle(peer: Peer) -> None:
        await peer.read_request()
        peer.send(response(b"0123456789", length=100))
        await peer.until_client_closes()

    server = await raw_server(handle)
    resp = await client.request(parse_origin(server.url()), "GET", "/", [], read_timeout=0.2)
    assert resp.status == 200
    started = time.monotonic()
    with pytest.raises(ResponseTimeout) as err:
        await read_all(resp)
    assert 0.1 < time.monotonic() - started < 1.5
    assert classify(forwarded(err.value)) == (Failure.TIMEOUT, True)
    await closed_by_client(server.peers[0])


async def test_a_body_stall_is_a_response_timeout_even_when_nobody_was_reading(
    raw_server: Start, client: UpstreamClient
) -> None:
    async def handle(peer: Peer) -> None:
        await peer.read_request()
        peer.send(response(b"0123456789", length=100))
        await peer.until_client_closes()

    server = await raw_server(handle)
    resp = await client.request(parse_origin(server.url()), "GET", "/", [], read_timeout=0.1)
    await closed_by_client(server.peers[0])  # the timer fired and closed the connection
    with pytest.raises(ResponseTimeout):
        await read_all(resp)


async def test_a_malformed_body_is_reported_as_malformed_even_when_nobody_was_reading(
    raw_server: Start, client: UpstreamClient
) -> None:
    async def handle(peer: Peer) -> None:
        await peer.read_request()
        peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await asyncio.sleep(0.02)
        peer.send(b"zz\r\n")
        await peer.until_client_closes()

    server = await raw_server(handle)
    resp = await client.request(parse_origin(server.url()), "GET", "/", [])
    await closed_by_client(server.peers[0])
    with pytest.raises(MalformedResponse):
        await read_all(resp)


async def test_a_body_trickling_within_the_read_timeout_is_read_whole(
    raw_server: Start, client: UpstreamClient
) -> None:
    async def handle(peer: Peer) -> None:
        while await peer.read_request() is not None:
            peer.send(response(b"", length=5))
            for byte in b"abcde":
                await asyncio.sleep(0.08)
                peer.send(bytes([byte]))

    server = await raw_server(handle)
    origin = parse_origin(server.url())
    # 0.4 s in total, never more than 0.08 s of silence.
    assert await get(client, origin, read_timeout=0.25) == (200, b"abcde")
    assert await get(client, origin, read_timeout=0.25) == (200, b"abcde")
    assert server.connections == 1


async def test_the_deadline_bounds_the_wait_for_the_head_not_the_body(
    raw_server: Start, client: UpstreamClient
) -> None:
    async def handle(peer: Peer) -> None:
        await peer.read_request()
        peer.send(response(b"", length=4))
        for byte in b"slow":
            await asyncio.sleep(0.1)
            peer.send(bytes([byte]))
        await peer.until_client_closes()

    server = await raw_server(handle)
    assert await get(client, parse_origin(server.url()), deadline=0.2) == (200, b"slow")


async def test_a_body_cut_short_fails_the_read_and_the_connection_is_not_reused(
    raw_server: Start, client: UpstreamClient
) -> None:
    async def handle(peer: Peer) -> None:
        await peer.read_request()
        if peer.index == 0:
            peer.send(response(b"0123456789", length=100))
            await asyncio.sleep(0.02)
            peer.close()
        else:
            peer.send(response(b"fresh"))
            await peer.until_client_closes()

    server = await raw_server(handle)
    origin = parse_origin(server.url())
    resp = await client.request(origin, "GET", "/", [])
    with pytest.raises(ClientFailure) as err:
        await read_all(resp)
    assert isinstance(err.value, ConnectionDropped)
    assert classify(forwarded(err.value)) == (Failure.RESET, True)
    assert await get(client, origin) == (200, b"fresh")
    assert server.connections == 2


async def test_a_chunked_body_cut_short_fails_the_read(
    raw_server: Start, client: UpstreamClient
) -> None:
    async def handle(peer: Peer) -> None:
        await peer.read_request()
        peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await asyncio.sleep(0.02)
        peer.close()

    server = await raw_server(handle)
    resp = await client.request(parse_origin(server.url()), "GET", "/", [])
    with pytest.raises(ConnectionDropped):
        await read_all(resp)


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 abc OK\r\nContent-Length: 0\r\n\r\n",
        b"SMTP ready\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"X-Many: 1\r\n" * 200 + b"\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n",
        # Strict parsing (aiohttp's client parser was lenient with these):
        b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
        b"HTTP/1.1 200 OK\r\nX-A: a\x01b\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-A : a\r\nContent-Length: 0\r\n\r\n",
    ],
    ids=[
        "status",
        "not-http",
        "two-lengths",
        "long-header",
        "many-headers",
        "bad-length",
        "length-and-chunked",
        "bare-lf",
        "control-char-in-value",
        "space-before-colon",
    ],
)
async def test_a_malformed_head_is_malformed_response_and_the_connection_not_reused(
    raw_server: Start, client: UpstreamClient, answer: bytes
) -> None:
    async def handle(peer: Peer) -> None:
        await peer.read_request()
        peer.send(answer if peer.index == 0 else response(b"fresh"))
        await peer.until_client_closes()

    server = await raw_server(handle)
    origin = parse_origin(server.url())
    with pytest.raises(MalformedResponse) as err:
        await client.request(origin, "GET", "/", [])
    assert isinstance(forwarded(err.value), UpstreamProtocolError)
    assert classify(forwarded(err.value)) == (Failure.PROTOCOL, True)
    await closed_by_client(server.peers[0])
    assert await get(client, origin) == (200, b"fresh")


async def test_a_bad_chunk_size_fails_the_read_as_malformed_and_the_connection_not_reused(
    raw_server: Start, client: UpstreamClient
) -> None:
    async def handle(peer: Peer) -> None:
        await peer.read_request()
        if peer.index == 0:
            peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
            await asyncio.sleep(0.02)
            peer.send(b"zz\r\nbroken\r\n0\r\n\r\n")
        else:
            peer.send(response(b"fresh"))
        await peer.until_client_closes()

    server = await raw_server(handle)
    origin = parse_origin(server.url())
    resp = await client.request(origin, "GET", "/", [])
    assert resp.status == 200
    with pytest.raises(MalformedResponse) as err:
        await read_all(resp)
    assert classify(forwarded(err.value)) == (Failure.PROTOCOL, True)
    await closed_by_client(server.peers[0])
    assert await get(client, origin) == (200, b"fresh")


async def test_a_protocol_switch_nobody_asked_for_is_malformed(
    raw_server: Start, client: UpstreamClient
) -> None:
    async def handle(peer: Peer) -> None:
        await peer.read_request()
        peer.send(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"
        )
        await peer.until_client_closes()

    server = await raw_server(handle)
    with pytest.raises(MalformedResponse):
        await client.request(parse_origin(server.url()), "GET", "/", [])
    await closed_by_client(server.peers[0])


async def test_a_body_delimited_by_the_close_is_read_whole_and_not_reused(
    raw_server: Start, client: UpstreamClient
) -> None:
    async def handle(peer: Peer) -> None:
        await peer.read_request()
        peer.send(b"HTTP/1.1 200 OK\r\n\r\nuntil ")
        await asyncio.sleep(0.02)
        peer.send(b"the end")
        peer.close()

    server = await raw_server(handle)
    origin = parse_origin(server.url())
    assert await get(client, origin) == (200, b"until the end")
    assert await get(client, origin) == (200, b"until the end")
    assert server.connections == 2


@pytest.mark.parametrize(
    ("answer", "connections"),
    [
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", 2),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok", 1),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;ext=1\r\no\r\n1\r\nk\r\n0\r\n\r\n",
            1,
        ),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-T: 1\r\n\r\n", 1),
    ],
    ids=["http10", "http10-keep-alive", "chunk-extensions", "trailers"],
)
async def test_a_well_framed_answer_is_read_whole_and_reused_unless_its_version_says_close(
    raw_server: Start, client: UpstreamClient, answer: bytes, connections: int
) -> None:
    async def respond(peer: Peer, request: Received) -> None:
        peer.send(answer if len(peer.server.received) == 1 else response(b"next"))

    server = await raw_server(each_request(respond))
    origin = parse_origin(server.url())
    assert await get(client, origin) == (200, b"ok")
    assert await get(client, origin) == (200, b"next")
    assert server.connections == connections


async def test_a_head_arriving_byte_by_byte_is_parsed(
    raw_server: Start, client: UpstreamClient
) -> None:
    async def respond(peer: Peer, request: Received) -> None:
        for byte in response(b"slowly", headers=[("X-A", "1")]):
            peer.send(bytes([byte]))
            await asyncio.sleep(0)

    server = await raw_server(each_request(respond))
    assert await get(client, parse_origin(server.url())) == (200, b"slowly")


async def test_cancelling_a_request_waiting_for_its_head_closes_the_connection(
    raw_server: Start, client: UpstreamClient
) -> None:
    got = asyncio.Event()

    async def handle(peer: Peer) -> None:
        await peer.read_request()
        got.set()
        await peer.until_client_closes()

    server = await raw_server(handle)
    task = asyncio.ensure_future(client.request(parse_origin(server.url()), "GET", "/", []))
    await asyncio.wait_for(got.wait(), 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await closed_by_client(server.peers[0])


# -- informational and bodiless answers ------------------------------------------


async def test_informational_responses_before_the_answer_are_skipped(
    raw_server: Start, client: UpstreamClient
) -> None:
    async def answer(peer: Peer, request: Received) -> None:
        peer.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        await asyncio.sleep(0.02)
        peer.send(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n")
        await asyncio.sleep(0.02)
        peer.send(response(b"final", status="201 Created", headers=[("X-Final", "yes")]))

    server = await raw_server(each_request(answer))
    origin = parse_origin(server.url())
    resp = await client.request(origin, "POST", "/", [])
    assert (resp.status, resp.reason) == (201, "Created")
    assert (b"X-Final", b"yes") in resp.raw_headers
    assert all(name != b"Link" for name, _ in resp.raw_headers)
    assert await read_all(resp) == b"final"
    assert (await get(client, origin))[1] == b"final"
    assert server.connections == 1


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\n\r\n',
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 42\r\n\r\n",
    ],
    ids=["204", "304", "304-with-length"],
)
async def test_a_bodiless_status_has_an_empty_body_and_keeps_the_connection(
    raw_server: Start, client: UpstreamClient, answer: bytes
) -> None:
    async def respond(peer: Peer, request: Received) -> None:
        peer.send(answer if len(peer.server.received) == 1 else response(b"next"))

    server = await raw_server(each_request(respond))
    origin = parse_origin(server.url())
    resp = await client.request(origin, "GET", "/", [])
    assert resp.complete
    assert await read_all(resp) == b""
    assert await get(client, origin) == (200, b"next")
    assert server.connections == 1


async def test_one_connection_carries_answers_of_every_framing_in_a_row(
    raw_server: Start, client: UpstreamClient
) -> None:
    answers = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nsec\r\n3\r\nond\r\n0\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfifth",
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlast",
    ]

    async def respond(peer: Peer, request: Received) -> None:
        peer.send(answers[len(peer.server.received) - 1])

    server = await raw_server(each_request(respond))
    origin = parse_origin(server.url())
    got = [await get(client, origin) for _ in answers]
    assert got == [
        (200, b"first"),
        (200, b"second"),
        (204, b""),
        (200, b"fifth"),
        (304, b""),
        (200, b"last"),
    ]
    assert server.connections == 1


async def test_a_head_response_has_an_empty_body_whatever_its_length_says(
    raw_server: Start, client: UpstreamClient
) -> None:
    async def respond(peer: Peer, request: Received) -> None:
        if request.request_line.startswith("HEAD"):
            peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        else:
            peer.send(response(b"next"))

    server = await raw_server(each_request(respond))
    origin = parse_origin(server.url())
    resp = await client.request(origin, "HEAD", "/", [])
    assert resp.content_length == 100
    assert resp.complete
    assert await read_all(resp) == b""
    assert await get(client, origin) == (200, b"next")
    assert server.connections == 1


# -- the request body --------------------------------------------------------------


async def test_an_early_answer_is_returned_and_its_connection_closed_on_release(
    raw_server: Start, client: UpstreamClient
) -> None:
    body_ended = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        try:
            yield b"x" * 1024
            await asyncio.Event().wait()  # the rest of the body never comes
            yield b"unreachable"
        finally:
            body_ended.set()

    async def handle(peer: Peer) -> None:
        if peer.index == 0:
            await peer.read_head()  # refuses without reading the body
            peer.send(response(b"too large", status="413 Content Too Large"))
            await peer.until_client_closes()
        else:
            await each_request(answer_ok)(peer)

    server = await raw_server(handle)
    origin = parse_origin(server.url())
    resp = await client.request(origin, "POST", "/", [], body=endless(), body_length=10 * MIB)
    assert resp.status == 413
    assert await read_all(resp) == b"too large"
    await asyncio.wait_for(body_ended.wait(), 2)
    await closed_by_client(server.peers[0])
    assert (await get(client, origin))[0] == 200
    assert server.connections == 2


class BodyBroke(Exception):
    pass


async def test_a_failing_request_body_raises_its_own_exception_from_request(
    raw_server: Start, client: UpstreamClient
) -> None:
    failure = BodyBroke("client went away")

    async def breaking() -> AsyncIterator[bytes]:
        yield b"first part"
        await asyncio.sleep(0.02)
        raise failure

    async def handle(peer: Peer) -> None:
        await peer.read_head()
        await peer.until_client_closes()

    server = await raw_server(handle)
    with pytest.raises(BodyBroke) as err:
        await client.request(parse_origin(server.url()), "POST", "/", [], body=breaking())
    assert err.value is failure
    await closed_by_client(server.peers[0])


async def test_the_request_body_waits_for_the_upstream_to_read_it(
    raw_server: Start, client: UpstreamClient
) -> None:
    total = 48 * MIB
    block = b"u" * (64 * 1024)
    produced = 0
    server_reading = asyncio.Event()

    async def upload() -> AsyncIterator[bytes]:
        nonlocal produced
        for _ in range(total // len(block)):
            produced += len(block)
            yield block

    async def handle(peer: Peer) -> None:
        await peer.read_head()
        await server_reading.wait()
        received = 0
        while received < total:
            received += len(await peer.reader.read(MIB))
        peer.send(response(str(received).encode()))
        await peer.until_client_closes()

    server = await raw_server(handle)
    task = asyncio.ensure_future(
        client.request(
            parse_origin(server.url()), "POST", "/", [], body=upload(), body_length=total
        )
    )
    await asyncio.sleep(0.3)
    # Only socket buffers' worth left the generator while the upstream read nothing.
    assert produced < 24 * MIB
    server_reading.set()
    resp = await asyncio.wait_for(task, 10)
    assert await read_all(resp) == str(total).encode()
    assert produced == total


async def test_a_body_longer_than_its_declared_length_never_reaches_the_upstream_as_a_request(
    raw_server: Start, client: UpstreamClient
) -> None:
    server = await raw_server(each_request(answer_ok))
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    with contextlib.suppress(ClientFailure, ValueError):
        resp = await client.request(
            parse_origin(server.url()),
            "POST",
            "/",
            [],
            body=chunks(b"abc", smuggled),
            body_length=3,
        )
        await read_all(resp)
    await asyncio.sleep(0.1)
    assert [r.request_line for r in server.received] == ["POST / HTTP/1.1"]


async def test_a_body_shorter_than_its_declared_length_fails_at_once_not_at_the_timeout(
    raw_server: Start, client: UpstreamClient
) -> None:
    async def handle(peer: Peer) -> None:
        await peer.read_request()  # waits for the 100 bytes announced
        peer.send(response(b"unexpected"))
        await peer.until_client_closes()

    server = await raw_server(handle)
    started = time.monotonic()
    with pytest.raises(Exception) as err:  # noqa: PT011 (any refusal, as long as it is prompt)
        await client.request(
            parse_origin(server.url()),
            "POST",
            "/",
            [],
            body=chunks(b"only ten b"),
            body_length=100,
            deadline=1.0,
        )
    assert not isinstance(err.value, ResponseTimeout)
    assert time.monotonic() - started < 0.5
    await closed_by_client(server.peers[0])


# -- the response body -------------------------------------------------------------


async def stream_forever(peer: Peer, size: int) -> None:
    await peer.read_request()
    peer.send(response(b"", length=size))
    block = bytes(range(256)) * 256
    while peer.sent < size:
        await peer.send_drained(block)
    await peer.until_client_closes()


async def test_a_slowly_read_large_body_keeps_the_clients_buffer_bounded(
    raw_server: Start, client: UpstreamClient
) -> None:
    size = 64 * MIB
    server = await raw_server(lambda peer: stream_forever(peer, size))
    resp = await client.request(parse_origin(server.url()), "GET", "/", [])
    assert resp.content_length == size
    consumed = 0
    most_buffered = 0
    for _ in range(40):
        consumed += len(await resp.content.read(64 * 1024))
        most_buffered = max(most_buffered, resp.content.total_bytes - consumed)
        await asyncio.sleep(0.01)
    assert consumed > 0
    assert most_buffered < MIB
    # The upstream is held back too: far from all 64 MiB could be written.
    assert server.peers[0].sent < 32 * MIB
    resp.release()  # unread body: the connection is closed, not pooled
    await closed_by_client(server.peers[0])


async def test_a_reader_slower_than_the_read_timeout_is_not_timed_out_while_paused(
    raw_server: Start, client: UpstreamClient
) -> None:
    size = 8 * MIB
    server = await raw_server(lambda peer: stream_forever(peer, size))
    resp = await client.request(parse_origin(server.url()), "GET", "/", [], read_timeout=0.2)
    first = await resp.content.read(64 * 1024)
    # A slow downstream client: the buffer fills, the socket is paused, the
    # upstream waits on us. That silence is ours, not the upstream's.
    await asyncio.sleep(0.5)
    rest = await read_all(resp)
    assert len(first) + len(rest) == size


# -- TLS ---------------------------------------------------------------------------


class Pki:
    def __init__(self, directory: Path) -> None:
        self.ca = make_ca(directory, "client-test-ca")
        self.server = loopback_server(self.ca, directory)
        self.sni_seen: list[str | None] = []

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.server.cert_file, self.server.key_file)
        ctx.sni_callback = lambda _sock, name, _ctx: self.sni_seen.append(name)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca.cert_file))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("client-tls"))


async def test_tls_with_the_trusted_ca_and_server_name_works_and_reuses_the_connection(
    raw_server: Start, client: UpstreamClient, pki: Pki
) -> None:
    server = await raw_server(each_request(answer_ok), tls=pki.server_context())
    origin = parse_origin(server.url("/tls", tls=True))
    context = pki.client_context()
    pki.sni_seen.clear()
    for n in (1, 2, 3):
        status, body = await get(
            client, origin, "/x", ssl_context=context, server_hostname="localhost"
        )
        assert (status, body) == (200, f"answer {n}".encode())
    assert server.connections == 1
    assert pki.sni_seen == ["localhost"]
    assert server.received[0].request_line == "GET /tls/x HTTP/1.1"
    assert server.received[0].header_values("Host") == [f"127.0.0.1:{server.port}"]


async def test_connections_are_pooled_per_tls_context_and_server_name(
    raw_server: Start, client: UpstreamClient, pki: Pki
) -> None:
    server = await raw_server(each_request(answer_ok), tls=pki.server_context())
    origin = parse_origin(server.url(tls=True))
    first, second = pki.client_context(), pki.client_context()
    # A connection verified for one backend's TLS settings never serves another's.
    for context, name in [(first, "localhost"), (second, "localhost"), (first, None)]:
        await get(client, origin, ssl_context=context, server_hostname=name)
    assert server.connections == 3
    for context, name in [(first, "localhost"), (second, "localhost"), (first, None)]:
        await get(client, origin, ssl_context=context, server_hostname=name)
    assert server.connections == 3


async def test_tls_with_a_server_name_the_certificate_does_not_cover_is_refused(
    raw_server: Start, client: UpstreamClient, pki: Pki
) -> None:
    server = await raw_server(each_request(answer_ok), tls=pki.server_context())
    with pytest.raises(ConnectFailed, match="certificate"):
        await client.request(
            parse_origin(server.url(tls=True)),
            "GET",
            "/",
            [],
            ssl_context=pki.client_context(),
            server_hostname="other.internal",
        )
    assert server.received == []
