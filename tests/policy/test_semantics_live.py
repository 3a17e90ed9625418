"""Policy semantics through a real `gatehouse run`, with tokens signed by a local issuer
(discovery and JWKS over HTTP) and a FastAPI upstream under uvicorn."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from tests.conftest import GatehouseFactory
from tests.identity.jwks_server import LocalIssuer, local_issuer
from tests.support.gatehouse import Gatehouse

AUDIENCE = "urn:gatehouse:api"


async def start(
    gatehouse: GatehouseFactory,
    upstream_url: str,
    issuer: LocalIssuer,
    routes: list[dict[str, Any]],
    rules: dict[str, Any] | None = None,
    **issuer_options: Any,
) -> Gatehouse:
    cfg = {"issuer": issuer.issuer, "audiences": [AUDIENCE], **issuer_options}
    # Started off the event loop: gatehouse fetches the issuer's keys from this loop.
    return await asyncio.to_thread(
        gatehouse,
        backends={"up": {"urls": [upstream_url]}},
        routes=routes,
        rules=rules,
        extra={"identity": {"issuers": [cfg]}},
    )


async def get(gh: Gatehouse, path: str, token: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session:
        headers = {"Authorization": f"Bearer {token}"}
        async with session.get(gh.url + path, headers=headers) as response:
            return response.status, await response.json(content_type=None)


async def test_a_dry_run_rule_cited_inside_an_allow_rule_grants_nothing_and_is_reported(
    gatehouse: GatehouseFactory, upstream_url: str
) -> None:
    async with local_issuer("k1") as issuer:
        gh = await start(
            gatehouse,
            upstream_url,
            issuer,
            rules={"contractors-dry": {"mode": "audit", "groups": ["contractors"]}},
            routes=[
                {
                    "name": "reports",
                    "path": "/echo/reports",
                    "backend": "up",
                    "allow": [{"name": "staff", "any": [{"groups": ["staff"]}, "contractors-dry"]}],
                }
            ],
        )
        contractor = issuer.token(sub="carl", groups=["contractors"])
        status, body = await get(gh, "/echo/reports", contractor)
        assert (status, body["error"]) == (403, "no_rule_matched")
        staff = issuer.token(sub="sam", groups=["staff"])
        assert (await get(gh, "/echo/reports", staff))[0] == 200
        records = gh.wait_audit(2)
        assert [(r["subject"], r["reason"], r["dry_run"]) for r in records] == [
            ("carl", "no_rule_matched", ["allowed:staff"]),
            ("sam", "allowed:staff", []),
        ]


EMAIL_ROUTE = {
    "name": "reports",
    "path": "/echo/reports",
    "backend": "up",
    "allow": [{"name": "employees", "email_domain": ["example.com"]}],
}


async def test_email_criteria_admit_only_an_address_the_issuer_verified(
    gatehouse: GatehouseFactory, upstream_url: str
) -> None:
    async with local_issuer("k1") as issuer:
        gh = await start(gatehouse, upstream_url, issuer, routes=[EMAIL_ROUTE])
        verified = issuer.token(sub="dana", email="dana@example.com", email_verified=True)
        assert (await get(gh, "/echo/reports", verified))[0] == 200
        # nOAuth: an address the user could set is not the issuer's word.
        claimed = issuer.token(sub="mallory", email="dana@example.com", email_verified=False)
        status, body = await get(gh, "/echo/reports", claimed)
        assert (status, body["error"], set(body)) == (
            403,
            "no_rule_matched",
            {"error", "status", "request_id"},
        )
        silent = issuer.token(sub="mallory", email="dana@example.com")
        assert (await get(gh, "/echo/reports", silent))[0] == 403
        records = gh.wait_audit(3)
        assert [(r["subject"], r["reason"]) for r in records] == [
            ("dana", "allowed:employees"),
            ("mallory", "no_rule_matched"),
            ("mallory", "no_rule_matched"),
        ]


async def test_an_issuer_configured_without_email_verified_is_trusted_unless_it_says_no(
    gatehouse: GatehouseFactory, upstream_url: str
) -> None:
    async with local_issuer("k1") as issuer:
        gh = await start(
            gatehouse, upstream_url, issuer, routes=[EMAIL_ROUTE], email_verified_required=False
        )
        silent = issuer.token(sub="dana", email="dana@example.com")
        assert (await get(gh, "/echo/reports", silent))[0] == 200
        denied = issuer.token(sub="dana", email="dana@example.com", email_verified=False)
        assert (await get(gh, "/echo/reports", denied))[0] == 403
