"""Callers other than bearer tokens, through a real gatehouse process: a trusted
front proxy, a client certificate (mutual TLS) and a legacy API key."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import GatehouseFactory
from tests.support.gatehouse import REPO, public_route


async def echo_headers(url: str, **kwargs: Any) -> tuple[int, dict[str, str]]:
    async with aiohttp.ClientSession() as s:
        async with s.get(url, **kwargs) as r:
            if r.status != 200:
                return r.status, {}
            data = await r.json()
    seen: dict[str, str] = {}
    for name, value in data["headers"]:
        seen.setdefault(name, value)
    return 200, seen


async def test_a_trusted_front_proxy_keeps_its_chain_request_id_and_client_address(
    gatehouse: GatehouseFactory, upstream_url: str
) -> None:
    gh = gatehouse(
        backends={"up": {"urls": [upstream_url]}},
        routes=[
            public_route("all", "/echo", "up"),
            {
                "name": "office",
                "path": "/echo/office",
                "backend": "up",
                "allow": [
                    {
                        "name": "office-network",
                        "all": [{"public": True}, {"source_ip": ["198.51.100.0/24"]}],
                    }
                ],
            },
        ],
        listen={"trusted_proxies": ["127.0.0.0/8"]},
    )
    status, seen = await echo_headers(
        gh.url + "/echo",
        headers={
            "X-Forwarded-For": "198.51.100.7",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "app.example.com",
            "Forwarded": "for=198.51.100.7;proto=https",
            "X-Request-Id": "front-proxy-id-1",
        },
    )
    assert status == 200
    assert seen["x-forwarded-for"] == "198.51.100.7, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "https"
    assert seen["x-forwarded-host"] == "app.example.com"
    assert seen["forwarded"].startswith("for=198.51.100.7;proto=https, for=127.0.0.1")
    assert seen["x-request-id"] == "front-proxy-id-1"
    records = gh.wait_audit(1)
    assert records[0]["client_ip"] == "198.51.100.7"
    assert records[0]["request_id"] == "front-proxy-id-1"
    # source_ip rules see the trusted client address, not the proxy's.
    assert (
        await echo_headers(gh.url + "/echo/office", headers={"X-Forwarded-For": "198.51.100.9"})
    )[0] == 200
    assert (
        await echo_headers(gh.url + "/echo/office", headers={"X-Forwarded-For": "203.0.113.9"})
    )[0] == 401


async def test_a_verified_client_certificate_is_an_identity(
    gatehouse: GatehouseFactory, upstream_url: str, certs: dict[str, Path]
) -> None:
    gh = gatehouse(
        backends={"up": {"urls": [upstream_url]}},
        routes=[
            {
                "name": "spiffe",
                "path": "/echo",
                "backend": "up",
                "allow": [
                    {
                        "name": "dev-client",
                        "all": [
                            {"auth_method": ["mtls"]},
                            {"subject": ["spiffe://gatehouse.dev/client"]},
                        ],
                    }
                ],
            }
        ],
        listen={
            "tls": {
                "cert_file": str(certs["server_cert"]),
                "key_file": str(certs["server_key"]),
                "client_ca_file": str(certs["ca"]),
                "client_auth": "optional",
            }
        },
        extra={"identity": {"mtls": {"enabled": True}}},
    )
    with_cert = ssl.create_default_context(cafile=str(certs["ca"]))
    with_cert.load_cert_chain(certs["client_cert"], certs["client_key"])
    status, seen = await echo_headers(f"https://localhost:{gh.port}/echo", ssl=with_cert)
    assert status == 200
    assert seen["x-gatehouse-subject"] == "spiffe://gatehouse.dev/client"
    without = ssl.create_default_context(cafile=str(certs["ca"]))
    assert (await echo_headers(f"https://localhost:{gh.port}/echo", ssl=without))[0] == 401
    records = gh.wait_audit(2)
    assert records[0]["auth"] == "mtls"


async def test_an_api_key_is_limited_to_its_route_and_stored_only_as_a_hash(
    gatehouse: GatehouseFactory, upstream_url: str, tmp_path: Path
) -> None:
    keys = tmp_path / "api-keys.yaml"
    created = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "proxy",
            "apikey",
            "create",
            "--file",
            str(keys),
            "--name",
            "cron",
            "--subject",
            "svc-cron",
            "--groups",
            "jobs",
            "--expires",
            "90d",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    key = created.stdout.strip()
    assert key and key not in keys.read_text()
    gh = gatehouse(
        backends={"up": {"urls": [upstream_url]}},
        routes=[
            {
                "name": "cron",
                "path_exact": "/echo/cron",
                "methods": ["POST"],
                "backend": "up",
                "allow": [
                    {"name": "cron-job", "all": [{"auth_method": ["apikey"]}, {"groups": ["jobs"]}]}
                ],
            },
            {
                "name": "other",
                "path": "/echo",
                "backend": "up",
                "allow": [{"name": "people", "auth_method": ["session"]}],
            },
        ],
        extra={"identity": {"api_keys": {"file": str(keys)}}},
    )
    async with aiohttp.ClientSession() as s:
        async with s.post(gh.url + "/echo/cron", headers={"X-Api-Key": key}) as r:
            assert r.status == 200
            seen = dict((await r.json())["headers"])
        assert seen["x-gatehouse-subject"] == "svc-cron"
        assert "x-api-key" not in seen  # the key never travels upstream
        async with s.get(gh.url + "/echo/other", headers={"X-Api-Key": key}) as r:
            assert r.status == 403
        async with s.post(gh.url + "/echo/cron", headers={"X-Api-Key": key[:-2] + "xx"}) as r:
            assert r.status == 401
    log = gh.audit_path.read_text() + gh.stderr()
    assert key not in log


async def test_host_spellings_cannot_dodge_an_exact_host_route(
    gatehouse: GatehouseFactory, upstream_url: str
) -> None:
    gh = gatehouse(
        backends={"up": {"urls": [upstream_url]}},
        routes=[
            {
                "name": "admin",
                "host": "admin.example.com",
                "path": "/",
                "backend": "up",
                "allow": [{"name": "admins", "groups": ["admins"]}],
            },
            public_route("everything-else", "/", "up"),
        ],
    )
    for host in (
        "admin.example.com",
        "ADMIN.example.com",
        "admin.example.com.",
        "admin.example.com:443",
    ):
        status, _ = await echo_headers(gh.url + "/echo", headers={"Host": host})
        assert status == 401, host
    assert (await echo_headers(gh.url + "/echo", headers={"Host": "other.example.com"}))[0] == 200
