"""From bytes to message parts: heads through llhttp, bodies framed here.

A head is handed to llhttp (``httptools``, strict mode: no bare LF, no
control characters, no space before a colon, no obsolete line folding)
exactly as far as its blank line, never beyond: the bytes that follow are a
body, the next pipelined message, or another protocol after an upgrade, and
which one is this package's decision, not the parser's. llhttp also sees the
bytes of a head still arriving, so a malformed one is refused at once rather
than when it is complete.

Bodies are framed here, with every buffer bounded: Content-Length, chunked
(size lines with their extensions and the trailer section each have a limit,
and llhttp's own chunk parser sets none on extensions) and, for responses,
until the connection closes.
"""

from __future__ import annotations

import re

import httptools

from proxy.http.h1.rules import (
    REQUEST_SINGLETONS,
    IncompleteMessage,
    Limits,
    RemoteProtocolError,
    ambiguous,
    duplicated_singleton,
    malformed,
    too_large,
)

_HEAD_END = b"\r\n\r\n"
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}
_REASONS: dict[bytes, str] = {}

# RFC 9112 §7.1: chunk-size [ chunk-ext ], chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS value ] )
_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
_CHUNK_LINE = re.compile(
    rb"([0-9A-Fa-f]{1,16})(?:[ \t]*;[ \t]*"
    + _TOKEN
    + rb"(?:[ \t]*=[ \t]*(?:"
    + _TOKEN
    + rb"|"
    + _QUOTED
    + rb"))?)*"
)
# RFC 9110 §5.5 field-line, as llhttp's strict mode reads one (used for trailers).
_FIELD_LINE = re.compile(
    _TOKEN + rb":[ \t]*(?:[!-~\x80-\xff](?:[ \t!-~\x80-\xff]*[!-~\x80-\xff])?)?[ \t]*"
)


def _parser_error(exc: httptools.HttpParserError) -> RemoteProtocolError:
    cause = exc.__context__
    if isinstance(cause, RemoteProtocolError):
        return cause  # one of our own checks, raised from a callback
    return malformed(f"llhttp: {exc}")


# What the framing rules read of a header field, by name as sent (cached: a
# client repeats its spellings): a bit per singleton field, plus the fields
# whose values are kept. 0 for every other field.
_SINGLETON_BITS = {name: 1 << i for i, name in enumerate(sorted(REQUEST_SINGLETONS))}
_HOST = _SINGLETON_BITS[b"host"]
_LENGTH = _SINGLETON_BITS[b"content-length"]
_CODING = 1 << 20
_UPGRADE = 1 << 21
_EXPECT = 1 << 22
_ALL_SINGLETONS = sum(_SINGLETON_BITS.values())
_RESPONSE_FIELDS = _LENGTH | _CODING
_CODES: dict[bytes, int] = {}
_MAX_CODES = 4096
_OWS_TAILS = frozenset({b" ", b"\t"})


def _code_of(name: bytes) -> int:
    lower = name.lower()
    code = _SINGLETON_BITS.get(lower, 0)
    if lower == b"transfer-encoding":
        code = _CODING
    elif lower == b"upgrade":
        code = _UPGRADE
    elif lower == b"expect":
        code = _EXPECT
    if len(_CODES) < _MAX_CODES:
        _CODES[name] = code
    return code


