"""Upstream TLS against real TLS servers on loopback with certificates made per run."""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from proxy.dev.certs import Issued, issue, make_ca
from proxy.errors import Failure
from proxy.upstream.config import BackendOptions, HealthCheckOptions, UpstreamTLSOptions
from proxy.upstream.pool import EndpointPool, classify
from proxy.upstream.tls import client_context, upstream_tls
from tests.support.pki import loopback_server


class Pki:
    def __init__(self, directory: Path) -> None:
        self.ca = make_ca(directory, "upstream-ca")
        self.other_ca = make_ca(directory, "other-ca")
        self.server = loopback_server(self.ca, directory)
        self.named = issue(
            self.ca, directory, "named", common_name="backend.internal", dns=("backend.internal",)
        )
        self.client = issue(
            self.ca, directory, "client", common_name="gatehouse-client", client=True
        )
        self.stranger = issue(
            self.other_ca, directory, "stranger", common_name="stranger", client=True
        )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("upstream-tls"))


Serve = Callable[..., Awaitable[str]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start a TLS server; it answers with the client certificate's CN and the SNI it saw."""
    runners: list[web.AppRunner] = []

    async def start(
        cert: Issued, *, client_ca: Path | None = None, max_version: ssl.TLSVersion | None = None
    ) -> str:
        seen_sni: list[str | None] = []
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert.cert_file, cert.key_file)
        if max_version is not None:
            ctx.maximum_version = max_version
        if client_ca is not None:
            ctx.load_verify_locations(cafile=str(client_ca))
            ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.sni_callback = lambda _sock, name, _ctx: seen_sni.append(name)

        async def handle(request: web.Request) -> web.Response:
            assert request.transport is not None
            peer = request.transport.get_extra_info("peercert") or {}
            cn = next(
                (v for rdn in peer.get("subject", ()) for k, v in rdn if k == "commonName"), ""
            )
            return web.json_response({"client_cn": cn, "sni": seen_sni[-1] if seen_sni else None})

        app = web.Application()
        app.router.add_get("/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx).start()
        runners.append(runner)
        return f"https://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for runner in runners:
        await runner.cleanup()


async def get(url: str, options: UpstreamTLSOptions) -> dict[str, str]:
    tls = upstream_tls(options, "test")
    async with aiohttp.ClientSession() as s:
        async with s.get(url + "/", ssl=tls.context, server_hostname=tls.server_hostname) as r:
            assert r.status == 200
            data: dict[str, str] = await r.json()
            return data


async def test_a_server_whose_ca_is_not_trusted_is_refused(pki: Pki, serve: Serve) -> None:
    url = await serve(pki.server)
    with pytest.raises(aiohttp.ClientConnectorCertificateError) as err:
        await get(url, UpstreamTLSOptions())  # the system store does not know our CA
    # Refused during the handshake: nothing was sent, so a retry elsewhere is safe.
    assert classify(err.value) == (Failure.CONNECT_ERROR, False)


async def test_the_ca_bundle_makes_the_server_trusted(pki: Pki, serve: Serve) -> None:
    url = await serve(pki.server)
    assert (await get(url, UpstreamTLSOptions(ca_file=pki.ca.cert_file)))["client_cn"] == ""


async def test_a_ca_bundle_replaces_rather_than_extends_trust(pki: Pki, serve: Serve) -> None:
    url = await serve(pki.server)
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await get(url, UpstreamTLSOptions(ca_file=pki.other_ca.cert_file))


async def test_upstream_mtls_presents_the_client_certificate(pki: Pki, serve: Serve) -> None:
    url = await serve(pki.server, client_ca=pki.ca.cert_file)
    options = UpstreamTLSOptions(
        ca_file=pki.ca.cert_file,
        client_cert_file=pki.client.cert_file,
        client_key_file=pki.client.key_file,
    )
    assert (await get(url, options))["client_cn"] == "gatehouse-client"


async def test_an_upstream_requiring_mtls_refuses_a_client_without_a_certificate(
    pki: Pki, serve: Serve
) -> None:
    url = await serve(pki.server, client_ca=pki.ca.cert_file)
    with pytest.raises(aiohttp.ClientError):
        await get(url, UpstreamTLSOptions(ca_file=pki.ca.cert_file))


async def test_an_upstream_refuses_a_client_certificate_from_another_ca(
    pki: Pki, serve: Serve
) -> None:
    url = await serve(pki.server, client_ca=pki.ca.cert_file)
    options = UpstreamTLSOptions(
        ca_file=pki.ca.cert_file,
        client_cert_file=pki.stranger.cert_file,
        client_key_file=pki.stranger.key_file,
    )
    with pytest.raises(aiohttp.ClientError):
        await get(url, options)


async def test_server_name_is_sent_as_sni_and_is_the_name_checked(pki: Pki, serve: Serve) -> None:
    url = await serve(pki.named)  # a certificate for backend.internal only
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await get(url, UpstreamTLSOptions(ca_file=pki.ca.cert_file))  # 127.0.0.1 ≠ backend.internal
    options = UpstreamTLSOptions(ca_file=pki.ca.cert_file, server_name="backend.internal")
    assert (await get(url, options))["sni"] == "backend.internal"


async def test_verify_false_connects_anyway_and_says_so_loudly(
    pki: Pki, serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    url = await serve(pki.server)
    with caplog.at_level(logging.WARNING, logger="gatehouse.upstream.tls"):
        assert (await get(url, UpstreamTLSOptions(verify=False)))["client_cn"] == ""
    assert any("verification is OFF" in r.getMessage() for r in caplog.records)


async def test_a_tls_1_3_minimum_refuses_a_tls_1_2_server(pki: Pki, serve: Serve) -> None:
    url = await serve(pki.server, max_version=ssl.TLSVersion.TLSv1_2)
    assert (await get(url, UpstreamTLSOptions(ca_file=pki.ca.cert_file)))["client_cn"] == ""
    with pytest.raises(aiohttp.ClientError):
        await get(url, UpstreamTLSOptions(ca_file=pki.ca.cert_file, min_version="1.3"))


def test_the_context_never_allows_less_than_tls_1_2(pki: Pki) -> None:
    assert client_context(UpstreamTLSOptions()).minimum_version == ssl.TLSVersion.TLSv1_2
    insecure = client_context(UpstreamTLSOptions(verify=False))
    assert insecure.minimum_version == ssl.TLSVersion.TLSv1_2
    strict = client_context(UpstreamTLSOptions(ca_file=pki.ca.cert_file))
    assert strict.verify_mode == ssl.CERT_REQUIRED and strict.check_hostname


async def test_health_probes_use_the_backend_tls(pki: Pki, serve: Serve) -> None:
    url = await serve(pki.named, client_ca=pki.ca.cert_file)
    tls = UpstreamTLSOptions(
        ca_file=pki.ca.cert_file,
        client_cert_file=pki.client.cert_file,
        client_key_file=pki.client.key_file,
        server_name="backend.internal",
    )
    trusted = EndpointPool(
        [url], BackendOptions(tls=tls, health_check=HealthCheckOptions(enabled=True)), name="tls-hc"
    )
    assert trusted.checker is not None
    await trusted.checker.start()
    try:
        assert await trusted.checker.probe(url)
    finally:
        await trusted.checker.close()
    untrusted = EndpointPool(
        [url], BackendOptions(health_check=HealthCheckOptions(enabled=True)), name="tls-hc2"
    )
    assert untrusted.checker is not None
    await untrusted.checker.start()
    try:
        assert not await untrusted.checker.probe(url)
    finally:
        await untrusted.checker.close()


async def test_a_renewed_client_certificate_is_presented_after_reload(
    pki: Pki, serve: Serve, tmp_path: Path
) -> None:
    url = await serve(pki.server, client_ca=pki.ca.cert_file)
    cert, key = tmp_path / "client.crt", tmp_path / "client.key"
    cert.write_bytes(pki.client.cert_file.read_bytes())
    key.write_bytes(pki.client.key_file.read_bytes())
    tls = UpstreamTLSOptions(ca_file=pki.ca.cert_file, client_cert_file=cert, client_key_file=key)
    pool = EndpointPool([url], BackendOptions(tls=tls), name="tls-reload")

    async def client_cn() -> str:
        # A new session per call: a new connection, so a new handshake.
        async with aiohttp.ClientSession() as s:
            async with s.get(url + "/", ssl=pool.ssl) as r:
                data: dict[str, str] = await r.json()
                return data["client_cn"]

    assert await client_cn() == "gatehouse-client"
    renewed = issue(pki.ca, tmp_path, "renewed", common_name="gatehouse-client-2", client=True)
    key.write_text("half-written", encoding="utf-8")
    assert not pool.reload_tls()  # a broken file keeps the current certificate
    assert await client_cn() == "gatehouse-client"
    cert.write_bytes(renewed.cert_file.read_bytes())
    key.write_bytes(renewed.key_file.read_bytes())
    assert pool.reload_tls()
    assert await client_cn() == "gatehouse-client-2"
