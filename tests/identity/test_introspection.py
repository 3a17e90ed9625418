"""RFC 7662 introspection: cache until min(exp, TTL), inactive tokens, claim re-checks."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.config.reader import SecretRef
from proxy.errors import AuthenticationError, IdentityProviderUnavailable
from proxy.identity.config import IntrospectionConfig, IssuerConfig
from proxy.identity.introspection import Introspector
from tests.identity.introspection_server import IntrospectionServer, introspection_server

ISS = "https://idp.example.test"
NOW = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def env(
    tmp_path: Path,
) -> AsyncIterator[tuple[IntrospectionServer, aiohttp.ClientSession, IssuerConfig]]:
    secret = tmp_path / "secret"
    secret.write_text("s3cret:with/odd chars")
    async with introspection_server() as server, aiohttp.ClientSession() as http:
        cfg = IssuerConfig(
            issuer=ISS,
            audiences=("api",),
            introspection=IntrospectionConfig(
                endpoint=server.url,
                client_id="gatehouse",
                client_secret=SecretRef("file", str(secret)),
                cache_ttl=60,
            ),
        )
        yield server, http, cfg


def active(**claims: Any) -> dict[str, Any]:
    return {"active": True, "iss": ISS, "aud": "api", "sub": "alice", "exp": NOW + 300, **claims}


async def test_active_token_yields_identity_with_client_authentication(
    env: tuple[IntrospectionServer, aiohttp.ClientSession, IssuerConfig],
) -> None:
    server, http, cfg = env
    server.answers["tok"] = active(groups=["eng"], scope="read")
    identity = await Introspector(cfg, http, clock=Clock()).introspect("tok")
    assert identity.subject == "alice" and identity.method == "opaque"
    assert identity.groups == frozenset({"eng"}) and identity.scopes == frozenset({"read"})
    authorization, token = server.calls[0]
    assert token == "tok"
    user, _, password = base64.b64decode(authorization.split()[1]).decode().partition(":")
    assert user == "gatehouse" and password == "s3cret%3Awith%2Fodd%20chars"


async def test_result_is_cached_until_the_ttl(
    env: tuple[IntrospectionServer, aiohttp.ClientSession, IssuerConfig],
) -> None:
    server, http, cfg = env
    server.answers["tok"] = active(exp=NOW + 3600)
    clock = Clock()
    introspector = Introspector(cfg, http, clock=clock)
    await introspector.introspect("tok")
    clock.now += 59
    await introspector.introspect("tok")
    assert len(server.calls) == 1
    clock.now += 2
    await introspector.introspect("tok")
    assert len(server.calls) == 2


async def test_a_cached_answer_gives_the_same_identity_and_is_still_rechecked(
    env: tuple[IntrospectionServer, aiohttp.ClientSession, IssuerConfig],
) -> None:
    server, http, cfg = env
    server.answers["tok"] = active(client_id="svc", exp=NOW + 30, groups=["eng"])
    del server.answers["tok"]["sub"]  # the client is the caller
    clock = Clock()
    introspector = Introspector(cfg, http, clock=clock)
    first = await introspector.introspect("tok")
    assert first.subject == "svc" and first.groups == frozenset({"eng"})
    assert await introspector.introspect("tok") is first
    clock.now += 30 + cfg.clock_skew + 1  # past exp and the skew: never an identity again
    with pytest.raises(AuthenticationError) as info:
        await introspector.introspect("tok")
    assert info.value.reason == "expired_token"


async def test_result_is_cached_no_longer_than_the_token_exp(
    env: tuple[IntrospectionServer, aiohttp.ClientSession, IssuerConfig],
) -> None:
    server, http, cfg = env
    server.answers["tok"] = active(exp=NOW + 10)
    clock = Clock()
    introspector = Introspector(cfg, http, clock=clock)
    await introspector.introspect("tok")
    clock.now += 11
    server.answers["tok"] = {"active": False}
    with pytest.raises(AuthenticationError):
        await introspector.introspect("tok")
    assert len(server.calls) == 2


async def test_inactive_tokens_are_401_and_cached_only_briefly(
    env: tuple[IntrospectionServer, aiohttp.ClientSession, IssuerConfig],
) -> None:
    server, http, cfg = env
    clock = Clock()
    introspector = Introspector(cfg, http, clock=clock)
    for _ in range(3):
        with pytest.raises(AuthenticationError) as info:
            await introspector.introspect("junk")
        assert info.value.status == 401
    assert len(server.calls) == 1
    clock.now += 11
    server.answers["junk"] = active()
    assert (await introspector.introspect("junk")).subject == "alice"


@pytest.mark.parametrize(
    "answer",
    [
        active(token_type="refresh_token"),
        active(iss=ISS + "/"),
        active(aud="someone-else"),
        active(exp=NOW - 120),
        {"active": "true", "sub": "alice"},
    ],
)
async def test_active_answers_still_have_to_pass_claim_checks(
    env: tuple[IntrospectionServer, aiohttp.ClientSession, IssuerConfig], answer: dict[str, Any]
) -> None:
    server, http, cfg = env
    server.answers["tok"] = answer
    with pytest.raises(AuthenticationError):
        await Introspector(cfg, http, clock=Clock()).introspect("tok")


async def test_idp_errors_are_503_not_401(
    env: tuple[IntrospectionServer, aiohttp.ClientSession, IssuerConfig],
) -> None:
    server, http, cfg = env
    server.status = 500
    with pytest.raises(IdentityProviderUnavailable):
        await Introspector(cfg, http, clock=Clock()).introspect("tok")
