"""Client TLS towards a backend: trust, upstream mutual TLS, SNI, TLS ≥ 1.2.

One ``SSLContext`` per backend, built once at start-up and shared by the
forwarder and the health checker, so both see exactly the same trust.
:func:`reload_files` loads renewed files into that same context (SIGHUP), so
a rotated client certificate is presented on the next new connection.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass

from proxy.upstream.config import UpstreamTLSOptions

log = logging.getLogger("gatehouse.upstream.tls")


@dataclass(frozen=True, slots=True)
class UpstreamTLS:
    """What a client request to this backend passes to aiohttp.

    ``server_hostname`` is None when the URL's host is the right name: aiohttp
    then sends it as SNI and checks the certificate against it.
    """

    context: ssl.SSLContext
    server_hostname: str | None


def client_context(options: UpstreamTLSOptions, backend: str = "") -> ssl.SSLContext:
    """Build the context; raises ``OSError``/``ssl.SSLError`` on unreadable files."""
    if options.verify:
        # With a CA bundle only that bundle is trusted: a private PKI should not
        # also accept every public CA for an internal name.
        if options.ca_file is not None:
            ctx = ssl.create_default_context(cafile=str(options.ca_file))
        else:
            ctx = ssl.create_default_context()
    else:
        log.warning(
            "backend %s: upstream TLS verification is OFF (tls.verify: false); "
            "certificates are not checked and this traffic can be intercepted",
            backend or "?",
        )
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = (
        ssl.TLSVersion.TLSv1_3 if options.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    )
    ctx.options |= ssl.OP_NO_COMPRESSION
    ctx.set_alpn_protocols(["http/1.1"])
    if options.client_cert_file is not None:
        ctx.load_cert_chain(
            str(options.client_cert_file),
            str(options.client_key_file) if options.client_key_file is not None else None,
        )
    return ctx


def upstream_tls(options: UpstreamTLSOptions, backend: str = "") -> UpstreamTLS:
    return UpstreamTLS(client_context(options, backend), options.server_name)


def reload_files(ctx: ssl.SSLContext, options: UpstreamTLSOptions, backend: str = "") -> bool:
    """Load the CA bundle and client certificate again; keep the current ones on error.

    A CA bundle reload adds the new CAs to the trusted set (OpenSSL cannot
    forget one), which is what an overlapping CA rotation needs anyway.
    """
    try:
        # Validate into a scratch context first: a half-written key file must
        # not leave the live context without a usable certificate.
        client_context(options, backend)
        if options.client_cert_file is not None:
            ctx.load_cert_chain(
                str(options.client_cert_file),
                str(options.client_key_file) if options.client_key_file is not None else None,
            )
        if options.verify and options.ca_file is not None:
            ctx.load_verify_locations(cafile=str(options.ca_file))
    except (OSError, ssl.SSLError) as exc:
        log.error("backend %s: upstream TLS reload failed, keeping the current files: %s",
                  backend or "?", exc)  # fmt: skip
        return False
    return True
