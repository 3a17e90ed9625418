"""The lean HTTP/1.1 server: ordering, keep-alive, closing safely, 100-continue, response hygiene.

Framing rejections are pinned in ``test_server.py``; these pin what the
server itself decides about connections, through a real gatehouse process
and raw sockets.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers.recorder import Recorder
from tests.support.gatehouse import Gatehouse, public_route, start_gatehouse


@pytest.fixture(scope="module")
def gh(upstream_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gatehouse]:
    proc = start_gatehouse(
        tmp_path_factory.mktemp("protocol"),
        backends={"up": {"urls": [upstream_url]}},
        routes=[
            public_route("echo", "/echo", "up"),
            public_route("ws", "/ws", "up", websocket=True),
        ],
        listen={"keepalive_timeout": "1s"},
    )
    yield proc
    proc.stop()


def read_responses(sock: socket.socket, count: int, timeout: float = 5.0) -> list[bytes]:
    """Read ``count`` Content-Length framed responses off one connection."""
    sock.settimeout(timeout)
    buf = b""
    out: list[bytes] = []
    while len(out) < count:
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed after {len(out)} responses: {buf[:200]!r}")
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed mid-body")
            rest += chunk
        out.append(head + b"\r\n\r\n" + rest[:length])
        buf = rest[length:]
    return out


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def header(response: bytes, name: str) -> str | None:
    head = response.partition(b"\r\n\r\n")[0].decode("latin-1")
    for line in head.split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


def body_json(response: bytes) -> dict[str, object]:
    data: dict[str, object] = json.loads(response.partition(b"\r\n\r\n")[2])
    return data


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_pipelined_requests_are_answered_in_order_on_one_connection(gh: Gatehouse) -> None:
    with socket.create_connection(("127.0.0.1", gh.port)) as s:
        s.sendall(
            b"GET /echo?n=1 HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /echo?n=2 HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /echo?n=3 HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        answers = read_responses(s, 3)
    assert [body_json(r)["query"] for r in answers] == ["n=1", "n=2", "n=3"]
    assert len({header(r, "X-Request-Id") for r in answers}) == 3


def test_requests_sent_before_a_half_close_are_all_answered(gh: Gatehouse) -> None:
    with socket.create_connection(("127.0.0.1", gh.port)) as s:
        s.sendall(
            b"GET /echo?n=1 HTTP/1.1\r\nHost: a\r\n\r\nGET /echo?n=2 HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        s.shutdown(socket.SHUT_WR)  # e.g. `printf ... | nc`: nothing more will come
        answers = read_responses(s, 2)
        assert [body_json(r)["query"] for r in answers] == ["n=1", "n=2"]
        assert header(answers[-1], "Connection") == "close"
        assert closed_by_peer(s, timeout=2.0)


def test_an_http_1_0_request_is_answered_then_the_connection_closes(gh: Gatehouse) -> None:
    with socket.create_connection(("127.0.0.1", gh.port)) as s:
        s.sendall(b"GET /echo HTTP/1.0\r\nHost: a\r\n\r\n")
        (answer,) = read_responses(s, 1)
        assert status_of(answer) == 200
        assert header(answer, "Connection") == "close"
        assert closed_by_peer(s, timeout=2.0)


def test_connection_close_from_the_client_is_honoured(gh: Gatehouse) -> None:
    with socket.create_connection(("127.0.0.1", gh.port)) as s:
        s.sendall(b"GET /echo HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        (answer,) = read_responses(s, 1)
        assert header(answer, "Connection") == "close"
        assert closed_by_peer(s, timeout=2.0)


def test_an_idle_keep_alive_connection_is_closed_after_the_timeout(gh: Gatehouse) -> None:
    with socket.create_connection(("127.0.0.1", gh.port)) as s:
        s.sendall(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
        (answer,) = read_responses(s, 1)
        assert status_of(answer) == 200 and header(answer, "Connection") is None
        assert not closed_by_peer(s, timeout=0.3)  # kept alive at first
        started = time.monotonic()
        assert closed_by_peer(s, timeout=5.0)
        assert time.monotonic() - started < 4.0  # timeout 1 s, swept every second


def test_an_answer_before_the_body_was_read_closes_the_connection_cleanly(
    gh: Gatehouse,
) -> None:
    # 404 before any of the announced 8 MiB is read: the client must still get
    # the whole answer (no reset), told that the connection ends.
    with socket.create_connection(("127.0.0.1", gh.port)) as s:
        s.sendall(b"POST /nowhere HTTP/1.1\r\nHost: a\r\nContent-Length: 8388608\r\n\r\n")
        s.sendall(b"x" * 65536)
        (answer,) = read_responses(s, 1)
        assert status_of(answer) == 404
        assert header(answer, "Connection") == "close"
        assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"] == "route_not_found"


def test_100_continue_is_sent_only_once_the_request_is_routed_and_allowed(
    gh: Gatehouse,
) -> None:
    with socket.create_connection(("127.0.0.1", gh.port)) as s:
        s.settimeout(5.0)
        s.sendall(
            b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        interim = s.recv(65536)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(b"hello")
        (answer,) = read_responses(s, 1)
        assert status_of(answer) == 200 and body_json(answer)["body_size"] == 5
    with socket.create_connection(("127.0.0.1", gh.port)) as s:
        s.settimeout(5.0)
        s.sendall(
            b"POST /nowhere HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        (answer,) = read_responses(s, 1)
        assert status_of(answer) == 404  # never invited to send the body


def test_an_upstream_header_value_with_a_bare_cr_is_a_502_never_relayed(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # llhttp is lenient with upstreams and keeps the CR inside the value; sent
    # on as is, the client could read it as the start of another header.
    # (A bare LF is a line end for llhttp: two headers, both legitimate.)
    upstream = Recorder(
        answer=b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Split: a\rInjected: yes\r\n\r\nok"
    )
    proc = start_gatehouse(
        tmp_path_factory.mktemp("badheader"),
        backends={"up": {"urls": [upstream.url]}},
        routes=[public_route("all", "/", "up")],
    )
    try:
        with socket.create_connection(("127.0.0.1", proc.port)) as s:
            s.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
            (answer,) = read_responses(s, 1)
        head_lines = answer.partition(b"\r\n\r\n")[0].split(b"\r\n")
        assert not any(line.lower().startswith(b"injected") for line in head_lines)
        assert status_of(answer) == 502
        assert body_json(answer)["error"] == "upstream_protocol_error"
    finally:
        proc.stop()
        upstream.close()


def _ws_frame(payload: bytes) -> bytes:
    """A masked client text frame (RFC 6455 §5.2), short payloads only."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + masked


