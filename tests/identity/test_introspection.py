"""RFC 7662 introspection: cache until min(exp, TTL), inactive tokens, claim re-checks."""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.config.reader import SecretRef
from proxy.errors import AuthenticationError, IdentityProviderUnavailable
from proxy.identity.config import IntrospectionConfig, IssuerConfig
from proxy.identity.introspection import Introspector
from tests.conftest import GatehouseFactory
from tests.identity.introspection_server import IntrospectionServer, introspection_server
from tests.identity.jwks_server import local_issuer
from tests.identity.proxy_env import call, counter, introspecting_issuer, metrics, started
from tests.peers.oidc_provider import OPAQUE_CLIENT, RESOURCE, WEB_CLIENT, OidcProvider

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


# -- through a real gatehouse ---------------------------------------------------------
def _answer(issuer: str, **claims: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"active": True, "iss": issuer, "aud": RESOURCE, "sub": "alice"}
    base.update(claims)
    return {k: v for k, v in base.items() if v is not None}


async def test_opaque_tokens_go_only_to_the_issuer_their_prefix_names(
    gatehouse: GatehouseFactory, upstream_url: str, tmp_path: Path
) -> None:
    async with (
        introspection_server() as a,
        introspection_server() as b,
        introspection_server() as fallback,
    ):
        gh = await started(
            gatehouse,
            upstream_url,
            issuers=[
                introspecting_issuer(a, tmp_path, token_prefix="a_"),
                introspecting_issuer(b, tmp_path, token_prefix="b_"),
                introspecting_issuer(fallback, tmp_path),
            ],
        )
        sent = {
            "a": [f"a_{secrets.token_urlsafe(16)}" for _ in range(20)],
            "b": [f"b_{secrets.token_urlsafe(16)}" for _ in range(20)],
            # Random, but never starting with a_ or b_ (a bare token_urlsafe does,
            # one time in 4096 per prefix, and then rightly goes to that issuer).
            "rest": [f"r{secrets.token_urlsafe(16)}" for _ in range(20)] + ["ab_x", "A_upper"],
        }
        async with aiohttp.ClientSession() as s:
            replies = await asyncio.gather(
                *(call(gh, token=t, session=s) for ts in sent.values() for t in ts)
            )
        assert {(r.status, r.error) for r in replies} == {(401, "invalid_token")}
        assert sorted(a.tokens) == sorted(sent["a"])
        assert sorted(b.tokens) == sorted(sent["b"])
        assert sorted(fallback.tokens) == sorted(sent["rest"])


async def test_without_a_fallback_issuer_unclaimed_opaque_tokens_are_never_sent(
    gatehouse: GatehouseFactory, upstream_url: str, tmp_path: Path
) -> None:
    async with introspection_server() as a, introspection_server() as b:
        a.answers["a_good"] = _answer(a.url.rsplit("/", 1)[0])
        gh = await started(
            gatehouse,
            upstream_url,
            issuers=[
                introspecting_issuer(a, tmp_path, token_prefix="a_"),
                introspecting_issuer(b, tmp_path, token_prefix="b_"),
            ],
        )
        for token in ("plain", "c_x", "_a_x", "A_x"):
            assert (await call(gh, token=token)).error == "invalid_token"
        assert a.calls == [] and b.calls == []
        assert (await call(gh, token="a_good")).subject == "alice"
        assert a.tokens == ["a_good"] and b.calls == []


