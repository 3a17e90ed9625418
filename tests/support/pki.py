"""Certificates for TLS tests, issued by a test CA with ``proxy.dev.certs``."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from proxy.dev.certs import Issued, issue


def loopback_server(ca: Issued, directory: Path) -> Issued:
    """A server certificate valid for ``localhost`` and ``127.0.0.1``."""
    return issue(
        ca, directory, "server", common_name="localhost", dns=("localhost",), ips=("127.0.0.1",)
    )


def write_crl(
    ca: Issued,
    path: Path,
    revoked: tuple[Issued, ...] = (),
    *,
    next_update: dt.timedelta = dt.timedelta(days=1),
) -> Path:
    """A PEM CRL signed by ``ca`` listing ``revoked`` (a negative ``next_update``: expired)."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert_file.read_bytes())
    ca_key = serialization.load_pem_private_key(ca.key_file.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(min(now, now + next_update) - dt.timedelta(minutes=5))
        .next_update(now + next_update)
    )
    for issued in revoked:
        cert = x509.load_pem_x509_certificate(issued.cert_file.read_bytes())
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(cert.serial_number)
            .revocation_date(now - dt.timedelta(minutes=1))
            .build()
        )
    crl = builder.sign(ca_key, hashes.SHA256())
    path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return path
