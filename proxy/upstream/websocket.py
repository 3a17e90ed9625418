"""WebSocket upgrades: authorised like any request, then relayed message by message.

Both sides of the proxy speak the WebSocket protocol through ``wsproto``
(sans-I/O, from the h11 authors) over the connections of the proxy's own
HTTP/1.1 edges: the client's connection switches after the gateway decided
(:meth:`proxy.http.protocol.Request.switch_protocols`), the upstream's is a
connection of the upstream client that asked for the switch
(:meth:`proxy.upstream.client.UpstreamClient.open_tunnel`). Each side has its
own handshake (the proxy's key upstream, the client's key answered here), no
extension is negotiated (nothing is inflated), and frames are relayed as
they arrive, so what one connection holds is bounded by its read buffer,
whatever the size of a message. Limits: a message larger than
``listen.websocket_max_message`` closes both sides (1009 to its sender), and
no frame either way for ``listen.websocket_idle_timeout`` closes both (1001).
Pings are answered by the proxy on each side.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Event, Ping, TextMessage
from wsproto.frame_protocol import CloseReason

from proxy.errors import (
    AuditReason,
    MalformedRequest,
    Reason,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from proxy.http.flow import Tunnel
from proxy.http.protocol import Request, Written
from proxy.upstream.client import (
    ClientFailure,
    ConnectTimeout,
    ResponseTimeout,
    UpstreamClient,
    parse_origin,
)
from proxy.upstream.config import BackendView
from proxy.upstream.tally import ExchangeTally

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_CLOSE_GRACE = 2.0  # after one side closed, how long the other may take to finish
_READ_AHEAD = 2**16  # bytes read from one side before its socket pauses


@dataclass(frozen=True, slots=True)
class WebSocketLimits:
    max_message: int = 16 * 2**20
    idle_timeout: float = 300.0  # 0 = never


def accept_token(key: bytes) -> bytes:
    """RFC 6455 §4.2.2: the ``Sec-WebSocket-Accept`` value for a ``Sec-WebSocket-Key``."""
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())  # noqa: S324 (protocol-mandated)


def is_websocket_upgrade(request: Request) -> bool:
    """A GET asking to switch to the WebSocket protocol (a body rules it out)."""
    return request.method == "GET" and request.upgrade == "websocket" and not request.body_exists


def _client_key(request: Request) -> bytes:
    """The client's handshake key, checked (RFC 6455 §4.2.1): 16 random bytes, base64."""
    headers = request.headers
    if headers.get("Sec-WebSocket-Version", "").strip() != "13":
        raise MalformedRequest(detail="unsupported WebSocket version")
    key = headers.get("Sec-WebSocket-Key", "").strip().encode("latin-1", "replace")
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            raise ValueError("key length")
    except (ValueError, binascii.Error) as exc:
        raise MalformedRequest(detail="bad Sec-WebSocket-Key") from exc
    return key


def _protocols(request: Request) -> list[str]:
    values = request.headers.getall("Sec-WebSocket-Protocol", [])
    return [p.strip() for value in values for p in value.split(",") if p.strip()]


