"""Entra ID tokens via azure-identity against local App Service MI, IMDS and Entra peers.

The SDK finds managed identity through the environment, exactly as on the
platform, so those tests set the variables with ``monkeypatch.setenv`` (restored
afterwards). The App Service-style sample app then accepts what we obtained.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from proxy.credentials.broker import CredentialBroker
from proxy.errors import UpstreamCredentialsUnavailable
from tests.credentials.conftest import make_broker, parse_backends, route, run_uvicorn
from tests.peers.cloud.azure import MI_OBJECT_ID, TENANT, AzurePeer
from tests.peers.cloud.keys import Issuer, new_rsa_key, pem
from tests.peers.cloud.tls import LocalTls, make_tls

APP_ID = "5e7a0c1d-0000-4000-8000-00000000a11d"
AZURE_ENV = (
    "IDENTITY_ENDPOINT",
    "IDENTITY_HEADER",
    "IDENTITY_SERVER_THUMBPRINT",
    "IMDS_ENDPOINT",
    "MSI_ENDPOINT",
    "MSI_SECRET",
    "AZURE_POD_IDENTITY_AUTHORITY_HOST",
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_AUTHORITY_HOST",
)


@pytest.fixture
def clean_azure_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in AZURE_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def tls(tmp_path: Path) -> LocalTls:
    return make_tls(tmp_path)


@pytest.fixture
async def peers(tls: LocalTls) -> AsyncIterator[tuple[AzurePeer, AzurePeer]]:
    """(plain: MI + IMDS + JWKS, tls: Entra), one signing key and issuer like the real cloud."""
    issuer = Issuer("")
    entra = await AzurePeer(ssl_context=tls.server_context(), issuer=issuer).start()
    issuer.iss = f"{entra.url}/{TENANT}/v2.0"
    plain = await AzurePeer(issuer=issuer).start()
    yield plain, entra
    await plain.stop()
    await entra.stop()


@pytest.fixture
def appservice(peers: tuple[AzurePeer, AzurePeer]) -> Iterator[str]:
    plain, _ = peers
    env = {
        "ENTRA_ISSUER": plain.issuer.iss,
        "ENTRA_AUDIENCE": f"api://{APP_ID}",
        "ENTRA_JWKS_URL": plain.jwks_url,
    }
    with run_uvicorn("appservice_app:app", env) as url:
        yield url


async def acall(url: str, headers: dict[str, str]) -> tuple[int, bytes]:
    """Off the loop: the app fetches its JWKS from a peer served by this test's loop."""
    return await asyncio.to_thread(call, url, headers)


def call(url: str, headers: dict[str, str]) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


async def _broker(tmp_path: Path, options: str) -> CredentialBroker:
    specs, _ = parse_backends(
        tmp_path, f"backends:\n  web:\n    credentials:\n      type: azure\n{options}"
    )
    return await make_broker(specs)


