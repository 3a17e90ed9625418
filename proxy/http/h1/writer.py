"""From message parts to bytes: heads with the framing this package chose, and chunks.

Header lines come from the callers already made (the upstream's as the bytes
received, the proxy's own as text); the framing lines (Content-Length,
Transfer-Encoding, Connection: close) are only ever written here.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Sequence
from http import HTTPStatus

from proxy.http.headers import serialise_head

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"

_date_cache: tuple[int, bytes] = (0, b"")


def http_date() -> bytes:
    """The Date header line, formatted once per second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, b"Date: " + email.utils.formatdate(now, usegmt=True).encode())
    return _date_cache[1]


def phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def response_head(
    status: int,
    reason: str,
    lines: list[bytes],
    length: int | None,
    *,
    chunked: bool = False,
    close: bool = False,
    has_date: bool = False,
) -> bytes:
    """A response head: the header lines plus Date (unless ``has_date``) and the framing.

    Refuses (``ValueError``) a line break inside any line, and a reason that
    is not latin-1 text.
    """
    head = [b"HTTP/1.1 %d %s" % (status, (reason or phrase(status)).encode("latin-1"))]
    head += lines
    if not has_date:
        head.append(http_date())
    if length is not None:
        head.append(b"Content-Length: %d" % length)
    elif chunked:
        head.append(b"Transfer-Encoding: chunked")
    if close:
        head.append(b"Connection: close")
    return serialise_head(head)


def request_head(
    method: str,
    target: str,
    host: str,
    headers: Sequence[tuple[str, str]],
    *,
    length: int | None = None,
    chunked: bool = False,
) -> bytes:
    """The request line and header block, refusing any line break inside a name or value.

    The framing line comes from ``chunked`` or ``length`` (none when neither).
    """
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    elif length is not None:
        lines.append(f"Content-Length: {length}")
    return serialise_head(lines)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)
