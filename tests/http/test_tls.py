"""Server TLS through a real gatehouse: SIGHUP builds a fresh context from the files,
so a removed client CA or a newly revoked client certificate stops being trusted."""

from __future__ import annotations

import datetime as dt
import signal
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from proxy.config.load import load_config
from proxy.config.reader import ConfigError
from proxy.dev.certs import Issued, issue, make_ca
from tests.conftest import GatehouseFactory
from tests.support.gatehouse import Gatehouse, public_route
from tests.support.pki import loopback_server, write_crl


@dataclass
class Pki:
    ca: Issued
    server: Issued
    partner_ca: Issued
    directory: Path

    def client(self, name: str, ca: Issued | None = None) -> Issued:
        return issue(ca or self.ca, self.directory, name, common_name=name, client=True, days=1)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    directory = tmp_path / "pki"
    ca = make_ca(directory, "ca")
    return Pki(ca, loopback_server(ca, directory), make_ca(directory, "partner-ca"), directory)


def client_context(pki: Pki, client: Issued, *, tls12: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca.cert_file))
    ctx.load_cert_chain(client.cert_file, client.key_file)
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


@dataclass
class Outcome:
    status: int | None  # None: the handshake or the request was refused
    session: ssl.SSLSession | None = None
    reused: bool = False


def https_get(port: int, ctx: ssl.SSLContext, session: ssl.SSLSession | None = None) -> Outcome:
    """One GET over a new connection, resuming ``session`` when given."""
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname="localhost", session=session) as tls,
        ):
            tls.sendall(b"GET /echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            response = b""
            while chunk := tls.recv(65536):
                response += chunk
            # TLS 1.3 sends its session ticket after the handshake: read before asking.
            outcome = Outcome(None, tls.session, bool(tls.session_reused))
    except (ssl.SSLError, OSError):
        return Outcome(None)
    if response.startswith(b"HTTP/1.1 "):
        outcome.status = int(response[9:12])
    return outcome


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.05)


def start(gatehouse: GatehouseFactory, upstream_url: str, pki: Pki, **tls: str) -> Gatehouse:
    return gatehouse(
        backends={"up": {"urls": [upstream_url]}},
        routes=[public_route("all", "/", "up")],
        listen={
            "tls": {
                "cert_file": str(pki.server.cert_file),
                "key_file": str(pki.server.key_file),
                "client_auth": "require",
                **tls,
            }
        },
    )


def test_a_client_ca_removed_before_sighup_is_refused_even_resuming_an_earlier_session(
    gatehouse: GatehouseFactory, upstream_url: str, pki: Pki
) -> None:
    bundle = pki.directory / "client-cas.pem"
    bundle.write_bytes(pki.ca.cert_file.read_bytes() + pki.partner_ca.cert_file.read_bytes())
    gh = start(gatehouse, upstream_url, pki, client_ca_file=str(bundle))
    ours = client_context(pki, pki.client("ours"))
    partner_client = pki.client("partner", pki.partner_ca)
    sessions = {}
    for tls12 in (True, False):
        ctx = client_context(pki, partner_client, tls12=tls12)
        first = https_get(gh.port, ctx)
        assert first.status == 200
        # Resumption works (session id for TLS 1.2, ticket for 1.3) before the reload.
        again = https_get(gh.port, ctx, first.session)
        assert (again.status, again.reused) == (200, True)
        sessions[tls12] = (ctx, again.session)

    bundle.write_bytes(pki.ca.cert_file.read_bytes())
    gh.signal(signal.SIGHUP)
    partner = client_context(pki, partner_client)
    eventually(lambda: https_get(gh.port, partner).status is None)
    for ctx, session in sessions.values():
        resumed = https_get(gh.port, ctx, session)
        assert (resumed.status, resumed.reused) == (None, False)
    assert https_get(gh.port, ours).status == 200
    # Every reload starts afresh: the CA put back is trusted again.
    bundle.write_bytes(pki.ca.cert_file.read_bytes() + pki.partner_ca.cert_file.read_bytes())
    gh.signal(signal.SIGHUP)
    eventually(lambda: https_get(gh.port, partner).status == 200)
    assert gh.process.poll() is None