class HeadParser:
    """One message head at a time, through llhttp; collects what the framing rules need.

    The llhttp parser is kept for the next head only when llhttp itself saw
    the message end with its head (no body was announced); otherwise it would
    be waiting for body bytes it will never be given, and a fresh one is made.
    """

    __slots__ = (
        "_fed",
        "_fields",
        "_long",
        "_max_head",
        "_max_headers",
        "_max_line",
        "_parser",
        "_request",
        "_seen",
        "codings",
        "complete",
        "expect",
        "headers",
        "host",
        "keep_alive",
        "lengths",
        "message_complete",
        "reason",
        "target",
        "upgrade",
        "wants_upgrade",
    )

    def __init__(self, limits: Limits, *, request: bool) -> None:
        self._max_line = limits.max_line
        self._max_headers = limits.max_headers
        self._max_head = limits.max_head
        self._request = request
        # Singletons are enforced on requests; of responses only the framing fields are read.
        self._fields = (
            _ALL_SINGLETONS | _CODING | _UPGRADE | _EXPECT if request else _RESPONSE_FIELDS
        )
        self._parser: httptools.HttpRequestParser | httptools.HttpResponseParser | None = None
        self._reset()

    def _reset(self) -> None:
        self._fed = 0
        self._seen = 0
        self._long = False  # the head is longer than a line may be: check each line
        self.target = b""
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.host: bytes | None = None
        self.lengths: list[bytes] = []
        self.codings: list[bytes] = []
        self.upgrade: bytes | None = None
        self.expect = b""
        self.complete = False
        self.message_complete = False
        self.keep_alive = False
        self.wants_upgrade = False

    # -- driving it ------------------------------------------------------------
    def read(self, data: bytes | bytearray, pos: int) -> int:
        """Consume one head from ``data[pos:]``; its length, or 0 while it is incomplete.

        Raises :class:`RemoteProtocolError` for a malformed or oversized head.
        """
        fed = self._fed
        # Whatever was already fed holds no blank line: start the search at its end.
        end = data.find(_HEAD_END, pos + fed - 3 if fed > 3 else pos)
        if end < 0:
            pending = len(data) - pos
            if pending > self._max_head:
                raise too_large("head over the size limit")
            if pending > fed:
                self._long = pending > self._max_line
                self._feed(data[pos + fed :], data, pos)
                self._fed = pending
            return 0
        size = end + 4 - pos
        if size > self._max_head:
            raise too_large("head over the size limit")
        # No line of a head shorter than the line limit can exceed it: only a
        # longer head has its lines measured.
        self._long = size > self._max_line
        if not pos and not fed and size == len(data) and type(data) is bytes:
            self._feed(data, data, pos)
        else:
            self._feed(data[pos + fed : pos + size], data, pos)
        if not self.complete:
            raise malformed("head not understood")
        if len(self.headers) > self._max_headers:
            raise too_large("too many header fields")
        return size

    def _feed(self, data: bytes | bytearray, buf: bytes | bytearray, pos: int) -> None:
        parser = self._parser
        if parser is None:
            parser = self._parser = (
                httptools.HttpRequestParser(self)
                if self._request
                else httptools.HttpResponseParser(self)
            )
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # llhttp stops at the end of an upgrade request's head; so do we
        except httptools.HttpParserError as exc:
            if not self._request and self.complete and parser.get_status_code() == 101:  # type: ignore[union-attr]
                return  # llhttp stops after a 101 head, Connection: upgrade or not
            self._parser = None
            error = _parser_error(exc)
            if self._request and error.reason == "malformed_request":
                # llhttp refuses a second Content-Length itself, before our
                # callback sees it: name the ambiguity, not just the refusal.
                name = duplicated_singleton(bytes(buf[pos : pos + self._fed + len(data)]))
                if name is not None:
                    raise ambiguous(f"more than one {name} field") from None
            raise error from None

    def next_message(self) -> None:
        """Forget this head; the parser is kept only if llhttp saw its message end."""
        if not self.message_complete or self.wants_upgrade or not self.keep_alive:
            self._parser = None
        self._reset()

    @property
    def version(self) -> str:
        assert self._parser is not None
        return self._parser.get_http_version()

    @property
    def method(self) -> str:
        assert isinstance(self._parser, httptools.HttpRequestParser)
        raw: bytes = self._parser.get_method()
        return _METHODS.get(raw) or raw.decode("ascii")

    @property
    def status(self) -> int:
        assert isinstance(self._parser, httptools.HttpResponseParser)
        code: int = self._parser.get_status_code()
        return code

    # -- llhttp's callbacks ------------------------------------------------------
    def on_url(self, url: bytes) -> None:
        self.target += url
        if self._long and len(self.target) > self._max_line:
            raise too_large("request target over the line limit")

    def on_status(self, reason: bytes) -> None:
        self.reason += reason
        if self._long and len(self.reason) > self._max_line:
            raise too_large("status line over the line limit")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._long and len(name) + len(value) > self._max_line:
            raise too_large("header field over the line limit")
        if value[-1:] in _OWS_TAILS:
            value = value.rstrip(b" \t")  # llhttp strips the whitespace before a value only
        self.headers.append((name, value))
        code = _CODES.get(name)
        if code is None:
            code = _code_of(name)
        if code & self._fields:
            self._note(code & self._fields, name, value)

    def _note(self, code: int, name: bytes, value: bytes) -> None:
        """Record a field the framing rules read; refuse a second value of a singleton."""
        if self._request and code & _ALL_SINGLETONS:
            if self._seen & code:
                raise ambiguous(f"more than one {name.decode('latin-1').lower()} field")
            self._seen |= code
        if code == _HOST:
            self.host = value
        elif code == _LENGTH:
            self.lengths.append(value)
        elif code == _CODING:
            self.codings.append(value)
        elif code == _UPGRADE:
            self.upgrade = value
        elif code == _EXPECT:
            self.expect = value

    def on_headers_complete(self) -> None:
        # Read now: llhttp forgets a message's flags once the message is complete.
        parser = self._parser
        assert parser is not None
        self.keep_alive = parser.should_keep_alive()
        self.wants_upgrade = parser.should_upgrade()
        self.complete = True

    def on_message_complete(self) -> None:
        self.message_complete = True