def _read_ws_text(sock: socket.socket, buf: bytes) -> tuple[str, bytes]:
    """One unmasked server text frame (short or 16-bit length); returns it and what follows."""
    while len(buf) < 4:
        buf += sock.recv(65536)
    assert buf[0] == 0x81, buf[:2]
    length, offset = buf[1] & 0x7F, 2
    if length == 126:
        length, offset = int.from_bytes(buf[2:4], "big"), 4
    while len(buf) < offset + length:
        buf += sock.recv(65536)
    return buf[offset : offset + length].decode(), buf[offset + length :]


def test_a_keep_alive_connection_upgrades_to_websocket_after_a_plain_request(
    gh: Gatehouse,
) -> None:
    # One socket: a plain request first, then the upgrade on the same
    # connection, handed from the lean server to aiohttp's with the bytes read.
    before = len(gh.audit_records())
    with socket.create_connection(("127.0.0.1", gh.port)) as s:
        s.sendall(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
        (answer,) = read_responses(s, 1)
        assert status_of(answer) == 200
        key = base64.b64encode(os.urandom(16))
        s.sendall(
            b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n\r\n"
        )
        s.settimeout(5.0)
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += s.recv(65536)
        head, _, buf = buf.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        accept = base64.b64encode(
            hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()  # noqa: S324
        )
        assert accept in head
        hello, buf = _read_ws_text(s, buf)
        assert json.loads(hello)["request_id"]
        s.sendall(_ws_frame(b"ping"))
        echoed, buf = _read_ws_text(s, buf)
        assert echoed == "echo:ping"
    records = gh.wait_audit(before + 2)
    routes = sorted(r["route"] for r in records[before:])
    assert routes == ["echo", "ws"]  # one record each, the upgrade included


def test_a_request_head_trickled_past_the_header_timeout_gets_408_and_is_closed(
    upstream_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    proc = start_gatehouse(
        tmp_path_factory.mktemp("slowloris"),
        backends={"up": {"urls": [upstream_url]}},
        routes=[public_route("echo", "/echo", "up")],
        listen={"header_timeout": "1s"},
    )
    try:
        before = len(proc.audit_records())
        with socket.create_connection(("127.0.0.1", proc.port)) as s:
            started = time.monotonic()
            s.sendall(b"GET /echo HTTP/1.1\r\nHost: a\r\n")
            for _ in range(3):  # a trickle keeps bytes coming, never the end of the head
                time.sleep(0.4)
                s.sendall(b"X-Slow: 1\r\n")
            (answer,) = read_responses(s, 1)
            assert time.monotonic() - started < 4.0
            assert status_of(answer) == 408
            assert body_json(answer)["error"] == "request_timeout"
            assert closed_by_peer(s, timeout=3.0)
        records = proc.wait_audit(before + 1)
        assert records[-1]["status"] == 408 and records[-1]["reason"] == "request_timeout"
        # A prompt client on the same proxy is unaffected.
        with socket.create_connection(("127.0.0.1", proc.port)) as s:
            s.sendall(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
            assert status_of(read_responses(s, 1)[0]) == 200
    finally:
        proc.stop()


def test_a_tls_client_closing_leaves_no_warning_in_the_log(
    upstream_url: str, tmp_path_factory: pytest.TempPathFactory, certs: dict[str, Path]
) -> None:
    # asyncio (and uvloop) warn "returning true from eof_received() has no effect
    # when using ssl" if a protocol asks to keep a TLS connection half-open.
    proc = start_gatehouse(
        tmp_path_factory.mktemp("tls-close"),
        backends={"up": {"urls": [upstream_url]}},
        routes=[public_route("echo", "/echo", "up")],
        listen={
            "tls": {"cert_file": str(certs["server_cert"]), "key_file": str(certs["server_key"])}
        },
    )
    try:
        context = ssl.create_default_context(cafile=str(certs["ca"]))
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", proc.port)) as raw:
                with context.wrap_socket(raw, server_hostname="localhost") as s:
                    s.sendall(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
                    (answer,) = read_responses(s, 1)
                    assert status_of(answer) == 200
                    s.unwrap()  # close_notify: the client's clean end of the TLS stream
        # And a client that closes with a request unanswered.
        with socket.create_connection(("127.0.0.1", proc.port)) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(b"GET /echo HTTP/1.1\r\nHost: a\r\n")
                s.unwrap()
        time.sleep(0.3)
    finally:
        proc.stop()
    assert "eof_received" not in proc.stderr()
    assert "Traceback" not in proc.stderr()