def test_a_client_certificate_in_the_crl_is_refused_and_the_crl_reloads_on_sighup(
    gatehouse: GatehouseFactory, upstream_url: str, pki: Pki
) -> None:
    alice, bob = pki.client("alice"), pki.client("bob")
    partner = pki.client("partner", pki.partner_ca)
    bundle = pki.directory / "client-cas.pem"
    bundle.write_bytes(pki.ca.cert_file.read_bytes() + pki.partner_ca.cert_file.read_bytes())
    crl = write_crl(pki.ca, pki.directory / "clients.crl", (alice,))
    gh = start(gatehouse, upstream_url, pki, client_ca_file=str(bundle), crl_file=str(crl))
    assert https_get(gh.port, client_context(pki, alice)).status is None
    assert https_get(gh.port, client_context(pki, bob)).status == 200
    # No CRL from its CA in the file: its revocation status is unknown, so refused.
    assert https_get(gh.port, client_context(pki, partner)).status is None

    write_crl(pki.ca, crl, (alice, bob))
    gh.signal(signal.SIGHUP)
    eventually(lambda: https_get(gh.port, client_context(pki, bob)).status is None)
    assert https_get(gh.port, client_context(pki, pki.client("carol"))).status == 200


def test_a_reload_with_broken_files_keeps_serving_with_the_current_context(
    gatehouse: GatehouseFactory, upstream_url: str, pki: Pki
) -> None:
    alice = pki.client("alice")
    crl = write_crl(pki.ca, pki.directory / "clients.crl")
    gh = start(
        gatehouse, upstream_url, pki, client_ca_file=str(pki.ca.cert_file), crl_file=str(crl)
    )
    crl.write_bytes(pki.ca.cert_file.read_bytes())  # a certificate is not a CRL
    gh.signal(signal.SIGHUP)
    eventually(lambda: "tls: reload failed" in gh.stderr())
    assert https_get(gh.port, client_context(pki, alice)).status == 200


def tls_problems(pki: Pki, tmp_path: Path, **tls: str) -> list[str]:
    (tmp_path / "policies").mkdir(exist_ok=True)
    path = tmp_path / "gatehouse.yaml"
    lines = "".join(f"    {k}: {v}\n" for k, v in tls.items())
    path.write_text(
        "listen:\n  tls:\n"
        f"    cert_file: {pki.server.cert_file}\n    key_file: {pki.server.key_file}\n{lines}"
        "backends:\n  up:\n    urls: [http://127.0.0.1:8000]\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return [str(p).removeprefix(f"{path}:") for p in info.value.problems]


def test_a_crl_without_client_cas_is_refused_at_start_up(pki: Pki, tmp_path: Path) -> None:
    crl = write_crl(pki.ca, pki.directory / "clients.crl")
    assert tls_problems(pki, tmp_path, crl_file=str(crl)) == [
        "5: config.listen.tls.crl_file: needs client_ca_file (it lists revoked clients)"
    ]


def test_a_crl_file_holding_a_certificate_is_refused_at_start_up(pki: Pki, tmp_path: Path) -> None:
    # Loaded into the trust store, a certificate there would become a trusted client CA.
    mixed = pki.directory / "mixed.crl"
    mixed.write_bytes(
        write_crl(pki.ca, pki.directory / "clients.crl").read_bytes()
        + pki.partner_ca.cert_file.read_bytes()
    )
    assert tls_problems(
        pki, tmp_path, client_ca_file=str(pki.ca.cert_file), crl_file=str(mixed)
    ) == [
        "6: config.listen.tls.crl_file: must contain only PEM CRLs ('BEGIN X509 CRL'), "
        "no certificates or keys"
    ]


def test_an_expired_crl_is_refused_at_start_up(pki: Pki, tmp_path: Path) -> None:
    # OpenSSL would refuse every client certificate: say why before serving.
    crl = write_crl(pki.ca, pki.directory / "old.crl", next_update=-dt.timedelta(hours=1))
    [problem] = tls_problems(pki, tmp_path, client_ca_file=str(pki.ca.cert_file), crl_file=str(crl))
    assert problem.startswith("6: config.listen.tls.crl_file: CRL 1 (")
    assert "expired at" in problem and problem.endswith("publish a new one")


def test_a_key_that_does_not_match_the_certificate_is_refused_at_start_up(
    pki: Pki, tmp_path: Path
) -> None:
    other = pki.client("other")
    pki.server = Issued(pki.server.cert_file, other.key_file)
    [problem] = tls_problems(pki, tmp_path)
    assert problem == "4: config.listen.tls.key_file: does not match the certificate in cert_file"


def test_a_server_key_other_users_can_read_is_refused_at_start_up(pki: Pki, tmp_path: Path) -> None:
    pki.server.key_file.chmod(0o644)
    assert tls_problems(pki, tmp_path) == [
        f"4: config.listen.tls.key_file: {pki.server.key_file} is accessible to every user "
        "(mode 0644): chmod 600 it"
    ]
