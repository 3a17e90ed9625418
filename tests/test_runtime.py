"""Process lifecycle: TLS, SIGHUP reloads, SIGTERM drain, workers, admin listener."""

from __future__ import annotations

import asyncio
import json
import signal
import ssl
import time
import urllib.request
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from proxy.dev.certs import dev_certificates
from tests.conftest import GatehouseFactory
from tests.support.gatehouse import public_route


def client_ssl(certs: dict[str, Path], client_cert: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(certs["ca"]))
    if client_cert:
        ctx.load_cert_chain(certs["client_cert"], certs["client_key"])
    return ctx


def tls_listen(certs: dict[str, Path], **extra: object) -> dict[str, object]:
    return {
        "tls": {
            "cert_file": str(certs["server_cert"]),
            "key_file": str(certs["server_key"]),
            **extra,
        }
    }


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
async def test_tls_terminates_with_generated_certificates(
    gatehouse: GatehouseFactory, upstream_url: str, certs: dict[str, Path]
) -> None:
    gh = gatehouse(
        backends={"up": {"urls": [upstream_url]}},
        routes=[public_route("all", "/", "up")],
        listen=tls_listen(certs),
    )
    async with aiohttp.ClientSession() as s:
        async with s.get(f"https://localhost:{gh.port}/echo", ssl=client_ssl(certs)) as r:
            data = await r.json()
    assert r.status == 200
    headers = dict(data["headers"])
    assert headers["x-forwarded-proto"] == "https"
    # TLS 1.1 and below are refused.
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.load_verify_locations(certs["ca"])
    old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(aiohttp.ClientError):
        async with aiohttp.ClientSession() as s:
            await s.get(f"https://localhost:{gh.port}/echo", ssl=old)


async def test_mutual_tls_requires_a_certificate_from_the_client_ca(
    gatehouse: GatehouseFactory, upstream_url: str, certs: dict[str, Path], tmp_path: Path
) -> None:
    gh = gatehouse(
        backends={"up": {"urls": [upstream_url]}},
        routes=[public_route("all", "/", "up")],
        listen=tls_listen(certs, client_ca_file=str(certs["ca"]), client_auth="require"),
    )
    async with aiohttp.ClientSession() as s:
        async with s.get(f"https://localhost:{gh.port}/echo", ssl=client_ssl(certs, True)) as r:
            assert r.status == 200
        with pytest.raises(aiohttp.ClientError):
            await s.get(f"https://localhost:{gh.port}/echo", ssl=client_ssl(certs))
        # A certificate from another CA is refused in the handshake.
        other = dev_certificates(tmp_path / "other")
        ctx = client_ssl(certs)
        ctx.load_cert_chain(other["client_cert"], other["client_key"])
        with pytest.raises(aiohttp.ClientError):
            await s.get(f"https://localhost:{gh.port}/echo", ssl=ctx)


async def test_sighup_reloads_the_server_certificate_without_restart(
    gatehouse: GatehouseFactory, upstream_url: str, tmp_path: Path
) -> None:
    first = dev_certificates(tmp_path / "one")
    live = tmp_path / "live"
    live.mkdir()
    (live / "tls.crt").write_bytes(first["server_cert"].read_bytes())
    (live / "tls.key").write_bytes(first["server_key"].read_bytes())
    gh = gatehouse(
        backends={"up": {"urls": [upstream_url]}},
        routes=[public_route("all", "/", "up")],
        listen={"tls": {"cert_file": str(live / "tls.crt"), "key_file": str(live / "tls.key")}},
    )
    second = dev_certificates(tmp_path / "two")
    async with aiohttp.ClientSession() as s:
        async with s.get(f"https://localhost:{gh.port}/echo", ssl=client_ssl(first)) as r:
            assert r.status == 200
    (live / "tls.crt").write_bytes(second["server_cert"].read_bytes())
    (live / "tls.key").write_bytes(second["server_key"].read_bytes())
    gh.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while True:
        try:
            async with aiohttp.ClientSession() as s:
                async with s.get(f"https://localhost:{gh.port}/echo", ssl=client_ssl(second)) as r:
                    assert r.status == 200
                    break
        except aiohttp.ClientError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
    assert gh.process.poll() is None


async def test_sigterm_lets_in_flight_requests_finish_then_exits_zero(
    gatehouse: GatehouseFactory, upstream_url: str
) -> None:
    gh = gatehouse(
        backends={"up": {"urls": [upstream_url]}}, routes=[public_route("all", "/", "up")]
    )
    async with aiohttp.ClientSession() as s:
        slow = asyncio.ensure_future(s.get(gh.url + "/slow?seconds=1.5"))
        await asyncio.sleep(0.5)
        gh.signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        # New connections are refused while the slow one drains.
        with pytest.raises(aiohttp.ClientConnectionError):
            async with aiohttp.ClientSession() as fresh:
                await fresh.get(gh.url + "/echo")
        response = await slow
        assert response.status == 200
        assert (await response.json()) == {"slept": 1.5}
    assert await asyncio.to_thread(gh.process.wait, 15) == 0
    records = gh.audit_records()
    assert [r["path"] for r in records if r["status"] == 200] == ["/slow"]


