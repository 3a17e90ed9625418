"""``gatehouse dev-cert DIR``: a local CA and certificates for development and tests."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from proxy.files import replace_file


@dataclass(frozen=True, slots=True)
class Issued:
    cert_file: Path
    key_file: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # 0600 from the first byte, whatever the umask; dev-cert is the only writer.
    replace_file(path, pem, take_over=True)


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Gatehouse development"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def make_ca(directory: Path, name: str = "ca", days: int = 365) -> Issued:
    directory.mkdir(parents=True, exist_ok=True)
    key = _key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"Gatehouse development CA ({name})"))
        .issuer_name(_name(f"Gatehouse development CA ({name})"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    out = Issued(directory / f"{name}.crt", directory / f"{name}.key")
    out.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, out.key_file)
    return out


def issue(
    ca: Issued,
    directory: Path,
    name: str,
    *,
    common_name: str,
    dns: tuple[str, ...] = (),
    ips: tuple[str, ...] = (),
    uris: tuple[str, ...] = (),
    client: bool = False,
    days: int = 90,
) -> Issued:
    """Issue a server (or, with ``client=True``, a client) certificate signed by ``ca``."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert_file.read_bytes())
    ca_key = serialization.load_pem_private_key(ca.key_file.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = _key()
    now = dt.datetime.now(dt.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    sans += [x509.UniformResourceIdentifier(u) for u in uris]
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    out = Issued(directory / f"{name}.crt", directory / f"{name}.key")
    out.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, out.key_file)
    return out


def dev_certificates(directory: Path, hosts: tuple[str, ...] = ("localhost",)) -> dict[str, Path]:
    """A CA, a server certificate for ``hosts`` + loopback, and a client certificate."""
    ca = make_ca(directory)
    server = issue(
        ca, directory, "server", common_name=hosts[0], dns=hosts, ips=("127.0.0.1", "::1")
    )
    client = issue(
        ca,
        directory,
        "client",
        common_name="dev-client",
        uris=("spiffe://gatehouse.dev/client",),
        client=True,
    )
    return {
        "ca": ca.cert_file,
        "server_cert": server.cert_file,
        "server_key": server.key_file,
        "client_cert": client.cert_file,
        "client_key": client.key_file,
    }