def _field(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


async def proxy_websocket(
    client: UpstreamClient,
    request: Request,
    *,
    base_url: str,
    path_qs: str,
    headers: Sequence[tuple[str, str]],
    tally: ExchangeTally,
    request_id: str,
    backend: BackendView,
    limits: WebSocketLimits,
    host: str | None = None,
    ssl_context: ssl.SSLContext | bool = True,
    server_hostname: str | None = None,
) -> Written:
    """Open the upstream WebSocket, switch the client's connection, relay until either closes."""
    client_key = _client_key(request)
    protocols = _protocols(request)
    key = base64.b64encode(os.urandom(16))
    # Only end-to-end headers travel; this side's handshake is the proxy's own.
    forwarded = [(k, v) for k, v in headers if not k.lower().startswith("sec-websocket-")]
    forwarded += [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", key.decode("ascii")),
    ]
    if protocols:
        forwarded.append(("Sec-WebSocket-Protocol", ", ".join(protocols)))
    timeouts = backend.timeouts
    try:
        response, upstream = await client.open_tunnel(
            parse_origin(base_url),
            path_qs,
            forwarded,
            limit=_READ_AHEAD,
            connect_timeout=timeouts.connect,
            deadline=timeouts.total,
            ssl_context=ssl_context if isinstance(ssl_context, ssl.SSLContext) else None,
            server_hostname=server_hostname,
            host=host,
            max_connections=backend.max_connections,
        )
    except (ResponseTimeout, ConnectTimeout, TimeoutError) as exc:
        raise UpstreamTimeout(detail=f"websocket handshake: {exc}") from exc
    except ClientFailure as exc:
        raise UpstreamConnectError(detail=f"websocket handshake: {exc}") from exc
    if upstream is None:
        raise UpstreamConnectError(Reason.UPSTREAM_REFUSED_UPGRADE, detail=str(response.status))
    chosen = _field(response.headers, b"sec-websocket-protocol")
    if (
        _field(response.headers, b"sec-websocket-accept") != accept_token(key)
        or _field(response.headers, b"sec-websocket-extensions") is not None
        or (chosen is not None and chosen.decode("latin-1") not in protocols)
    ):
        upstream.abort()
        raise UpstreamProtocolError(detail="upstream WebSocket handshake answer not valid")
    tally.upstream_status = 101
    lines = [
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Accept: " + accept_token(client_key),
        b"Server: gatehouse",
        b"X-Request-Id: " + request_id.encode("latin-1"),
    ]
    if chosen is not None:
        lines.append(b"Sec-WebSocket-Protocol: " + chosen)
    try:
        downstream = request.switch_protocols(lines, _READ_AHEAD)
    except BaseException:
        upstream.abort()
        raise
    await _Relay(downstream, upstream, tally, limits).run()
    return Written(101)


class _Side:
    """One connection of the relay: its tunnel and its WebSocket protocol state."""

    __slots__ = ("tunnel", "ws")

    def __init__(self, tunnel: Tunnel, role: ConnectionType) -> None:
        self.tunnel = tunnel
        self.ws = Connection(role)

    def send(self, event: Event) -> None:
        with contextlib.suppress(ConnectionError):
            self.tunnel.write(self.ws.send(event))

    def close(self, code: int) -> None:
        """Start (or finish) the closing handshake on this side, if it is still open."""
        if self.ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            self.send(CloseConnection(code=code))


class _Relay:
    __slots__ = ("_activity", "_client", "_limits", "_tally", "_upstream")

    def __init__(
        self, downstream: Tunnel, upstream: Tunnel, tally: ExchangeTally, limits: WebSocketLimits
    ) -> None:
        self._client = _Side(downstream, ConnectionType.SERVER)
        self._upstream = _Side(upstream, ConnectionType.CLIENT)
        self._tally = tally
        self._limits = limits
        self._activity = 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._activity = loop.time()
        pumps = [
            asyncio.ensure_future(self._pump(self._client, self._upstream, "bytes_in")),
            asyncio.ensure_future(self._pump(self._upstream, self._client, "bytes_out")),
        ]
        idle = self._limits.idle_timeout
        check_every = min(idle / 4, 5.0) if idle else None
        try:
            while True:
                done, _ = await asyncio.wait(
                    pumps, timeout=check_every, return_when=asyncio.FIRST_COMPLETED
                )
                if done:
                    break
                if idle and loop.time() - self._activity > idle:
                    self._tally.cut_reason = AuditReason.WEBSOCKET_IDLE_TIMEOUT
                    self._client.close(CloseReason.GOING_AWAY)
                    self._upstream.close(CloseReason.GOING_AWAY)
                    break
            # One side ended: the other has a moment to finish its closing handshake.
            await asyncio.wait(pumps, timeout=_CLOSE_GRACE)
        except asyncio.CancelledError:
            # The drain deadline: both sides are told the proxy is going away.
            self._tally.cut_reason = Reason.SHUTTING_DOWN
            self._client.close(CloseReason.GOING_AWAY)
            self._upstream.close(CloseReason.GOING_AWAY)
            raise
        finally:
            for pump in pumps:
                pump.cancel()
            for pump in pumps:
                with contextlib.suppress(BaseException):
                    await pump
            self._client.tunnel.close()
            self._upstream.tunnel.close()

    async def _pump(self, source: _Side, sink: _Side, counter: str) -> None:
        """Relay what ``source`` sends to ``sink`` until ``source`` closes."""
        loop = asyncio.get_running_loop()
        tally = self._tally
        limit = self._limits.max_message
        message = 0  # bytes of the message in progress
        while True:
            data = await source.tunnel.read()
            self._activity = loop.time()
            source.ws.receive_data(data or None)
            for event in source.ws.events():
                if isinstance(event, TextMessage | BytesMessage):
                    out: TextMessage | BytesMessage
                    if isinstance(event, TextMessage):
                        size = len(event.data.encode())
                        out = TextMessage(data=event.data, message_finished=event.message_finished)
                    else:
                        size = len(event.data)
                        out = BytesMessage(data=event.data, message_finished=event.message_finished)
                    message += size
                    if message > limit:
                        tally.cut_reason = AuditReason.WEBSOCKET_MESSAGE_TOO_LARGE
                        source.close(CloseReason.MESSAGE_TOO_BIG)
                        sink.close(CloseReason.GOING_AWAY)
                        return
                    sink.send(out)
                    setattr(tally, counter, getattr(tally, counter) + size)
                    if event.message_finished:
                        message = 0
                elif isinstance(event, Ping):
                    source.send(event.response())
                elif isinstance(event, CloseConnection):
                    # Answer the closer (or, for a frame wsproto could not parse, close
                    # it with the reason), and pass the close on to the other side.
                    code = event.code
                    if code == CloseReason.ABNORMAL_CLOSURE:  # the connection just ended
                        code = CloseReason.GOING_AWAY
                    source.close(code)
                    sink.close(code)
                    return
            with contextlib.suppress(ConnectionError):
                await sink.tunnel.drain()
            if not data:
                return
