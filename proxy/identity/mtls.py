"""Identity from a client certificate the TLS layer already verified.

The subject is the first SAN URI (SPIFFE IDs live there), else the first SAN
DNS name, else the subject CN. Chain validation is the TLS layer's job
(``ssl.CERT_REQUIRED`` against the configured client CA); this module only
reads the verified certificate.
"""

from __future__ import annotations

import base64
from types import MappingProxyType
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from proxy.errors import AuthenticationError, Reason
from proxy.model import ClientCertificate, Identity

MTLS_ISSUER = "mtls"


def certificate_from_der(der: bytes) -> ClientCertificate:
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise AuthenticationError(
            Reason.INVALID_CERTIFICATE, detail="unparseable certificate"
        ) from exc
    uris: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
        dns = tuple(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        pass
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = cns[0].value if cns else None
    return ClientCertificate(
        subject_cn=cn if isinstance(cn, str) and cn else None,
        san_uris=uris,
        san_dns=dns,
        fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(),
        der=der,
    )


def certificate_subject(cert: ClientCertificate) -> str | None:
    if cert.san_uris:
        return cert.san_uris[0]
    if cert.san_dns:
        return cert.san_dns[0]
    return cert.subject_cn


def identity_from_certificate(cert: ClientCertificate) -> Identity:
    subject = certificate_subject(cert)
    if not subject:
        raise AuthenticationError(
            Reason.INVALID_CERTIFICATE, detail="client certificate names no subject"
        )
    thumbprint = base64.urlsafe_b64encode(bytes.fromhex(cert.fingerprint_sha256)).rstrip(b"=")
    claims: dict[str, Any] = {
        "sub": subject,
        "san_uris": list(cert.san_uris),
        "san_dns": list(cert.san_dns),
        "cn": cert.subject_cn,
        "x5t#S256": thumbprint.decode(),
    }
    if subject.startswith("spiffe://"):
        claims["spiffe_trust_domain"] = subject[len("spiffe://") :].split("/", 1)[0]
    return Identity(
        subject=subject,
        issuer=MTLS_ISSUER,
        method="mtls",
        claims=MappingProxyType(claims),
        client_cert=cert,
    )
