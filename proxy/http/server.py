"""Listening sockets: bound once (shared between workers with SO_REUSEPORT), served by
:class:`proxy.http.protocol.HttpServer`."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable

from proxy.http.config import Address


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
