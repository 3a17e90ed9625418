"""The whole request path through a real gatehouse process, with real peers:
oidc-provider for identity, an OAuth2 token endpoint for upstream credentials,
FastAPI under uvicorn as upstream."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
import yaml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tests.conftest import GatehouseFactory
from tests.peers.cloud.oauth import OAuthServer
from tests.peers.oidc_provider import RESOURCE, OidcProvider, oidc_provider, private_key, rsa_jwk
from tests.support.cli import gatehouse_command
from tests.support.gatehouse import Gatehouse, public_route
from tests.support.uvicorn_server import serve_asgi


@pytest.fixture(scope="module")
def provider() -> Iterator[OidcProvider]:
    with oidc_provider([rsa_jwk("rsa-1")]) as p:
        yield p


def identity_config(provider: OidcProvider) -> dict[str, Any]:
    return {
        "identity": {
            "issuers": [
                {"issuer": provider.issuer, "audiences": [RESOURCE], "claims": {"groups": "groups"}}
            ]
        }
    }


ROUTES = [
    {
        "name": "deploy",
        "path": "/echo/deploy",
        "backend": "up",
        "allow": [{"name": "deployers", "groups": ["deployers"]}],
    },
    {
        "name": "admin",
        "path": "/echo/admin",
        "backend": "up",
        "allow": [{"name": "admins", "groups": ["admins"]}],
    },
    {
        "name": "no-ci",
        "path": "/echo/no-ci",
        "backend": "up",
        "deny": [{"name": "not-ci", "subject": ["svc-ci"]}],
        "allow": [{"name": "signed-in", "authenticated": True}],
    },
    public_route("public", "/echo/public", "up"),
]


async def call(
    gh: Gatehouse, path: str, token: str | None = None
) -> tuple[int, dict[str, str], Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as s:
        async with s.get(gh.url + path, headers=headers) as r:
            return (
                r.status,
                {k.lower(): v for k, v in r.headers.items()},
                await r.json(content_type=None),
            )


async def test_verified_callers_are_authorised_per_route_and_identified_upstream(
    gatehouse: GatehouseFactory, upstream_url: str, provider: OidcProvider
) -> None:
    gh = gatehouse(
        backends={"up": {"urls": [upstream_url]}}, routes=ROUTES, extra=identity_config(provider)
    )
    token = await asyncio.to_thread(provider.client_credentials_token)

    status, _, data = await call(gh, "/echo/deploy", token)
    assert status == 200
    seen = dict(data["headers"])
    assert seen["x-gatehouse-subject"] == "svc-ci"
    assert seen["x-gatehouse-groups"] == "deployers"
    assert "authorization" not in seen  # the caller's token stays at the proxy

    status, _, data = await call(gh, "/echo/admin", token)
    assert (status, data["error"]) == (403, "no_rule_matched")
    status, _, data = await call(gh, "/echo/no-ci", token)
    assert (status, data["error"]) == (403, "denied:not-ci")
    assert set(data) == {"error", "status", "request_id"}

    status, headers, data = await call(gh, "/echo/deploy")
    assert (status, data["error"]) == (401, "unauthenticated")
    # No credential at all: the challenge without an error code (RFC 6750 §3.1).
    assert headers["www-authenticate"] == 'Bearer realm="gatehouse"'
    header, payload, signature = token.split(".")
    status, headers, data = await call(gh, "/echo/deploy", f"{header}.{payload}.{signature[::-1]}")
    assert status == 401
    assert headers["www-authenticate"] == f'Bearer realm="gatehouse", error="{data["error"]}"'
    assert token not in str(data)

    status, _, _ = await call(gh, "/echo/public")
    assert status == 200

    records = gh.wait_audit(7)
    allowed = records[0]
    assert (allowed["subject"], allowed["auth"], allowed["issuer"]) == (
        "svc-ci",
        "jwt",
        provider.issuer,
    )
    assert [r["reason"] for r in records][:3] == [
        "allowed:deployers",
        "no_rule_matched",
        "denied:not-ci",
    ]
    log = gh.audit_path.read_text() + gh.stderr()
    assert token not in log and signature not in log

    async with aiohttp.ClientSession() as s:
        async with s.get(gh.admin_url + "/metrics") as r:
            text = await r.text()
    assert (
        'gatehouse_decisions_total{decision="deny",reason="denied:not-ci",route="no-ci"} 1.0'
        in text
    )
    assert "gatehouse_auth_total" in text and token not in text


async def test_known_keys_keep_working_while_the_idp_is_down_and_unknown_keys_get_503(
    gatehouse: GatehouseFactory, upstream_url: str, tmp_path: Path
) -> None:
    key = rsa_jwk("rsa-a")
    with oidc_provider([key]) as p:
        gh = gatehouse(
            backends={"up": {"urls": [upstream_url]}}, routes=ROUTES, extra=identity_config(p)
        )
        token = await asyncio.to_thread(p.client_credentials_token)
        assert (await call(gh, "/echo/deploy", token))[0] == 200
        p.stop()
        assert (await call(gh, "/echo/deploy", token))[0] == 200  # cached key, IdP down
        claims = jwt.decode(token, options={"verify_signature": False})
        stranger = rsa_jwk("rsa-unknown")
        forged = jwt.encode(
            claims, private_key(stranger), algorithm="RS256", headers={"kid": "rsa-unknown"}
        )
        status, _, data = await call(gh, "/echo/deploy", forged)
        assert (status, data["error"]) == (503, "idp_unavailable")


def _policy(routes: list[dict[str, Any]], marker: int) -> str:
    return f"# version {marker}\n" + yaml.safe_dump({"routes": routes}, sort_keys=False)


async def test_policy_swaps_under_load_never_fail_a_request_and_each_is_decided_by_one_version(
    gatehouse: GatehouseFactory, upstream_url: str
) -> None:
    routes = [public_route("all", "/", "up")]
    gh = gatehouse(backends={"up": {"urls": [upstream_url]}}, routes=routes)
    policy_file = gh.workdir / "policies" / "routes.yaml"
    versions: set[str] = set()

    async def swapper() -> None:
        for i in range(20):
            policy_file.write_text(_policy(routes, i))
            gh.signal(signal.SIGHUP)
            await asyncio.sleep(0.05)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as s:

        async def one(i: int) -> int:
            async with s.get(gh.url + f"/slow?seconds={0.05 + (i % 5) * 0.02}") as r:
                await r.read()
                return r.status

        results = await asyncio.gather(swapper(), *(one(i) for i in range(1000)))
    statuses = results[1:]
    assert statuses.count(200) == 1000
    records = gh.wait_audit(1000)
    assert len(records) == 1000
    versions = {r["policy_version"] for r in records}
    assert len(versions) > 1  # swaps really happened while requests were in flight
    assert all(isinstance(v, str) and len(v) == 12 for v in versions)
    assert gh.process.poll() is None
    async with aiohttp.ClientSession() as s:
        async with s.get(gh.admin_url + "/metrics") as r:
            text = await r.text()
    live = [
        line
        for line in text.splitlines()
        if line.startswith("gatehouse_policy_version_info{") and line.endswith(" 1.0")
    ]
    assert len(live) == 1  # exactly one version is live
    status, _, _ = await call(gh, "/echo/after")
    assert status == 200
    after = gh.wait_audit(1001)[-1]
    assert after["path"] == "/echo/after"
    assert live[0] == f'gatehouse_policy_version_info{{version="{after["policy_version"]}"}} 1.0'


async def test_broken_or_deleted_policy_files_never_widen_access(
    gatehouse: GatehouseFactory, upstream_url: str
) -> None:
    gh = gatehouse(
        backends={"up": {"urls": [upstream_url]}},
        routes=[
            public_route("public", "/echo/public", "up"),
            {
                "name": "admins",
                "path": "/echo/admin",
                "backend": "up",
                "allow": [{"name": "a", "groups": ["admins"]}],
            },
        ],
    )
    policies = gh.workdir / "policies"
    assert (await call(gh, "/echo/admin"))[0] == 401

    # Replace with a policy that would open everything, but broken: ignored.
    (policies / "routes.yaml").write_text(
        "routes:\n  - name: open\n    path: /\n    backend: up\n    allow: [{public: true\n"
    )
    gh.signal(signal.SIGHUP)
    await asyncio.sleep(0.5)
    assert (await call(gh, "/echo/admin"))[0] == 401
    assert (await call(gh, "/echo/public"))[0] == 200

    (policies / "routes.yaml").unlink()
    gh.signal(signal.SIGHUP)
    await asyncio.sleep(0.5)
    assert (await call(gh, "/echo/admin"))[0] == 401
    assert (await call(gh, "/echo/public"))[0] == 200

    async with aiohttp.ClientSession() as s:
        async with s.get(gh.admin_url + "/metrics") as r:
            text = await r.text()
    assert 'gatehouse_config_reload_total{result="error"} 2.0' in text


async def test_rate_limit_per_identity_returns_429_with_reason(
    gatehouse: GatehouseFactory, upstream_url: str
) -> None:
    gh = gatehouse(
        backends={"up": {"urls": [upstream_url]}},
        routes=[
            public_route(
                "limited", "/echo", "up", rate_limit={"requests": 3, "per": "1m", "burst": 3}
            )
        ],
    )
    statuses = [(await call(gh, "/echo"))[0] for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    _, _, data = await call(gh, "/echo")
    assert data["error"] == "rate_limited"


def credential_upstream(rejected: set[str]) -> FastAPI:
    """An upstream that records the bearer tokens it sees and rejects the ones in ``rejected``."""
    app = FastAPI()
    app.state.seen = []

    @app.api_route("/{path:path}", methods=["GET", "POST"])
    async def handler(request: Request) -> JSONResponse:
        auth = request.headers.get("authorization", "")
        app.state.seen.append(auth)
        if auth in rejected or not auth.startswith("Bearer "):
            return JSONResponse({"detail": "bad token"}, status_code=401)
        return JSONResponse({"ok": True})

    return app


def credential_backend(url: str, token_server: OAuthServer, secret: Path) -> dict[str, Any]:
    """A backend whose requests carry a client-credentials token from ``token_server``."""
    secret.write_text("s3cret-value")
    return {
        "urls": [url],
        "credentials": {
            "type": "client_credentials",
            "token_url": token_server.token_url,
            "client_id": "gatehouse-backend",
            "client_secret_file": str(secret),
        },
    }


@pytest.fixture
async def token_server(tmp_path: Path) -> AsyncIterator[OAuthServer]:
    server = await OAuthServer(expires_in=3600).start()
    server.add_client("gatehouse-backend", "s3cret-value")
    yield server
    await server.stop()


async def test_cold_cache_under_1000_concurrent_requests_fetches_one_token(
    gatehouse: GatehouseFactory, token_server: OAuthServer, tmp_path: Path
) -> None:
    app = credential_upstream(set())
    with serve_asgi(app) as port:
        gh = gatehouse(
            backends={
                "api": credential_backend(
                    f"http://127.0.0.1:{port}", token_server, tmp_path / "secret"
                )
            },
            routes=[public_route("api", "/", "api")],
        )
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as s:

            async def one() -> int:
                async with s.get(gh.url + "/orders") as r:
                    await r.read()
                    return r.status

            statuses = await asyncio.gather(*(one() for _ in range(1000)))
        assert statuses.count(200) == 1000
        assert token_server.calls["token"] == 1
        assert len(set(app.state.seen)) == 1
    text = gh.audit_path.read_text() + gh.stderr()
    assert "s3cret-value" not in text
    assert app.state.seen[0].removeprefix("Bearer ") not in text


async def test_upstream_401_refreshes_the_credential_and_retries_once(
    gatehouse: GatehouseFactory, token_server: OAuthServer, tmp_path: Path
) -> None:
    rejected: set[str] = set()
    app = credential_upstream(rejected)
    with serve_asgi(app) as port:
        gh = gatehouse(
            backends={
                "api": credential_backend(
                    f"http://127.0.0.1:{port}", token_server, tmp_path / "secret"
                )
            },
            routes=[public_route("api", "/", "api")],
        )
        assert (await call(gh, "/one"))[0] == 200
        rejected.add(app.state.seen[-1])  # the upstream revokes the cached token
        status, _, _ = await call(gh, "/two")
        assert status == 200
        assert token_server.calls["token"] == 2
        assert len(app.state.seen) == 3  # one rejected attempt, one retry
        # A body cannot be replayed: the 401 is passed on, the token still refreshed.
        rejected.add(app.state.seen[-1])
        async with aiohttp.ClientSession() as s:
            async with s.post(gh.url + "/three", data=b"payload") as r:
                assert r.status == 401
        assert len(app.state.seen) == 4
        assert (await call(gh, "/four"))[0] == 200
        assert token_server.calls["token"] == 3


async def test_an_upstream_rejecting_every_token_is_not_retried_once_the_limit_holds(
    gatehouse: GatehouseFactory, token_server: OAuthServer, tmp_path: Path
) -> None:
    # A wrong audience, say: every token gets 401. The first three 401s each
    # fetch a new token and retry; after that the token stays and the 401 is
    # passed on at once, neither the token endpoint nor the upstream hit twice.
    rejecting = FastAPI()
    rejecting.state.seen = []

    @rejecting.api_route("/{path:path}", methods=["GET"])
    async def refuse(request: Request) -> JSONResponse:
        rejecting.state.seen.append(request.headers.get("authorization", ""))
        return JSONResponse({"detail": "bad token"}, status_code=401)

    with serve_asgi(rejecting) as port:
        gh = gatehouse(
            backends={
                "api": credential_backend(
                    f"http://127.0.0.1:{port}", token_server, tmp_path / "secret"
                )
            },
            routes=[public_route("api", "/", "api")],
        )
        statuses = [(await call(gh, f"/n{i}"))[0] for i in range(6)]
    assert statuses == [401] * 6
    assert token_server.calls["token"] == 1 + 3
    assert len(rejecting.state.seen) == 3 * 2 + 3 * 1


async def test_a_token_exchange_backend_answers_401_to_a_caller_without_a_bearer_token(
    gatehouse: GatehouseFactory, token_server: OAuthServer, upstream_url: str, tmp_path: Path
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret-value")
    gh = gatehouse(
        backends={
            "jobs": {
                "urls": [upstream_url],
                "credentials": {
                    "type": "token_exchange",
                    "token_url": token_server.token_url,
                    "client_id": "gatehouse-backend",
                    "client_secret_file": str(secret),
                    "audience": "https://jobs.test",
                },
            }
        },
        routes=[public_route("jobs", "/", "jobs")],
    )
    status, headers, data = await call(gh, "/echo")
    assert (status, data["error"]) == (401, "bearer_token_required")
    assert 'error="bearer_token_required"' in headers["www-authenticate"]
    assert sum(token_server.attempts.values()) == 0  # nothing to exchange: never asked
    record = next(r for r in gh.wait_audit(1) if r["request_id"] == data["request_id"])
    assert (record["status"], record["reason"], record["route"]) == (
        401,
        "bearer_token_required",
        "jobs",
    )


async def test_credentials_unavailable_after_expiry_is_503(
    gatehouse: GatehouseFactory, token_server: OAuthServer, upstream_url: str, tmp_path: Path
) -> None:
    token_server.down = True
    gh = gatehouse(
        backends={"api": credential_backend(upstream_url, token_server, tmp_path / "secret")},
        routes=[public_route("api", "/", "api")],
    )
    status, _, data = await call(gh, "/echo")
    assert (status, data["error"]) == (503, "upstream_credentials_unavailable")
    token_server.down = False
    deadline = time.monotonic() + 15
    while (await call(gh, "/echo"))[0] != 200:
        assert time.monotonic() < deadline, "did not recover after the token endpoint returned"
        await asyncio.sleep(0.5)


async def test_a_token_answer_over_one_mebibyte_is_refused_with_503_and_never_relayed(
    gatehouse: GatehouseFactory, token_server: OAuthServer, tmp_path: Path
) -> None:
    app = credential_upstream(set())
    with serve_asgi(app) as port:
        backend = credential_backend(f"http://127.0.0.1:{port}", token_server, tmp_path / "secret")
        gh = gatehouse(
            backends={"small": backend, "large": {**backend}},
            routes=[public_route("small", "/small", "small"), public_route("large", "/", "large")],
        )
        token_server.padding = 1000  # still a valid answer: accepted
        assert (await call(gh, "/small/orders"))[0] == 200
        token_server.padding = 2 * 2**20  # the same answer, 2 MiB larger
        status, _, body = await call(gh, "/orders")
        assert (status, body["error"]) == (503, "upstream_credentials_unavailable")
        assert len(app.state.seen) == 1  # only the request with a token reached the upstream
    record = gh.wait_audit(2)[-1]
    assert (record["status"], record["reason"]) == (503, "upstream_credentials_unavailable")
    assert "response too large" in gh.stderr()
    assert "s3cret-value" not in gh.audit_path.read_text() + gh.stderr()


@pytest.mark.parametrize(
    "token_url",
    ["http://login.example.com/token", "http://10.0.0.5:8080/token", "ftp://login.example.com/t"],
)
def test_gatehouse_check_refuses_a_token_endpoint_reached_without_tls_off_loopback(
    tmp_path: Path, token_url: str
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret-value")
    secret.chmod(0o600)
    config = tmp_path / "gatehouse.yaml"
    config.write_text(
        "backends:\n"
        "  api:\n"
        "    urls: [http://127.0.0.1:9]\n"
        "    credentials:\n"
        "      type: client_credentials\n"
        f"      token_url: {token_url}\n"  # line 6
        "      client_id: gatehouse\n"
        f"      client_secret_file: {secret}\n"
    )
    result = gatehouse_command("check", "--offline", "--config", str(config))
    assert result.returncode == 2
    assert f"{config}:6:" in result.stderr and "token_url" in result.stderr
    assert "Traceback" not in result.stderr
