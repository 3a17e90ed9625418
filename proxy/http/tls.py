"""Server TLS: TLS ≥ 1.2, optional client-certificate verification and CRL, hot reload.

A reload (SIGHUP) builds a fresh ``SSLContext`` from the files: an existing
context can only gain trust anchors (``load_verify_locations`` adds), so a
client CA removed from ``client_ca_file`` or a certificate newly listed in
``crl_file`` would otherwise stay trusted until a restart.

asyncio keeps the context a server was created with, so :class:`Listener`
starts a new server with the new context on a duplicate of the same listening
socket and then closes the old server. The kernel's accept queue is shared by
both, so no connection is refused in between, and connections already open
are left alone. Restarting the server rather than switching contexts per
handshake (``sni_callback``) matters: TLS session resumption (session ids and
tickets) is decided by the context the server was created with, before any
callback runs, and a resumed session skips client-certificate verification.
With a fresh context, sessions issued before the reload are unknown, so every
client presents its certificate again against the new CA list and CRL.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import socket
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

from cryptography import x509

from proxy.http.config import TLSConfig

log = logging.getLogger("gatehouse.tls")

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")

StartServer = Callable[[socket.socket, ssl.SSLContext | None], Awaitable[asyncio.Server]]


class CrlError(ValueError):
    """The CRL file is unusable; the message says why."""


def check_crl_file(path: Path, now: dt.datetime | None = None) -> int:
    """The number of CRLs in ``path``; raises CrlError unless it holds only current CRLs.

    Only CRLs: the file is loaded into the trust store, where a certificate
    would become a trusted client CA. Current: OpenSSL refuses every client
    once a CRL's nextUpdate has passed, so say so before that happens.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CrlError(f"cannot read: {exc.strerror}") from None
    kinds = set(_PEM_BLOCK.findall(data))
    if kinds - {b"X509 CRL"}:
        raise CrlError("must contain only PEM CRLs ('BEGIN X509 CRL'), no certificates or keys")
    if not kinds:
        raise CrlError("no PEM CRL found ('BEGIN X509 CRL')")
    now = now or dt.datetime.now(dt.UTC)
    count = 0
    for block in re.findall(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", data, re.S):
        try:
            crl = x509.load_pem_x509_crl(block)
        except ValueError:
            raise CrlError(f"CRL {count + 1} cannot be parsed") from None
        next_update = crl.next_update_utc
        if next_update is not None and next_update < now:
            raise CrlError(
                f"CRL {count + 1} ({crl.issuer.rfc4514_string()}) expired at "
                f"{next_update:%Y-%m-%d %H:%M}Z: publish a new one"
            )
        count += 1
    return count


def server_context(config: TLSConfig) -> ssl.SSLContext:
    """A new context from the files; raises OSError, ssl.SSLError or CrlError."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = (
        ssl.TLSVersion.TLSv1_3 if config.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    )
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.set_alpn_protocols(["http/1.1"])
    ctx.load_cert_chain(config.cert_file, config.key_file)
    if config.client_ca_file is not None:
        ctx.load_verify_locations(cafile=str(config.client_ca_file))
        ctx.verify_mode = (
            ssl.CERT_REQUIRED if config.client_auth == "require" else ssl.CERT_OPTIONAL
        )
        if config.crl_file is not None:
            check_crl_file(config.crl_file)
            ctx.load_verify_locations(cafile=str(config.crl_file))
            # The client's own certificate must be in a current CRL of its issuer.
            ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return ctx


class Listener:
    """The proxy's listening socket, served by an asyncio server that a TLS reload replaces."""

    def __init__(self, start: StartServer, sock: socket.socket, tls: TLSConfig | None) -> None:
        self._start = start
        self._sock = sock
        self._tls = tls
        self._server: asyncio.Server | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    async def start(self) -> None:
        context = server_context(self._tls) if self._tls is not None else None
        self._server = await self._start(self._sock, context)

    async def reload(self) -> bool:
        """Serve new connections with a fresh context from the files; keep the old one on error."""
        if self._tls is None:
            return True
        async with self._lock:
            if self._closed:
                return False
            try:
                context = server_context(self._tls)
            except (OSError, ssl.SSLError, CrlError) as exc:
                log.error("tls: reload failed, keeping the current certificates: %s", exc)
                return False
            # The duplicate shares the kernel socket: both servers accept from
            # the same queue until the old one is closed, which closes its own
            # descriptor (so the next reload duplicates the new one).
            sock: socket.socket | None = None
            try:
                sock = self._sock.dup()
                server = await self._start(sock, context)
            except OSError as exc:
                if sock is not None:
                    sock.close()
                log.error("tls: reload failed, keeping the current listener: %s", exc)
                return False
            self._sock = sock
            old, self._server = self._server, server
            if old is not None:
                old.close()  # its open connections carry on; the drain waits for them
            if self._closed:  # shut down while the new server was starting
                server.close()
                return False
        log.info("tls: certificates, client CAs and CRL reloaded")
        return True

    def close(self) -> None:
        """Stop accepting new connections."""
        self._closed = True
        if self._server is not None:
            self._server.close()

    async def wait_closed(self) -> None:
        if self._server is not None:
            await self._server.wait_closed()
