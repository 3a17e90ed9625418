"""Server TLS: TLS ≥ 1.2, optional client-certificate verification, hot reload.

Reload replaces the certificate chain inside the existing ``SSLContext``: new
handshakes use the new certificate and open connections are untouched, so a
SIGHUP after cert-manager renews a certificate needs no restart.
"""

from __future__ import annotations

import logging
import ssl

from proxy.config.schema import TLSConfig

log = logging.getLogger("gatehouse.tls")


def server_context(config: TLSConfig) -> ssl.SSLContext:
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
    return ctx


def reload_certificates(ctx: ssl.SSLContext, config: TLSConfig) -> bool:
    """Load the certificate files again into ``ctx``; keep the old ones on error."""
    try:
        # Validate into a scratch context first: a half-written key file must
        # not leave the live context without a usable certificate.
        probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        probe.load_cert_chain(config.cert_file, config.key_file)
        ctx.load_cert_chain(config.cert_file, config.key_file)
        if config.client_ca_file is not None:
            ctx.load_verify_locations(cafile=str(config.client_ca_file))
    except (OSError, ssl.SSLError) as exc:
        log.error("tls: certificate reload failed, keeping the current one: %s", exc)
        return False
    log.info("tls: certificates reloaded")
    return True
