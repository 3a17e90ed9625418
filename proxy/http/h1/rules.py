"""The framing rules of HTTP/1.1 messages (RFC 9112 §6, RFC 9110 §6.4.1), as plain decisions.

Which body a message has, which header fields may appear only once, and the
limits on everything a peer can make us hold. llhttp (strict mode) checks the
syntax of each line; these rules decide what the lines mean, and they are the
same for the listener and the upstream client.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from proxy.errors import AmbiguousRequest, HeadersTooLarge, MalformedRequest, RequestRejected

# A body's framing as one int: a length (0 = no body), or one of these.
CHUNKED = -1
UNTIL_CLOSE = -2  # responses only: the body ends when the connection does

_MAX_LENGTH_DIGITS = 18  # below 2**63: no integer wider than a machine word is ever built


class RemoteProtocolError(Exception):
    """The peer broke HTTP/1.1. ``rejection`` is the error a server answers it with."""

    def __init__(self, detail: str, rejection: type[RequestRejected] = MalformedRequest) -> None:
        super().__init__(detail)
        self.detail = detail
        self.rejection = rejection

    def rejected(self) -> RequestRejected:
        """The refusal of a request that broke the rules this way."""
        return self.rejection(detail=self.detail)


class IncompleteMessage(RemoteProtocolError):
    """The connection ended inside a message (a head or a framed body)."""


def malformed(detail: str) -> RemoteProtocolError:
    return RemoteProtocolError(detail)


def too_large(detail: str) -> RemoteProtocolError:
    return RemoteProtocolError(detail, HeadersTooLarge)


def ambiguous(detail: str) -> RemoteProtocolError:
    """Two values where one is allowed: two readers could frame the message differently."""
    return RemoteProtocolError(detail, AmbiguousRequest)


@dataclass(frozen=True, slots=True)
class Limits:
    """What one message may make us hold before it is refused.

    ``max_line`` bounds the start line and each header field line; the whole
    head (and a chunked body's trailer section) is bounded by ``max_head`` and
    ``max_headers``; a chunk-size line, extensions included, by
    ``max_chunk_line``.
    """

    max_line: int = 8190
    max_headers: int = 100
    max_head: int = 64 * 1024
    max_chunk_line: int = 4096


# RFC 9110 fields that admit one value: a second one is refused rather than
# guessed at (two servers would pick different ones). Content-Length and Host
# are the ones smuggling and routing confusion are built from.
# (Transfer-Encoding is a list: its lines are read together, see only_chunked.)
REQUEST_SINGLETONS = frozenset(
    {
        b"content-length",
        b"host",
        b"content-location",
        b"content-range",
        b"content-type",
        b"etag",
        b"max-forwards",
        b"server",
        b"user-agent",
    }
)


def status_has_body(status: int) -> bool:
    """RFC 9110 §6.4.1: 1xx, 204 and 304 answers never carry content (nor a length)."""
    return status >= 200 and status != 204 and status != 304


def response_has_body(method: str, status: int) -> bool:
    """A HEAD answer carries the length of the body it omits, but never the body."""
    return method != "HEAD" and status_has_body(status)


def content_length(value: bytes) -> int:
    """A Content-Length value: digits only (RFC 9110 §8.6), no list, no sign, bounded."""
    if not value.isdigit() or not value.isascii() or len(value) > _MAX_LENGTH_DIGITS:
        raise malformed("invalid Content-Length")
    return int(value)


def only_chunked(codings: Sequence[bytes]) -> bool:
    """The transfer codings, all lines together, are exactly ``chunked``.

    RFC 9112 §6.1 lets a message apply other codings before chunked; a proxy
    that forwards bodies as they are cannot honour them, and a coding list
    two parsers read differently is how requests are smuggled: only the one
    coding is accepted.
    """
    items = [item.strip().lower() for value in codings for item in value.split(b",")]
    return items == [b"chunked"]


def request_framing(lengths: Sequence[bytes], codings: Sequence[bytes]) -> int:
    """How a request's body is delimited (RFC 9112 §6.3): a length, or :data:`CHUNKED`."""
    if codings:
        if lengths:
            raise malformed("both Content-Length and Transfer-Encoding")
        if not only_chunked(codings):
            raise malformed("Transfer-Encoding other than chunked")
        return CHUNKED
    if not lengths:
        return 0
    if len(lengths) > 1:
        raise ambiguous("more than one Content-Length")
    return content_length(lengths[0])


def response_framing(
    method: str, status: int, lengths: Sequence[bytes], codings: Sequence[bytes]
) -> int:
    """How a response's body is delimited: a length, :data:`CHUNKED` or :data:`UNTIL_CLOSE`.

    A HEAD answer and 1xx/204/304 end with their head whatever they announce;
    what they announce must still be well-formed.
    """
    if codings:
        if lengths:
            raise malformed("both Content-Length and Transfer-Encoding")
        if not only_chunked(codings):
            raise malformed("Transfer-Encoding other than chunked")
    if len(lengths) > 1:
        raise malformed("more than one Content-Length")
    length = content_length(lengths[0]) if lengths else None
    if not response_has_body(method, status):
        return 0
    if codings:
        return CHUNKED
    return UNTIL_CLOSE if length is None else length


def duplicated_singleton(head: bytes) -> str | None:
    """The first singleton field named twice in a raw request head, if any.

    Read loosely (this runs only on a head llhttp refused, to name why).
    """
    seen: set[bytes] = set()
    for line in head.split(b"\r\n")[1:]:
        name = line.partition(b":")[0].strip().lower()
        if name in REQUEST_SINGLETONS:
            if name in seen:
                return name.decode("latin-1")
            seen.add(name)
    return None
