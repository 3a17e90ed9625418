"""JWKS client: Cache-Control bounds, stale-on-error max age, URL rules (fake clock)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from proxy.identity.config import IssuerConfig, JwksCacheConfig
from proxy.identity.fetch import max_age, parse_metadata
from proxy.identity.jwks import JwksClient
from proxy.observability.metrics import JWKS_REFRESH
from proxy.outbound import FetchError
from tests.conftest import GatehouseFactory
from tests.identity.jwks_server import LocalIssuer, local_issuer
from tests.identity.proxy_env import call, started
from tests.peers.oidc_provider import RESOURCE
from tests.support.gatehouse import Gatehouse

BOUNDS = JwksCacheConfig(min_ttl=60, max_ttl=3600, default_ttl=600, stale_max_age=7200)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0.01)


def client(issuer: LocalIssuer, http: aiohttp.ClientSession, clock: Clock) -> JwksClient:
    cfg = IssuerConfig(issuer=issuer.issuer, audiences=("a",), jwks_cache=BOUNDS)
    return JwksClient(cfg, http, clock=clock)


@pytest.mark.parametrize(
    ("cache_control", "refetch_after"),
    [("max-age=5", 60), ("max-age=999999", 3600), (None, 600), ("no-store", 60)],
)
async def test_cache_lifetime_follows_cache_control_within_bounds(
    http: aiohttp.ClientSession, cache_control: str | None, refetch_after: float
) -> None:
    async with local_issuer("k1") as issuer:
        issuer.cache_control = cache_control
        clock = Clock()
        jwks = client(issuer, http, clock)
        assert await jwks.refresh()
        clock.now += refetch_after - 1
        jwks.current()
        await settle()
        assert issuer.jwks_fetches == 1
        clock.now += 2
        assert len(jwks.current()) == 1  # old keys serve while the refresh runs
        await settle()
        assert issuer.jwks_fetches == 2


async def test_stale_keys_serve_until_max_age_then_fail_closed(
    http: aiohttp.ClientSession,
) -> None:
    async with local_issuer("k1") as issuer:
        clock = Clock()
        jwks = client(issuer, http, clock)
        assert await jwks.refresh()
        errors = JWKS_REFRESH.labels(issuer=issuer.issuer, result="error")
        before = errors._value.get()
        issuer.failing = True
        clock.now += 601
        jwks.current()
        await settle()
        assert not jwks.healthy
        assert errors._value.get() == before + 1
        clock.now = 1000 + 7199
        assert jwks.ready() and "k1" in jwks.current(refresh=False).by_kid
        clock.now = 1000 + 7201
        assert not jwks.ready()
        assert len(jwks.current(refresh=False)) == 0


async def test_background_refresh_after_a_failure_waits_for_the_interval(
    http: aiohttp.ClientSession,
) -> None:
    async with local_issuer("k1") as issuer:
        clock = Clock()
        jwks = client(issuer, http, clock)
        assert await jwks.refresh()
        issuer.failing = True
        clock.now += 601
        for _ in range(5):
            jwks.current()
            await settle()
        assert issuer.jwks_fetches == 2
        clock.now += 10
        jwks.current()
        await settle()
        assert issuer.jwks_fetches == 3


async def test_concurrent_refreshes_share_one_fetch(http: aiohttp.ClientSession) -> None:
    async with local_issuer("k1") as issuer:
        jwks = client(issuer, http, Clock())
        results = await asyncio.gather(*(jwks.refresh() for _ in range(20)))
        assert all(results)
        assert issuer.jwks_fetches == 1


def test_plain_http_is_refused_except_for_loopback() -> None:
    cfg = IssuerConfig(
        issuer="https://idp.example.test",
        audiences=("a",),
        jwks_uri="http://idp.example.test/jwks",
    )
    with pytest.raises(FetchError):
        JwksClient(cfg, None)  # type: ignore[arg-type]
    for uri in ("http://127.0.0.1:1/jwks", "http://[::1]:1/jwks", "https://idp.example.test/k"):
        loopback = IssuerConfig(issuer="https://idp.example.test", audiences=("a",), jwks_uri=uri)
        JwksClient(loopback, None)  # type: ignore[arg-type]


def test_discovery_document_must_name_the_issuer_and_stay_on_its_origin() -> None:
    issuer = "https://idp.example.test"
    ok = parse_metadata(issuer, {"issuer": issuer, "jwks_uri": f"{issuer}/keys"})
    assert ok.jwks_uri == f"{issuer}/keys"
    bad_docs = [
        {"issuer": issuer + "/", "jwks_uri": f"{issuer}/keys"},
        {"issuer": issuer, "jwks_uri": "https://evil.test/keys"},
        {"issuer": issuer, "jwks_uri": "https://idp.example.test:8443/keys"},
        {"issuer": issuer, "jwks_uri": "http://idp.example.test/keys"},
        {"issuer": issuer, "jwks_uri": f"{issuer}/k", "token_endpoint": "https://evil.test/t"},
        {"issuer": issuer},
        ["not", "an", "object"],
    ]
    for doc in bad_docs:
        with pytest.raises(FetchError):
            parse_metadata(issuer, doc)


def test_cache_control_parsing() -> None:
    assert max_age("public, max-age=300") == 300
    assert max_age('max-age="60", must-revalidate') == 60
    assert max_age("no-cache") == 0
    assert max_age("private") is None
    assert max_age(None) is None
    assert max_age("s-maxage=5") is None


# -- an unknown kid through a real gatehouse: 401 when the IdP answered without it,
# -- 503 only when no key source could be reached ------------------------------------
async def _gatehouse_for(
    gatehouse: GatehouseFactory, upstream_url: str, issuer: LocalIssuer
) -> Gatehouse:
    return await started(
        gatehouse, upstream_url, issuers=[{"issuer": issuer.issuer, "audiences": [RESOURCE]}]
    )


def _kidless(issuer: LocalIssuer) -> str:
    """ES256 without a kid: the issuer publishes no key of that type (only RSA)."""
    stranger = ec.generate_private_key(ec.SECP256R1())
    now = int(time.time())
    payload = {"iss": issuer.issuer, "aud": RESOURCE, "sub": "x", "exp": now + 300}
    return jwt.encode(payload, stranger, algorithm="ES256")


async def test_an_unknown_kid_the_idp_does_not_publish_is_401_after_one_refetch(
    gatehouse: GatehouseFactory, upstream_url: str
) -> None:
    async with local_issuer("k1") as issuer:
        gh = await _gatehouse_for(gatehouse, upstream_url, issuer)
        assert issuer.jwks_fetches == 1
        for token in (issuer.random_kid_token(), issuer.random_kid_token(), _kidless(issuer)):
            reply = await call(gh, token=token)
            assert (reply.status, reply.error) == (401, "invalid_token")
            assert reply.www_authenticate is not None
        assert issuer.jwks_fetches == 2  # one refetch, then rate-limited, still 401
        assert (await call(gh, token=issuer.token(aud=RESOURCE))).status == 200


async def test_a_kid_published_after_rotation_is_found_by_the_refetch(
    gatehouse: GatehouseFactory, upstream_url: str
) -> None:
    async with local_issuer("k1") as issuer:
        gh = await _gatehouse_for(gatehouse, upstream_url, issuer)
        issuer.add_key("k2")
        reply = await call(gh, token=issuer.token(kid="k2", aud=RESOURCE))
        assert (reply.status, reply.subject) == (200, "svc")


async def _unknown_kid_is_503_and_known_keys_serve(
    gh: Gatehouse, issuer: LocalIssuer, known: str
) -> None:
    for token in (issuer.random_kid_token(), _kidless(issuer)):
        reply = await call(gh, token=token)
        assert (reply.status, reply.error) == (503, "idp_unavailable")
    assert (await call(gh, token=known)).status == 200  # known keys keep serving


@pytest.mark.parametrize("outage", ["http 503", "not a JWKS", "no usable key", "gone"])
async def test_an_unknown_kid_while_the_key_source_is_unreachable_is_503(
    gatehouse: GatehouseFactory, upstream_url: str, outage: str
) -> None:
    async with local_issuer("k1") as issuer:
        gh = await started(
            gatehouse,
            upstream_url,
            issuers=[
                {
                    "issuer": issuer.issuer,
                    "audiences": [RESOURCE],
                    "jwks_cache": {"refetch_interval": "0s"},  # every unknown kid asks
                }
            ],
        )
        known = issuer.token(aud=RESOURCE)
        assert (await call(gh, token=known)).status == 200
        issuer.failing = outage == "http 503"
        if outage == "not a JWKS":
            issuer.raw_jwks = b"<html>maintenance</html>"
        elif outage == "no usable key":
            issuer.raw_jwks = b'{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}'
        if outage != "gone":
            fetches = issuer.jwks_fetches
            await _unknown_kid_is_503_and_known_keys_serve(gh, issuer, known)
            assert issuer.jwks_fetches == fetches + 2  # it was asked, and could not say
    if outage == "gone":  # the issuer's server has stopped
        await _unknown_kid_is_503_and_known_keys_serve(gh, issuer, known)
