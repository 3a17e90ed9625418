"""Client-certificate identity from certificates generated per test."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from proxy.errors import AuthenticationError
from proxy.identity.authenticate import Authenticator
from proxy.identity.config import IdentityConfig, MtlsConfig
from proxy.identity.mtls import certificate_from_der, identity_from_certificate
from tests.identity.conftest import facts


def make_cert(cn: str | None, uris: tuple[str, ...] = (), dns: tuple[str, ...] = ()) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test ca")]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(hours=1))
    )
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    names += [x509.DNSName(d) for d in dns]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.DER)


def test_spiffe_uri_san_is_the_subject() -> None:
    der = make_cert("ignored", uris=("spiffe://prod.example/ns/etl/sa/beam",), dns=("x.test",))
    cert = certificate_from_der(der)
    identity = identity_from_certificate(cert)
    assert identity.subject == "spiffe://prod.example/ns/etl/sa/beam"
    assert identity.method == "mtls"
    assert identity.claims["spiffe_trust_domain"] == "prod.example"
    assert identity.client_cert is cert
    assert len(cert.fingerprint_sha256) == 64


def test_dns_san_is_used_without_uri() -> None:
    identity = identity_from_certificate(certificate_from_der(make_cert("cn", dns=("a.test",))))
    assert identity.subject == "a.test"


def test_common_name_is_the_last_resort() -> None:
    identity = identity_from_certificate(certificate_from_der(make_cert("airflow-worker")))
    assert identity.subject == "airflow-worker"


def test_certificate_without_any_name_is_rejected() -> None:
    with pytest.raises(AuthenticationError):
        identity_from_certificate(certificate_from_der(make_cert(None)))


def test_garbage_der_is_rejected() -> None:
    with pytest.raises(AuthenticationError):
        certificate_from_der(b"\x30\x03\x02\x01\x00")


async def test_authenticator_uses_the_certificate_only_when_enabled() -> None:
    cert = certificate_from_der(make_cert("worker", uris=("spiffe://t/a",)))
    request = facts(client_cert=cert)
    enabled = Authenticator(IdentityConfig(mtls=MtlsConfig(enabled=True)))
    disabled = Authenticator(IdentityConfig())
    await enabled.start()
    await disabled.start()
    try:
        identity = await enabled.authenticate(request)
        assert identity is not None and identity.subject == "spiffe://t/a"
        assert await disabled.authenticate(request) is None
    finally:
        await enabled.close()
        await disabled.close()
