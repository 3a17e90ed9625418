"""Which routes authenticate their callers, and routes that pass method overrides,
through a real gatehouse with local identity providers that count every call."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import GatehouseFactory
from tests.identity.introspection_server import introspection_server
from tests.identity.jwks_server import local_issuer
from tests.identity.proxy_env import call, introspecting_issuer
from tests.peers.oidc_provider import RESOURCE
from tests.support.gatehouse import public_route


async def test_public_routes_never_consult_an_identity_provider(
    gatehouse: GatehouseFactory, upstream_url: str, tmp_path: Path
) -> None:
    async with introspection_server() as idp, local_issuer("k1") as issuer:
        gh = await asyncio.to_thread(
            gatehouse,
            backends={"up": {"urls": [upstream_url]}},
            routes=[
                public_route("public", "/echo/public", "up"),
                public_route("identified", "/echo/identified", "up", identify=True),
                {
                    "name": "whoami",
                    "path": "/echo/whoami",
                    "backend": "up",
                    "allow": [{"name": "signed-in", "authenticated": True}],
                },
            ],
            extra={
                "identity": {
                    "issuers": [
                        {"issuer": issuer.issuer, "audiences": [RESOURCE]},
                        introspecting_issuer(idp, tmp_path),
                    ]
                }
            },
        )
        fetches = issuer.jwks_fetches
        async with aiohttp.ClientSession() as s:
            opaque = [call(gh, "/echo/public", secrets.token_urlsafe(24), session=s)]
            unknown_kid = [call(gh, "/echo/public", issuer.random_kid_token(), session=s)]
            replies = await asyncio.gather(*(opaque * 50), *(unknown_kid * 50))
        assert {(r.status, r.subject) for r in replies} == {(200, None)}
        assert idp.calls == []  # random opaque tokens on a public route cost the IdP nothing
        assert issuer.jwks_fetches == fetches  # nor do unknown key ids
        good = issuer.token(sub="alice")
        assert (await call(gh, "/echo/public", good)).subject is None
        assert (await call(gh, "/echo/identified", good)).subject == "alice"
        assert (await call(gh, "/echo/whoami", good)).subject == "alice"
        assert (await call(gh, "/echo/identified", "not-valid")).status == 401
        assert (await call(gh, "/echo/whoami", secrets.token_urlsafe(24))).status == 401
        assert len(idp.calls) == 2  # the identified route and the signed-in one asked


async def test_a_rate_limited_public_route_counts_per_signed_in_caller(
    gatehouse: GatehouseFactory, upstream_url: str
) -> None:
    async with local_issuer("k1") as issuer:
        gh = await asyncio.to_thread(
            gatehouse,
            backends={"up": {"urls": [upstream_url]}},
            routes=[
                public_route(
                    "limited", "/echo", "up", rate_limit={"requests": 2, "per": "1h", "burst": 2}
                )
            ],
            extra={"identity": {"issuers": [{"issuer": issuer.issuer, "audiences": [RESOURCE]}]}},
        )
        alice, bob = issuer.token(sub="alice"), issuer.token(sub="bob")
        statuses = [(await call(gh, "/echo", alice)).status for _ in range(3)]
        assert statuses == [200, 200, 429]
        assert (await call(gh, "/echo", bob)).status == 200  # bob has a bucket of his own


OVERRIDE_ROUTES: list[dict[str, Any]] = [
    public_route(
        "get-post", "/echo/get-post", "up", methods=["GET", "POST"], pass_method_override=True
    ),
    {
        "name": "no-delete",
        "path": "/echo/no-delete",
        "backend": "up",
        "pass_method_override": True,
        "deny": [{"name": "no-deletes", "method": ["DELETE"]}],
        "allow": [{"name": "anyone", "public": True}],
    },
    public_route("stripped", "/echo/stripped", "up"),
]


async def send(gh: Any, path: str, headers: dict[str, str]) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s:
        async with s.post(gh.url + path, headers=headers, data=b"") as r:
            return r.status, await r.json(content_type=None)


@pytest.fixture
def override_gh(gatehouse: GatehouseFactory, upstream_url: str) -> Any:
    return gatehouse(backends={"up": {"urls": [upstream_url]}}, routes=OVERRIDE_ROUTES)


@pytest.mark.parametrize(
    ("path", "override", "expected"),
    [
        ("/echo/get-post", "DELETE", (403, "method_override_denied")),
        ("/echo/get-post", "GET", (200, None)),
        ("/echo/no-delete", "DELETE", (403, "denied:no-deletes")),
        ("/echo/no-delete", "PUT", (200, None)),
        ("/echo/no-delete", "delete", (400, "bad_request")),
    ],
)
async def test_a_route_passing_method_overrides_must_allow_the_overriding_method(
    override_gh: Any, path: str, override: str, expected: tuple[int, str | None]
) -> None:
    status, data = await send(override_gh, path, {"X-HTTP-Method-Override": override})
    assert (status, data.get("error")) == expected
    if status == 200:
        seen = dict(data["headers"])
        assert seen["x-http-method-override"] == override


async def test_overrides_that_disagree_are_ambiguous(override_gh: Any) -> None:
    status, data = await send(
        override_gh, "/echo/no-delete", {"X-HTTP-Method-Override": "PUT", "X-HTTP-Method": "DELETE"}
    )
    assert (status, data["error"]) == (400, "ambiguous_request")


async def test_a_route_that_does_not_opt_in_strips_the_override_and_runs_the_real_method(
    override_gh: Any,
) -> None:
    status, data = await send(override_gh, "/echo/stripped", {"X-HTTP-Method-Override": "DELETE"})
    assert status == 200 and data["method"] == "POST"
    assert "x-http-method-override" not in dict(data["headers"])