async def test_app_service_managed_identity_token_is_accepted_by_the_app(
    peers: tuple[AzurePeer, AzurePeer],
    appservice: str,
    clean_azure_env: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    plain, _ = peers
    clean_azure_env.setenv("IDENTITY_ENDPOINT", plain.identity_endpoint)
    clean_azure_env.setenv("IDENTITY_HEADER", plain.identity_header)
    broker = await _broker(tmp_path, f"      app_id: {APP_ID}\n")
    try:
        headers = dict(await broker.headers("web", route("web"), None))
        await broker.headers("web", route("web"), None)
    finally:
        await broker.close()
    assert plain.calls["app_service"] == 1
    status, body = await acall(f"{appservice}/api/whoami", headers)
    assert status == 200, body
    assert MI_OBJECT_ID.encode() in body
    # Without our header, or with a token for another app, the backend refuses.
    assert (await acall(f"{appservice}/api/whoami", {}))[0] == 401
    other = plain.issuer.mint({"aud": "api://another-app", "tid": TENANT})
    assert (await acall(f"{appservice}/api/whoami", {"Authorization": f"Bearer {other}"}))[0] == 401


async def test_app_service_endpoint_refuses_a_wrong_identity_header(
    peers: tuple[AzurePeer, AzurePeer], clean_azure_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    plain, _ = peers
    clean_azure_env.setenv("IDENTITY_ENDPOINT", plain.identity_endpoint)
    clean_azure_env.setenv("IDENTITY_HEADER", "not-the-header")
    broker = await _broker(tmp_path, f"      app_id: {APP_ID}\n")
    try:
        with pytest.raises(UpstreamCredentialsUnavailable) as err:
            await broker.headers("web", route("web"), None)
    finally:
        await broker.close()
    assert "managed_identity" in err.value.detail
    assert plain.calls["app_service"] == 1  # it asked, and was refused


async def test_imds_managed_identity_token_is_accepted_by_the_app(
    peers: tuple[AzurePeer, AzurePeer],
    appservice: str,
    clean_azure_env: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    plain, _ = peers
    clean_azure_env.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", plain.url)
    broker = await _broker(tmp_path, f"      app_id: {APP_ID}\n")
    try:
        headers = dict(await broker.headers("web", route("web"), None))
    finally:
        await broker.close()
    assert plain.calls["imds"] >= 1
    assert plain.calls["app_service"] == 0
    assert (await acall(f"{appservice}/api/whoami", headers))[0] == 200


async def test_entra_client_secret_over_tls_token_is_accepted_by_the_app(
    peers: tuple[AzurePeer, AzurePeer],
    appservice: str,
    tls: LocalTls,
    clean_azure_env: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    _, entra = peers
    entra.clients["gatehouse-client"] = "entra-secret"
    secret = tmp_path / "entra_secret"
    secret.write_text("entra-secret", encoding="utf-8")
    broker = await _broker(
        tmp_path,
        f"""      mode: client_secret
      app_id: {APP_ID}
      tenant_id: {TENANT}
      client_id: gatehouse-client
      client_secret_file: {secret}
      authority: {entra.url}
      ca_bundle: {tls.ca_file}
""",
    )
    try:
        headers = dict(await broker.headers("web", route("web"), None))
        broker.invalidate("web", None)
        await broker.headers("web", route("web"), None)
    finally:
        await broker.close()
    assert entra.calls["entra"] == 2  # invalidate reached Entra, not an SDK-side cache
    status, body = await acall(f"{appservice}/api/whoami", headers)
    assert status == 200, body
    assert b"gatehouse-client" in body


async def test_workload_identity_exchanges_the_federated_token_file(
    peers: tuple[AzurePeer, AzurePeer],
    appservice: str,
    tls: LocalTls,
    clean_azure_env: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    _, entra = peers
    cluster = Issuer("https://oidc.cluster.test")
    entra.federated_issuer = cluster
    token_file = tmp_path / "azure-identity-token"
    token_file.write_text(
        cluster.mint(
            {"sub": "system:serviceaccount:apps:gatehouse", "aud": "api://AzureADTokenExchange"}
        ),
        encoding="utf-8",
    )
    broker = await _broker(
        tmp_path,
        f"""      mode: workload_identity
      app_id: {APP_ID}
      tenant_id: {TENANT}
      client_id: wi-client
      token_file: {token_file}
      authority: {entra.url}
      ca_bundle: {tls.ca_file}
""",
    )
    try:
        headers = dict(await broker.headers("web", route("web"), None))
    finally:
        await broker.close()
    assert (await acall(f"{appservice}/api/whoami", headers))[0] == 200


async def test_sdk_flows_leave_no_token_or_secret_in_log_records(
    peers: tuple[AzurePeer, AzurePeer],
    tls: LocalTls,
    clean_azure_env: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    plain, entra = peers
    entra.clients["gatehouse-client"] = "entra-secret-value"
    secret = tmp_path / "entra_secret"
    secret.write_text("entra-secret-value", encoding="utf-8")
    clean_azure_env.setenv("IDENTITY_ENDPOINT", plain.identity_endpoint)
    clean_azure_env.setenv("IDENTITY_HEADER", plain.identity_header)
    mi = await _broker(tmp_path, f"      app_id: {APP_ID}\n")
    cs = await _broker(
        tmp_path,
        f"""      mode: client_secret
      app_id: {APP_ID}
      tenant_id: {TENANT}
      client_id: gatehouse-client
      client_secret_file: {secret}
      authority: {entra.url}
      ca_bundle: {tls.ca_file}
""",
    )
    try:
        await mi.headers("web", route("web"), None)
        await cs.headers("web", route("web"), None)
    finally:
        await mi.close()
        await cs.close()
    issued = plain.issuer.issued
    assert len(issued) == 2
    assert any(r.name.startswith("azure.") for r in caplog.records)  # the SDK did log
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    for token in issued:
        assert token not in text
    assert "entra-secret-value" not in text
    assert plain.identity_header not in text


async def test_entra_certificate_credential_token_is_accepted_by_the_app(
    peers: tuple[AzurePeer, AzurePeer],
    appservice: str,
    tls: LocalTls,
    clean_azure_env: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    _, entra = peers
    key = new_rsa_key()
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gatehouse")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    cert_file = tmp_path / "client.pem"
    cert_file.write_text(
        pem(key) + cert.public_bytes(serialization.Encoding.PEM).decode(), encoding="utf-8"
    )
    entra.cert_clients["cert-client"] = key.public_key()
    broker = await _broker(
        tmp_path,
        f"""      mode: certificate
      app_id: {APP_ID}
      tenant_id: {TENANT}
      client_id: cert-client
      certificate_file: {cert_file}
      authority: {entra.url}
      ca_bundle: {tls.ca_file}
""",
    )
    try:
        headers = dict(await broker.headers("web", route("web"), None))
    finally:
        await broker.close()
    status, body = await acall(f"{appservice}/api/whoami", headers)
    assert status == 200, body
    assert b"cert-client" in body
    # Another key under the same client id is refused by the token endpoint.
    entra.cert_clients["cert-client"] = new_rsa_key().public_key()
    broker = await _broker(
        tmp_path,
        f"""      mode: certificate
      app_id: {APP_ID}
      tenant_id: {TENANT}
      client_id: cert-client
      certificate_file: {cert_file}
      authority: {entra.url}
      ca_bundle: {tls.ca_file}
""",
    )
    try:
        with pytest.raises(UpstreamCredentialsUnavailable):
            await broker.headers("web", route("web"), None)
    finally:
        await broker.close()
