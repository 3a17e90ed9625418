"""Sockets, and aiohttp's low-level server for connections that upgrade to WebSocket.

Plain HTTP is served by :mod:`proxy.http.protocol`; a WebSocket upgrade is
handed over to :class:`GatehouseServer` (aiohttp's ``web.Server``), which
owns ``WebSocketResponse``. aiohttp's C parser (llhttp) rejects malformed
framing; those rejections never reach the gateway's handler, so
:class:`_Protocol` answers them itself, like the lean server does: short
JSON, the connection closed, and one audit record each.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler

from proxy.config.schema import Address, ListenConfig
from proxy.http.forwarding import new_request_id
from proxy.http.responses import error_response
from proxy.observability import metrics
from proxy.observability.audit import AuditRecord, AuditWriter

log = logging.getLogger("gatehouse.server")

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def rejection_response(
    status: int, reason: str, rid: str, clear_on_431: tuple[str, ...] = ()
) -> web.Response:
    """The short JSON answer to a request refused before the gateway. A 431 also
    carries ``clear_on_431`` (Set-Cookie values clearing the session cookies): an
    oversized Cookie header would otherwise lock the browser out, logout included,
    until its cookies expire."""
    response = error_response(status, reason, rid)
    if status == 431:
        for value in clear_on_431:
            response.headers.add("Set-Cookie", value)
    return response


def rejection(exc: BaseException | None, status: int) -> tuple[int, str]:
    """The status and reason code for a request the parser (or aiohttp) refused."""
    if isinstance(exc, LineTooLong) or (
        isinstance(exc, BadHttpMessage) and "Too many headers" in str(exc.message)
    ):
        return 431, "headers_too_large"
    if isinstance(exc, BadHttpMessage) and str(exc.message).startswith("Duplicate "):
        # A singleton (Host, Content-Length, ...) twice: two readers could take either.
        return 400, "ambiguous_request"
    if isinstance(exc, HttpProcessingError) or status == 400:
        return 400, "malformed_request"
    return 500, "internal_error"


class _Protocol(RequestHandler):
    """One connection. Overrides aiohttp's text/HTML error pages."""

    audit: AuditWriter | None = None
    clear_on_431: tuple[str, ...] = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("response already started")
        status, reason = rejection(exc, status)
        if status == 500:
            log.error("internal error handling a request", exc_info=exc)
        else:
            log.debug("rejected request: %s", reason)
        rid = new_request_id()
        response = rejection_response(status, reason, rid, self.clear_on_431)
        response.force_close()
        if self.audit is not None and not request.get("gatehouse.audited"):
            self._audit_rejection(request, status, reason, rid)
        return response

    def _audit_rejection(
        self, request: web.BaseRequest, status: int, reason: str, rid: str
    ) -> None:
        assert self.audit is not None
        peer = self.transport.get_extra_info("peername") if self.transport is not None else None
        audit_rejection(self.audit, peer, status, reason, rid)


def audit_rejection(audit: AuditWriter, peer: Any, status: int, reason: str, rid: str) -> None:
    """The one audit record of a request refused before it reached the gateway."""
    record = AuditRecord(
        ts_epoch=time.time(),
        request_id=rid,
        client_ip=str(peer[0]) if isinstance(peer, tuple) else None,
        decision="deny",
        reason=reason,
        status=status,
    )
    metrics.REQUESTS.labels("none", f"{status // 100}xx").inc()
    audit.write(record)


class GatehouseServer(web.Server):
    def __init__(
        self,
        handler: Handler,
        audit: AuditWriter | None,
        clear_on_431: tuple[str, ...] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self._audit = audit
        self._clear_on_431 = clear_on_431

    def __call__(self) -> RequestHandler:
        protocol = _Protocol(self, loop=self._loop, **self._kwargs)
        protocol.audit = self._audit
        protocol.clear_on_431 = self._clear_on_431
        return protocol


def make_server(
    handler: Handler,
    listen: ListenConfig,
    audit: AuditWriter | None,
    clear_on_431: tuple[str, ...] = (),
) -> GatehouseServer:
    return GatehouseServer(
        handler,
        audit,
        clear_on_431,
        access_log=None,
        keepalive_timeout=listen.keepalive_timeout,
        max_line_size=listen.max_header_size,
        max_field_size=listen.max_header_size,
        max_headers=listen.max_headers,
        auto_decompress=False,
        lingering_time=2.0,
    )


def bind_socket(address: Address, *, reuse_port: bool, backlog: int) -> socket.socket:
    """A listening socket; with ``reuse_port`` several workers share the port."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((address.host, address.port))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


async def start_listener(
    server: Callable[[], asyncio.BaseProtocol],
    sock: socket.socket,
    ssl_context: ssl.SSLContext | None,
) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        server, sock=sock, ssl=ssl_context, ssl_handshake_timeout=10.0 if ssl_context else None
    )