async def test_admin_listener_serves_health_readiness_and_metrics(
    gatehouse: GatehouseFactory, upstream_url: str
) -> None:
    gh = gatehouse(
        backends={"up": {"urls": [upstream_url]}}, routes=[public_route("all", "/", "up")]
    )
    async with aiohttp.ClientSession() as s:
        async with s.get(gh.url + "/echo") as r:
            assert r.status == 200
        async with s.get(URL(gh.url + "/nope/../../x", encoded=True)) as r:
            assert r.status == 400
        # A client can have its whole answer while the handler still waits on the
        # socket's drain: its metrics are counted, then its record written, after.
        assert len(await asyncio.to_thread(gh.wait_audit, 2)) == 2
        async with s.get(gh.admin_url + "/healthz") as r:
            assert r.status == 200
        async with s.get(gh.admin_url + "/readyz") as r:
            assert r.status == 200 and (await r.json())["checks"]["upstreams"] is True
        async with s.get(gh.admin_url + "/metrics") as r:
            text = await r.text()
    assert 'gatehouse_requests_total{route="all",status_class="2xx"} 1.0' in text
    assert (
        'gatehouse_decisions_total{decision="allow",reason="allowed:anyone",route="all"} 1.0'
        in text
    )
    assert "gatehouse_request_duration_seconds_bucket" in text
    assert 'gatehouse_upstream_duration_seconds_count{backend="up"} 1.0' in text
    assert "gatehouse_inflight_requests 0.0" in text
    assert "gatehouse_build_info{config_hash=" in text
    assert "gatehouse_config_last_reload_success_timestamp_seconds" in text
    # Raw paths never become label values.
    assert "/nope" not in text and "/echo" not in text


async def test_readiness_fails_while_no_upstream_is_reachable(gatehouse: GatehouseFactory) -> None:
    gh = gatehouse(
        backends={"up": {"urls": ["http://127.0.0.1:9"]}}, routes=[public_route("all", "/", "up")]
    )
    async with aiohttp.ClientSession() as s, s.get(gh.admin_url + "/readyz") as r:
        assert r.status == 503
        assert (await r.json())["checks"]["upstreams"] is False


async def test_a_backend_not_required_for_readiness_can_be_down_while_ready(
    gatehouse: GatehouseFactory, upstream_url: str
) -> None:
    # A gateway in front of many services must not leave the load balancer
    # because one of them is down: that backend's routes answer 502 instead.
    gh = gatehouse(
        backends={
            "up": {"urls": [upstream_url]},
            "gone": {"urls": ["http://127.0.0.1:9"], "required_for_readiness": False},
        },
        routes=[public_route("gone", "/gone", "gone"), public_route("all", "/", "up")],
    )
    async with aiohttp.ClientSession() as s:
        async with s.get(gh.admin_url + "/readyz") as r:
            assert r.status == 200 and (await r.json())["checks"]["upstreams"] is True
        async with s.get(gh.url + "/gone") as r:
            assert r.status == 502
        async with s.get(gh.url + "/echo") as r:
            assert r.status == 200


async def test_workers_share_the_port_and_metrics_are_aggregated(
    gatehouse: GatehouseFactory, upstream_url: str
) -> None:
    gh = gatehouse(
        backends={"up": {"urls": [upstream_url]}},
        routes=[public_route("all", "/", "up")],
        workers=2,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        async with aiohttp.ClientSession() as s:  # new connection each time: spread by the kernel
            async with s.get(gh.admin_url + "/readyz") as r:
                if r.status == 200:
                    break
        await asyncio.sleep(0.2)
    for _ in range(40):
        async with aiohttp.ClientSession() as s, s.get(gh.url + "/echo") as r:
            assert r.status == 200
    text = await asyncio.to_thread(
        lambda: urllib.request.urlopen(gh.admin_url + "/metrics").read().decode()
    )
    total = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith('gatehouse_requests_total{route="all",status_class="2xx"}')
    )
    assert total == 40.0
    gh.signal(signal.SIGTERM)
    assert await asyncio.to_thread(gh.process.wait, 20) == 0
    # Every worker flushed its audit records before exiting.
    request_ids = {
        json.loads(line)["request_id"] for line in gh.audit_path.read_text().splitlines()
    }
    assert len(request_ids) == 40