class BodyReader:
    """Frames one body out of a buffer: ``read`` returns (data or None, bytes consumed, done)."""

    __slots__ = ()

    def read(self, buf: bytes | bytearray, pos: int, eof: bool) -> tuple[bytes | None, int, bool]:
        raise NotImplementedError


class LengthReader(BodyReader):
    __slots__ = ("remaining",)

    def __init__(self, length: int) -> None:
        self.remaining = length

    def read(self, buf: bytes | bytearray, pos: int, eof: bool) -> tuple[bytes | None, int, bool]:
        data = buf
        available = len(data) - pos
        if available <= 0:
            if eof:
                raise IncompleteMessage("connection closed inside a body")
            return None, 0, False
        take = available if available < self.remaining else self.remaining
        chunk = (
            data
            if pos == 0 and take == len(data) and type(data) is bytes
            else data[pos : pos + take]
        )
        self.remaining -= take
        return bytes(chunk), take, self.remaining == 0


class UntilCloseReader(BodyReader):
    """A response body without Content-Length or chunking: it ends with the connection."""

    __slots__ = ()

    def read(self, buf: bytes | bytearray, pos: int, eof: bool) -> tuple[bytes | None, int, bool]:
        data = buf
        available = len(data) - pos
        if available <= 0:
            return None, 0, eof
        chunk = data if pos == 0 and type(data) is bytes else data[pos:]
        return bytes(chunk), available, False


class ChunkedReader(BodyReader):
    """RFC 9112 §7.1 chunked coding, each part bounded; trailers are checked and dropped."""

    __slots__ = ("_limits", "_remaining", "_stage")

    _SIZE, _DATA, _DATA_END, _TRAILERS = range(4)

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._stage = self._SIZE
        self._remaining = 0

    def read(self, buf: bytes | bytearray, pos: int, eof: bool) -> tuple[bytes | None, int, bool]:
        data = buf
        start = pos
        end = len(data)
        while True:
            stage = self._stage
            if stage == self._DATA:
                available = end - pos
                if available <= 0:
                    break
                take = available if available < self._remaining else self._remaining
                self._remaining -= take
                if self._remaining == 0:
                    self._stage = self._DATA_END
                return bytes(data[pos : pos + take]), pos + take - start, False
            if stage == self._SIZE:
                limit = self._limits.max_chunk_line
                line_end = data.find(b"\r\n", pos, pos + limit + 2)
                if line_end < 0:
                    if end - pos > limit:
                        raise malformed("chunk-size line over the limit")
                    break
                match = _CHUNK_LINE.fullmatch(data, pos, line_end)
                if match is None:
                    raise malformed("invalid chunk-size line")
                size = int(match.group(1), 16)
                pos = line_end + 2
                if size:
                    self._stage, self._remaining = self._DATA, size
                else:
                    self._stage = self._TRAILERS
            elif stage == self._DATA_END:
                if end - pos < 2:
                    break
                if data[pos : pos + 2] != b"\r\n":
                    raise malformed("chunk data not followed by CRLF")
                pos += 2
                self._stage = self._SIZE
            else:  # the trailer section, up to its blank line
                if data[pos : pos + 2] == b"\r\n":
                    return None, pos + 2 - start, True
                section_end = data.find(_HEAD_END, pos, pos + self._limits.max_head + 4)
                if section_end < 0:
                    if end - pos > self._limits.max_head:
                        raise too_large("trailer section over the limit")
                    break
                self._check_trailers(bytes(data[pos:section_end]))
                return None, section_end + 4 - start, True
        if eof:
            raise IncompleteMessage("connection closed inside a chunked body")
        return None, pos - start, False

    def check_ahead(self, buf: bytes | bytearray, pos: int) -> None:
        """Check the framing of what is already buffered of this body, without reading it.

        A chunked body whose framing is broken in the very bytes that came
        with its head is refused with the head, before anything acts on it.
        """
        probe = ChunkedReader(self._limits)
        probe._stage, probe._remaining = self._stage, self._remaining
        end = len(buf)
        while pos < end:
            if probe._stage == self._DATA:
                skip = min(end - pos, probe._remaining)
                probe._remaining -= skip
                pos += skip
                if not probe._remaining:
                    probe._stage = self._DATA_END
                continue
            _, used, done = probe.read(buf, pos, False)
            if done or not used:
                return
            pos += used

    def _check_trailers(self, section: bytes) -> None:
        lines = section.split(b"\r\n")
        if len(lines) > self._limits.max_headers:
            raise too_large("too many trailer fields")
        for line in lines:
            if len(line) > self._limits.max_line or _FIELD_LINE.fullmatch(line) is None:
                raise malformed("invalid trailer field")