async def test_a_flood_of_random_tokens_costs_at_most_the_rate_bound_then_503(
    gatehouse: GatehouseFactory, upstream_url: str, tmp_path: Path
) -> None:
    async with introspection_server() as other, introspection_server() as idp:
        gh = await started(
            gatehouse,
            upstream_url,
            issuers=[
                introspecting_issuer(other, tmp_path, token_prefix="other_"),
                introspecting_issuer(idp, tmp_path, max_requests_per_second=20),
            ],
        )
        started_at = time.monotonic()
        async with aiohttp.ClientSession() as s:
            replies = await asyncio.gather(
                *(call(gh, token=secrets.token_urlsafe(24), session=s) for _ in range(200))
            )
        elapsed = time.monotonic() - started_at
        outcomes = [(r.status, r.error) for r in replies]
        assert set(outcomes) <= {(401, "invalid_token"), (503, "idp_unavailable")}
        # Each call the IdP answered became one 401; everything over the bound a 503.
        assert outcomes.count((401, "invalid_token")) == len(idp.calls)
        assert 20 <= len(idp.calls) <= 20 + 20 * elapsed + 1
        assert outcomes.count((503, "idp_unavailable")) == 200 - len(idp.calls)
        assert other.calls == []  # never the other IdP's endpoint
        text = await metrics(gh)
        issuer = introspecting_issuer(idp, tmp_path)["issuer"]
        labels = {"issuer": issuer, "method": "opaque"}
        assert counter(
            text, "gatehouse_auth_total", result="idp_unavailable", **labels
        ) == 200 - len(idp.calls)


@pytest.mark.parametrize("active", [True, False])
async def test_concurrent_requests_with_one_token_share_one_call(
    gatehouse: GatehouseFactory, upstream_url: str, tmp_path: Path, active: bool
) -> None:
    async with introspection_server() as idp:
        issuer = introspecting_issuer(idp, tmp_path)
        if active:
            idp.answers["shared"] = {
                "active": True,
                "iss": issuer["issuer"],
                "aud": RESOURCE,
                "sub": "alice",
            }
        idp.delay = 0.3  # every request arrives while the one call is still out
        gh = await started(gatehouse, upstream_url, issuers=[issuer])
        async with aiohttp.ClientSession() as s:
            replies = await asyncio.gather(
                *(call(gh, token="shared", session=s) for _ in range(30))
            )
        expected = (200, None) if active else (401, "invalid_token")
        assert {(r.status, r.error) for r in replies} == {expected}
        assert idp.tokens == ["shared"]


@pytest.mark.parametrize(("negative_ttl", "calls"), [("10s", 1), ("0s", 5)])
async def test_inactive_answers_are_remembered_for_the_negative_cache_ttl(
    gatehouse: GatehouseFactory, upstream_url: str, tmp_path: Path, negative_ttl: str, calls: int
) -> None:
    async with introspection_server() as idp:
        issuer = introspecting_issuer(idp, tmp_path, negative_cache_ttl=negative_ttl)
        gh = await started(gatehouse, upstream_url, issuers=[issuer])
        for _ in range(5):
            assert (await call(gh, token="junk")).error == "invalid_token"
        assert len(idp.calls) == calls


_ANSWERS: dict[str, tuple[dict[str, Any], int, int]] = {
    # name: (claims over the base answer, status by default, status when relaxed)
    "iss and aud": ({}, 200, 200),
    "aud in a list": ({"aud": ["other", RESOURCE]}, 200, 200),
    "no aud": ({"aud": None}, 401, 200),
    "no iss": ({"iss": None}, 401, 200),
    "neither": ({"aud": None, "iss": None}, 401, 200),
    "wrong aud": ({"aud": "someone-else"}, 401, 401),
    "wrong aud list": ({"aud": ["a", "b"]}, 401, 401),
    "wrong iss": ({"iss": "https://elsewhere.test"}, 401, 401),
    "active as a string": ({"active": "true"}, 401, 401),
    "refresh token": ({"token_type": "refresh_token"}, 401, 401),
}


@pytest.mark.parametrize("relaxed", [False, True])
async def test_active_answers_must_name_the_issuer_and_an_audience_unless_relaxed(
    gatehouse: GatehouseFactory, upstream_url: str, tmp_path: Path, relaxed: bool
) -> None:
    async with introspection_server() as idp:
        options: dict[str, Any] = {"require_aud": False, "require_iss": False} if relaxed else {}
        issuer = introspecting_issuer(idp, tmp_path, **options)
        for name, (claims, _, _) in _ANSWERS.items():
            idp.answers[name.replace(" ", "-")] = _answer(issuer["issuer"], **claims)
        gh = await started(gatehouse, upstream_url, issuers=[issuer])
        for name, (_, strict_status, relaxed_status) in _ANSWERS.items():
            reply = await call(gh, token=name.replace(" ", "-"))
            assert reply.status == (relaxed_status if relaxed else strict_status), name
            assert reply.subject == ("alice" if reply.status == 200 else None)


