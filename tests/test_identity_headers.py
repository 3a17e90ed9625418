"""Configurable identity header names (``identity.headers``), for upstreams written
for oauth2-proxy: the configured names carry the caller, and a client's copy of
any of them, in any spelling, never reaches the upstream."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.http.headers import (
    IdentityHeaders,
    RequestHeaderPolicy,
    filter_request_headers,
    identity_headers,
)
from tests.conftest import GatehouseFactory
from tests.peers.oidc_provider import RESOURCE, OidcProvider, oidc_provider, rsa_jwk
from tests.support.cli import gatehouse_command

OAUTH2_PROXY = {
    "subject": "X-Forwarded-User",
    "email": "X-Forwarded-Email",
    "groups": "X-Forwarded-Groups",
}
CUSTOM = {"subject": "X-Remote-User", "email": "X-Remote-Email", "groups": "X-Remote-Groups"}


@pytest.fixture(scope="module")
def provider() -> Iterator[OidcProvider]:
    with oidc_provider([rsa_jwk("rsa-1")]) as p:
        yield p


def test_identity_headers_take_the_configured_names() -> None:
    names = IdentityHeaders(**CUSTOM)
    out = identity_headers("alice", "a@example.com", ["eng", "ops"], groups_budget=5, names=names)
    assert out == [
        ("X-Remote-User", "alice"),
        ("X-Remote-Email", "a@example.com"),
        ("X-Remote-Groups", "eng"),
        ("X-Remote-Groups-Truncated", "true"),
    ]
    assert identity_headers("alice", None, frozenset({"eng"}), names=names) == [
        ("X-Remote-User", "alice"),
        ("X-Remote-Groups", "eng"),
    ]


@pytest.mark.parametrize(
    "spelling", ["X-Remote-User", "x-remote-user", "X_Remote_User", "X-REMOTE_user"]
)
def test_every_spelling_of_a_configured_name_is_dropped(spelling: str) -> None:
    policy = RequestHeaderPolicy(identity_headers=IdentityHeaders(**CUSTOM).names())
    assert filter_request_headers([(spelling, "admin"), ("Accept", "*/*")], policy) == [
        ("Accept", "*/*")
    ]


@pytest.mark.parametrize("names", [OAUTH2_PROXY, CUSTOM], ids=["oauth2-proxy", "custom"])
async def test_a_real_gatehouse_names_the_caller_with_the_configured_headers(
    gatehouse: GatehouseFactory,
    upstream_url: str,
    provider: OidcProvider,
    names: dict[str, str],
) -> None:
    identity: dict[str, Any] = {
        "issuers": [
            {"issuer": provider.issuer, "audiences": [RESOURCE], "claims": {"groups": "groups"}}
        ],
        "headers": names,
    }
    gh = gatehouse(
        backends={"up": {"urls": [upstream_url]}},
        routes=[
            {
                "name": "deploy",
                "path": "/echo",
                "backend": "up",
                "allow": [{"name": "deployers", "groups": ["deployers"]}],
            }
        ],
        extra={"identity": identity},
    )
    token = await asyncio.to_thread(provider.client_credentials_token)
    subject, email, groups = names["subject"], names["email"], names["groups"]
    forged = [
        (subject, "admin"),
        (groups.lower().replace("-", "_"), "admins"),
        (email.upper(), "boss@example.com"),
        (f"{groups}-Truncated", "false"),
        ("X-Forwarded-User", "admin"),  # the well-known names stay forbidden whatever is set
        ("X-Gatehouse-Subject", "admin"),
    ]
    async with aiohttp.ClientSession() as s:
        async with s.get(
            gh.url + "/echo", headers=[("Authorization", f"Bearer {token}"), *forged]
        ) as r:
            assert r.status == 200
            seen = (await r.json())["headers"]
    got: dict[str, list[str]] = {}
    for name, value in seen:
        got.setdefault(name.lower().replace("_", "-"), []).append(value)
    assert got[subject.lower()] == ["svc-ci"]
    assert got[groups.lower()] == ["deployers"]
    assert email.lower() not in got and f"{groups}-truncated".lower() not in got
    assert "x-gatehouse-subject" not in got
    if subject != "X-Forwarded-User":
        assert "x-forwarded-user" not in got


def test_names_gatehouse_must_not_take_are_refused_by_check(tmp_path: Path) -> None:
    (tmp_path / "policies").mkdir()
    config = tmp_path / "gatehouse.yaml"
    config.write_text(
        "identity:\n"
        "  headers:\n"
        "    subject: Authorization\n"  # line 3
        "    email: X Email\n"  # line 4
        "backends: {}\n"
    )
    result = gatehouse_command("check", "--config", str(config))
    assert result.returncode == 2
    assert f"{config}:3: config.identity.headers.subject: not a header name" in result.stderr
    assert f"{config}:4: config.identity.headers.email: not a header name" in result.stderr

    config.write_text(
        "identity:\n  headers: {subject: X-Forwarded-User, email: x-forwarded-user}\nbackends: {}\n"
    )
    result = gatehouse_command("check", "--config", str(config))
    assert result.returncode == 2
    assert "three different names" in result.stderr
