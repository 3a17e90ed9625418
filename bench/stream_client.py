"""Bulk transfer client: ``python -m bench.stream_client upload|download HOST PORT BYTES``.

Blocking sockets keep the client cheap so the proxy is the bottleneck. Prints one
JSON object: status, bytes moved, seconds.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import time

_PIECE = bytes(1 << 20)


def _read_head(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed before response head")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, rest


def _drain(sock: socket.socket, headers: dict[str, str], already: bytes) -> tuple[int, bytes]:
    """Read the response body: (its size, its first 4 KiB)."""
    length = int(headers.get("content-length", "-1"))
    got = len(already)
    first = already[:4096]
    buf = bytearray(1 << 20)
    while length < 0 or got < length:
        n = sock.recv_into(buf)
        if n == 0:
            break
        if len(first) < 4096:
            first += bytes(buf[: min(n, 4096 - len(first))])
        got += n
    return got, first


def upload(host: str, port: int, size: int) -> dict[str, object]:
    start = time.perf_counter()
    with socket.create_connection((host, port)) as s:
        s.sendall(
            f"POST /sink HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n".encode()
        )
        left = size
        view = memoryview(_PIECE)
        # The proxy may answer (413, 502) and close before taking the whole body.
        with contextlib.suppress(OSError):
            while left > 0:
                k = min(left, len(_PIECE))
                s.sendall(view[:k])
                left -= k
        status, headers, rest = _read_head(s)
        _, body = _drain(s, headers, rest)
    seconds = time.perf_counter() - start
    try:
        received = int(json.loads(body)["received"])
    except (ValueError, KeyError, TypeError):
        received = -1
    # "bytes" is what reached the upstream, so a proxy that drops data cannot look fast.
    return {"status": status, "bytes": received, "sent": size - left, "seconds": seconds}


def download(host: str, port: int, size: int) -> dict[str, object]:
    start = time.perf_counter()
    with socket.create_connection((host, port)) as s:
        s.sendall(f"GET /bytes/{size} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        status, headers, rest = _read_head(s)
        got, _ = _drain(s, headers, rest)
    return {"status": status, "bytes": got, "seconds": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> int:
    mode, host, port, size = sys.argv[1:] if argv is None else argv
    fn = upload if mode == "upload" else download
    print(json.dumps(fn(host, int(port), int(size))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