@pytest.mark.parametrize("relaxed", [False, True])
async def test_the_real_providers_opaque_tokens_name_no_audience(
    gatehouse: GatehouseFactory,
    upstream_url: str,
    tmp_path: Path,
    provider: OidcProvider,
    relaxed: bool,
) -> None:
    secret = tmp_path / "web-secret"
    secret.write_text(WEB_CLIENT["client_secret"])
    introspection: dict[str, Any] = {
        "endpoint": f"{provider.issuer}/token/introspection",
        "client_id": WEB_CLIENT["client_id"],
        "client_secret_file": str(secret),
    }
    if relaxed:
        introspection["require_aud"] = False
    gh = await started(
        gatehouse,
        upstream_url,
        issuers=[
            {"issuer": provider.issuer, "audiences": [RESOURCE], "introspection": introspection}
        ],
    )
    token = await asyncio.to_thread(provider.client_credentials_token, OPAQUE_CLIENT)
    reply = await call(gh, token=token)
    if relaxed:
        assert (reply.status, reply.subject) == (200, OPAQUE_CLIENT["client_id"])
    else:
        assert (reply.status, reply.error) == (401, "invalid_token")


async def test_cookies_an_idp_sets_are_never_sent_back(
    gatehouse: GatehouseFactory, upstream_url: str, tmp_path: Path
) -> None:
    async with introspection_server() as idp, local_issuer("k1") as keys:
        idp.set_cookie = "idp_session=for-alice; Path=/"
        keys.set_cookie = "jwks_session=from-the-key-server; Path=/"
        # Host names, not IP literals: a cookie jar keeps cookies only for names.
        endpoint = idp.url.replace("127.0.0.1", "localhost")
        name = endpoint.rsplit("/", 1)[0]
        idp.answers["alice-token"] = _answer(name, sub="alice")
        idp.answers["bob-token"] = _answer(name, sub="bob")
        gh = await started(
            gatehouse,
            upstream_url,
            issuers=[
                {
                    "issuer": name,
                    "audiences": [RESOURCE],
                    "introspection": {
                        "endpoint": endpoint,
                        "client_id": "gatehouse",
                        "client_secret": "env:HOME",
                    },
                },
                {
                    "issuer": keys.issuer,
                    "audiences": [RESOURCE],
                    "jwks_uri": keys.issuer.replace("127.0.0.1", "localhost") + "/jwks",
                },
            ],
        )
        assert (await call(gh, token=keys.token(aud=RESOURCE))).status == 200
        assert (await call(gh, token="alice-token")).subject == "alice"
        assert (await call(gh, token="bob-token")).subject == "bob"
        assert (await call(gh, token=keys.random_kid_token())).status == 401  # a refetch
        assert idp.tokens == ["alice-token", "bob-token"]
        assert keys.jwks_fetches == 2
        assert idp.cookies_seen == [None, None]
        assert keys.cookies_seen == [None, None]


@pytest.mark.parametrize(
    ("value", "expected"), [(True, True), ("true", True), ("false", False), ("1", None)]
)
async def test_email_verified_is_taken_from_the_answer(
    env: tuple[IntrospectionServer, aiohttp.ClientSession, IssuerConfig],
    value: object,
    expected: bool | None,
) -> None:
    server, http, cfg = env
    server.answers["tok"] = active(email="alice@example.test", email_verified=value)
    identity = await Introspector(cfg, http, clock=Clock()).introspect("tok")
    assert (identity.email, identity.email_verified) == ("alice@example.test", expected)
