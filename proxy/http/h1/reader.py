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

from proxy.errors import MalformedRequest
from proxy.http.h1.rules import (
    CHUNKED,
    REQUEST_SINGLETONS,
    IncompleteMessage,
    Limits,
    RemoteProtocolError,
    ambiguous,
    duplicated_singleton,
    malformed,
    request_framing,
    response_framing,
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


class _SecondMessage(Exception):
    """Raised from llhttp's callback when a read meant for one head meets another."""


class _NotWhole(Exception):
    """Raised from llhttp's callback when an answer read whole turns out not to be."""


def _parser_error(exc: httptools.HttpParserError) -> RemoteProtocolError:
    cause = exc.__context__
    if isinstance(cause, RemoteProtocolError):
        return cause  # one of our own checks, raised from a callback
    return malformed(f"llhttp: {exc}")


# What the framing rules read of a header field, by name as sent (cached: a
# client repeats its spellings): a bit per singleton field, and the fields
# whose values are kept. 0 for every other field.
_SINGLETON_BITS = {name: 1 << i for i, name in enumerate(sorted(REQUEST_SINGLETONS))}
_HOST = _SINGLETON_BITS[b"host"]
_LENGTH = _SINGLETON_BITS[b"content-length"]
_CODING = 1 << 20
_UPGRADE = 1 << 21
_EXPECT = 1 << 22
_ALL_SINGLETONS = sum(_SINGLETON_BITS.values())
_CODES: dict[bytes, int] = {}
_MAX_CODES = 4096


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


class RequestHead:
    """A parsed request head. ``framing`` is the body's length, or ``CHUNKED``.

    The ``raw_`` fields are bytes as received. The owner of a
    :class:`RequestHeadParser` may have it build a subclass (with slots of its
    own): the request then exists once.
    """

    __slots__ = (
        "expect_continue",
        "framing",
        "keep_alive",
        "method",
        "raw_headers",
        "raw_host",
        "raw_upgrade",
        "size",
        "target",
        "version",
    )

    def __init__(
        self,
        method: str,
        target: str,
        version: str,
        raw_headers: list[tuple[bytes, bytes]],
        raw_host: bytes | None,
        framing: int,
        keep_alive: bool,
        raw_upgrade: bytes | None,
        expect_continue: bool,
        size: int,
    ) -> None:
        self.method = method
        self.target = target  # as sent, decoded UTF-8 (undecodable bytes kept as surrogates)
        self.version = version  # "1.0" or "1.1"
        self.raw_headers = raw_headers  # (name, value), trailing whitespace removed
        self.raw_host = raw_host
        self.framing = framing
        self.keep_alive = keep_alive
        self.raw_upgrade = raw_upgrade  # the Upgrade value when the request asks to switch
        self.expect_continue = expect_continue
        self.size = size  # bytes of the head


class ResponseHead:
    """A parsed response head (an informational one when ``status`` < 200).

    ``body`` is the whole body when it was already received with the head
    (then no body events follow): the common small answer in one step.
    """

    __slots__ = (
        "body",
        "content_length",
        "framing",
        "headers",
        "keep_alive",
        "reason",
        "size",
        "status",
    )

    def __init__(
        self,
        status: int,
        reason: str,
        headers: list[tuple[bytes, bytes]],
        framing: int,
        content_length: int | None,
        keep_alive: bool,
        size: int,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.framing = framing  # a length (0: no body), CHUNKED or UNTIL_CLOSE
        self.content_length = content_length  # announced, for a body that may follow (or HEAD)
        self.keep_alive = keep_alive
        self.size = size
        self.body: bytes | None = None


class _HeadParser:
    """One message head at a time, through llhttp: fed exactly to its blank line.

    The llhttp parser is kept for the next head only when llhttp itself ended
    the message with its head (no body announced, keep-alive); otherwise it
    would be waiting for body bytes it will never be given, and a fresh one is
    made. A head shorter than the line limit cannot hold a line over it, so its
    fields are not measured one by one: ``_careful`` says when that is needed.
    """

    __slots__ = (
        "_careful",
        "_fed",
        "_max_head",
        "_max_headers",
        "_max_line",
        "_parser",
        "codings",
        "complete",
        "headers",
        "keep_alive",
        "lengths",
    )

    def __init__(self, limits: Limits) -> None:
        self._max_line = limits.max_line
        self._max_headers = limits.max_headers
        self._max_head = limits.max_head
        self._parser: httptools.HttpRequestParser | httptools.HttpResponseParser | None = None
        self._reset()

    def _reset(self) -> None:
        self._fed = 0
        self._careful = False
        self.headers: list[tuple[bytes, bytes]] = []
        self.lengths: list[bytes] = []
        self.codings: list[bytes] = []
        self.complete = False
        self.keep_alive = False

    def _new_parser(self) -> httptools.HttpRequestParser | httptools.HttpResponseParser:
        raise NotImplementedError

    def _measure(self, name: bytes, value: bytes) -> None:
        if len(name) + len(value) > self._max_line:
            raise too_large("header field over the line limit")

    def _scan(self, data: bytes | bytearray, pos: int) -> int:
        """Feed llhttp one head from ``data[pos:]``; its size, or 0 while it is incomplete.

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
                # Fed as it arrives: a malformed head is refused at its first bad byte.
                self._careful = True
                self._feed(data[pos + fed :], data, pos)
                self._fed = pending
            return 0
        size = end + 4 - pos
        if size > self._max_head:
            raise too_large("head over the size limit")
        head: bytes | bytearray = data  # the common case: the head is all that was received
        if pos or fed or size != len(data):
            head = data[pos + fed : pos + size]
        if not fed:
            self._careful = len(head) > self._max_line
        parser = self._parser
        if parser is None:
            parser = self._parser = self._new_parser()
        try:
            parser.feed_data(head)
        except httptools.HttpParserUpgrade:
            pass  # llhttp stops at the end of an upgrade's head; so do we
        except httptools.HttpParserError as exc:
            self._parser = None
            error = self._refusal(exc, bytes(data[pos : pos + size]))
            if error is not None:
                raise error from None
        if not self.complete:
            raise malformed("head not understood")
        if len(self.headers) > self._max_headers:
            raise too_large("too many header fields")
        return size

    def _feed(self, data: bytes | bytearray, buf: bytes | bytearray, pos: int) -> None:
        """Feed the part of a head that arrived (refusing it at its first bad byte)."""
        parser = self._parser
        if parser is None:
            parser = self._parser = self._new_parser()
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._parser = None
            error = self._refusal(exc, bytes(buf[pos : pos + self._fed + len(data)]))
            if error is not None:
                raise error from None

    def _refusal(self, exc: httptools.HttpParserError, head: bytes) -> RemoteProtocolError | None:
        """The error a refusal by llhttp stands for (None: not an error after all)."""
        return _parser_error(exc)

    def discard(self) -> None:
        """Forget a head that was refused or cut off, and the llhttp state it left."""
        self._parser = None
        self._reset()


class RequestHeadParser(_HeadParser):
    """Request heads, with the singleton fields refused when repeated."""

    __slots__ = (
        "_flags",
        "_make",
        "_raw_method",
        "_seen",
        "_target",
        "expect",
        "host",
        "method",
        "upgrade",
        "wants",
    )

    def __init__(self, limits: Limits, head_type: type[RequestHead] = RequestHead) -> None:
        super().__init__(limits)
        self._make = head_type

    def _reset(self) -> None:
        super()._reset()
        self._seen = 0
        self._flags = 0  # Content-Length, Transfer-Encoding, Upgrade or Expect seen
        self._target = b""
        self.host: bytes | None = None
        self.upgrade: bytes | None = None
        self.expect = b""
        self.method = ""
        self._raw_method = b""
        self.wants = False

    def _new_parser(self) -> httptools.HttpRequestParser:
        return httptools.HttpRequestParser(self)

    def _refusal(self, exc: httptools.HttpParserError, head: bytes) -> RemoteProtocolError:
        error = _parser_error(exc)
        if error.rejection is MalformedRequest:
            # llhttp refuses a second Content-Length itself, before our
            # callback sees it: name the ambiguity, not just the refusal.
            name = duplicated_singleton(head)
            if name is not None:
                return ambiguous(f"more than one {name} field")
        return error

    def read(self, data: bytes | bytearray, pos: int) -> RequestHead | None:
        """The next request head in ``data[pos:]`` (None while it is incomplete)."""
        if (
            not pos
            and not self._fed
            and type(data) is bytes
            and data.endswith(_HEAD_END)
            and len(data) <= self._max_head
            and self._whole(data)
        ):
            size = len(data)
        else:
            size = self._scan(data, pos)
            if not size:
                return None
        # The version, read where the request line puts it (llhttp checked the line).
        at = pos + len(self._raw_method) + len(self._target) + 2
        if data.startswith(b"HTTP/1.1\r\n", at):
            version = "1.1"
        elif data.startswith(b"HTTP/1.0\r\n", at):
            version = "1.0"
        else:
            raise malformed("HTTP version other than 1.0 and 1.1")
        host = self.host
        if host is None and version == "1.1":
            raise malformed("no Host field")
        keep_alive = self.keep_alive and version == "1.1"  # HTTP/1.0: its answer ends it
        if self._flags:
            head = self._framed(version, host, keep_alive, size)
        else:
            # The common request: no body, no upgrade, no expectation.
            head = self._make(
                self.method,
                self._target.decode("utf-8", "surrogateescape"),
                version,
                self.headers,
                host,
                0,
                keep_alive,
                None,
                False,
                size,
            )
            if not keep_alive:
                self._parser = None
        self._seen = self._fed = 0
        self.complete = self._careful = False
        self.headers = []
        self._target = b""
        self.host = None
        return head

    def _framed(self, version: str, host: bytes | None, keep_alive: bool, size: int) -> RequestHead:
        """A request with framing fields, an upgrade or an expectation: the full rules."""
        framing = request_framing(self.lengths, self.codings)
        if version == "1.0" and framing == CHUNKED:
            raise malformed("Transfer-Encoding in an HTTP/1.0 request")
        upgrade = self.upgrade if self.wants else None
        head = self._make(
            self.method,
            self._target.decode("utf-8", "surrogateescape"),
            version,
            self.headers,
            host,
            framing,
            keep_alive,
            upgrade,
            version == "1.1" and self.expect.lower() == b"100-continue",
            size,
        )
        # llhttp ended the message with its head only when no body was announced.
        if framing or not keep_alive or self.wants:
            self._parser = None
        self._flags = 0
        self.wants = False
        self.lengths = []
        self.codings = []
        self.expect = b""
        self.upgrade = None
        return head

    def _whole(self, data: bytes) -> bool:
        """Read all of ``data`` as one head, if that is what it is: the common case of a
        GET received alone, without searching for its end first.

        True when llhttp read exactly one message and it announced no body: its
        head is then all of ``data`` (llhttp skips nothing after a message but
        the empty lines RFC 9112 §2.2 lets a server ignore). Anything else (a
        body, a second request, an error after the first head) is undone, for
        the exact path to read again; an error inside the first head is the
        head's refusal.
        """
        self._careful = len(data) > self._max_line
        parser = self._parser
        if parser is None:
            parser = self._parser = httptools.HttpRequestParser(self)
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            if upgrade.args and upgrade.args[0] == len(data):
                return self._checked()
        except httptools.HttpParserError as exc:
            if not self.complete:
                self._parser = None
                # Only the first head counts: what follows it is not read yet.
                error = self._refusal(exc, data[: data.find(_HEAD_END) + 4])
                if error is not None:
                    raise error from None
        else:
            if self.complete and not self.lengths and not self.codings:
                return self._checked()
        self.discard()  # read again exactly
        return False

    def _checked(self) -> bool:
        if len(self.headers) > self._max_headers:
            raise too_large("too many header fields")
        return True

    # -- llhttp's callbacks ------------------------------------------------------
    def on_url(self, url: bytes) -> None:
        if self.complete:
            # A second request behind the first: stop, and read them one by one.
            raise _SecondMessage
        self._target += url
        if self._careful and len(self._target) > self._max_line:
            raise too_large("request target over the line limit")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._careful:
            self._measure(name, value)
        # llhttp strips the whitespace before a value only (rstrip returns the
        # value itself when there is none after it).
        value = value.rstrip(b" \t")
        self.headers.append((name, value))
        code = _CODES.get(name)
        if code is None:
            code = _code_of(name)
        if code:
            if code == _HOST and not self._seen & _HOST:
                self._seen |= _HOST  # the first Host: the one field every request has
                self.host = value
            else:
                self._note(code, name, value)

    def _note(self, code: int, name: bytes, value: bytes) -> None:
        """Record a field the framing rules read; refuse a second value of a singleton."""
        if code & _ALL_SINGLETONS:
            if self._seen & code:
                raise ambiguous(f"more than one {name.decode('latin-1').lower()} field")
            self._seen |= code
            if code == _HOST:
                self.host = value
                return
        if code == _LENGTH:
            self.lengths.append(value)
        elif code == _CODING:
            self.codings.append(value)
        elif code == _UPGRADE:
            self.upgrade = value
        elif code == _EXPECT:
            self.expect = value
        else:
            return
        self._flags = 1

    def on_headers_complete(self) -> None:
        # Read now: llhttp forgets a message's flags once the message is complete.
        parser = self._parser
        assert isinstance(parser, httptools.HttpRequestParser)
        self.keep_alive = parser.should_keep_alive()
        if self._flags:
            self.wants = parser.should_upgrade()
        raw = self._raw_method = parser.get_method()
        self.method = _METHODS.get(raw) or raw.decode("ascii")
        self.complete = True


class ResponseHeadParser(_HeadParser):
    """Response heads: only the framing fields are read of them."""

    __slots__ = ("_reason", "_rest", "status")

    def _reset(self) -> None:
        super()._reset()
        self._reason = b""
        self.status = 0
        self._rest = -1  # reading a whole answer: the bytes after its head

    def _new_parser(self) -> httptools.HttpResponseParser:
        return httptools.HttpResponseParser(self)

    def _refusal(self, exc: httptools.HttpParserError, head: bytes) -> RemoteProtocolError | None:
        if self.complete and self.status == 101:
            return None  # llhttp stops after a 101 head, Connection: upgrade or not
        return _parser_error(exc)

    def read(self, data: bytes | bytearray, pos: int, method: str) -> ResponseHead | None:
        """The next response head in ``data[pos:]`` to a ``method`` request (None while
        it is incomplete)."""
        size = 0
        if not pos and not self._fed and type(data) is bytes and method != "HEAD":
            size = self._whole(data)
        whole = size > 0
        if not whole:
            size = self._scan(data, pos)
            if not size:
                return None
        status = self.status
        lengths = self.lengths
        codings = self.codings
        length = None
        bodiless = status < 200 or status == 204 or status == 304
        if codings or len(lengths) != 1:
            framing = response_framing(method, status, lengths, codings)
            if lengths and not codings and not bodiless:
                length = int(lengths[0])  # checked by response_framing
        else:
            # The common answer, one Content-Length: the same rule, without the call.
            value = lengths[0]
            if not value.isdigit() or len(value) > 18 or not value.isascii():
                raise malformed("invalid Content-Length")
            if bodiless:
                framing = 0
            else:
                length = int(value)
                framing = 0 if method == "HEAD" else length
            self.lengths = []
        head = ResponseHead(
            status,
            self._reason.decode("latin-1"),
            self.headers,
            framing,
            length,
            self.keep_alive,
            size,
        )
        # llhttp ended the message with its head only for an informational answer,
        # 204, 304 and a zero length (it does not know HEAD: it waits for the body);
        # a whole answer it read to its end.
        if not self.keep_alive or not (
            whole
            or (status < 200 and status != 101)
            or status == 204
            or status == 304
            or (length == 0 and not codings)
        ):
            self._parser = None
        if codings or lengths:
            self.lengths = []
            self.codings = []
        self._fed = self.status = 0
        self.complete = self._careful = False
        self.headers = []
        self._reason = b""
        return head

    def _whole(self, data: bytes) -> int:
        """Read all of ``data`` as one answer, if that is what it is: the common small
        answer whose head and whole Content-Length body came together, fed to
        llhttp in one piece (so its parser ends the message and is kept for the
        next). Its head's size; or 0, with nothing read, for the exact path to
        read it (and refuse it, if it must be refused).
        """
        end = data.find(_HEAD_END)
        if end < 0 or end + 4 > self._max_head:
            return 0
        size = end + 4
        self._careful = size > self._max_line
        self._rest = len(data) - size
        parser = self._parser
        if parser is None:
            parser = self._parser = httptools.HttpResponseParser(self)
        try:
            parser.feed_data(data)
        except httptools.HttpParserError:
            self.discard()  # not one whole answer (on_headers_complete said), or not valid
            return 0
        self._rest = -1
        if len(self.headers) > self._max_headers:
            raise too_large("too many header fields")
        return size

    # -- llhttp's callbacks ------------------------------------------------------
    def on_status(self, reason: bytes) -> None:
        self._reason += reason
        if self._careful and len(self._reason) > self._max_line:
            raise too_large("status line over the line limit")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._careful:
            self._measure(name, value)
        value = value.rstrip(b" \t")  # as for requests
        self.headers.append((name, value))
        size = len(name)
        if size == 14 or size == 17:  # the only framing fields: the rest are not lower-cased
            lower = name.lower()
            if lower == b"content-length":
                self.lengths.append(value)
            elif lower == b"transfer-encoding":
                self.codings.append(value)

    def on_headers_complete(self) -> None:
        parser = self._parser
        assert isinstance(parser, httptools.HttpResponseParser)
        self.keep_alive = parser.should_keep_alive()
        status = self.status = parser.get_status_code()
        self.complete = True
        rest = self._rest
        if rest >= 0 and (
            # Reading a whole answer: it must be a final one with exactly the rest
            # of the bytes as its Content-Length body, or llhttp stops here.
            status < 200
            or status == 204
            or status == 304
            or self.codings
            or len(self.lengths) != 1
            or int(self.lengths[0]) != rest
        ):
            raise _NotWhole


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
