"""Gatehouse-signed assertions verified by the sample FastAPI dependency via our JWKS."""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web

from proxy.credentials.broker import CredentialBroker
from proxy.credentials.config import AssertionSigningConfig, AssertionSpec
from proxy.credentials.providers.assertion import (
    MAX_CACHED_ASSERTIONS,
    AssertionProvider,
    AssertionSigner,
    claims_within_budget,
)
from proxy.credentials.signing import load_signing_keys, rotate_key_file
from tests.credentials.conftest import caller, make_broker, parse_backends, route, run_uvicorn
from tests.peers.cloud.server import PeerServer

JWKS_PATH = "/.well-known/gatehouse/jwks.json"


class JwksServer(PeerServer):
    """Serves the broker's JWKS document the way the proxy's local endpoint does."""

    def __init__(self) -> None:
        super().__init__()
        self.broker: CredentialBroker | None = None
        self.app.router.add_get(JWKS_PATH, self._jwks)

    async def _jwks(self, request: web.Request) -> web.Response:
        self.count("jwks")
        assert self.broker is not None
        return web.Response(body=self.broker.jwks_document(), content_type="application/json")


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "assertion-keys.json"
    rotate_key_file(path)
    return path


@pytest.fixture
async def gatehouse(
    tmp_path: Path, keys_file: Path
) -> AsyncIterator[tuple[CredentialBroker, JwksServer]]:
    server = await JwksServer().start()
    specs, signing = parse_backends(
        tmp_path,
        f"""
assertions:
  signing_keys_file: {keys_file}
  lifetime: 2m
  publish_before_use: 0.5s
backends:
  app:
    credentials: {{type: assertion}}
  other:
    credentials: {{type: assertion, audience: urn:other}}
""",
    )
    broker = await make_broker(specs, signing, public_url=server.url + "/")
    server.broker = broker
    yield broker, server
    await broker.close()
    await server.stop()


@pytest.fixture
def backend(gatehouse: tuple[CredentialBroker, JwksServer]) -> Iterator[str]:
    _, server = gatehouse
    env = {"GATEHOUSE_URL": server.url, "GATEHOUSE_AUDIENCE": "app"}
    with run_uvicorn("tests.credentials.assertion_app:app", env) as url:
        yield url + "/api/whoami"


def _call(url: str, headers: dict[str, str]) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


async def call(url: str, headers: dict[str, str]) -> tuple[int, Any]:
    # Off the loop: the backend fetches our JWKS from a server on this loop.
    return await asyncio.to_thread(_call, url, headers)


async def test_backend_dependency_verifies_the_assertion_and_sees_the_caller(
    gatehouse: tuple[CredentialBroker, JwksServer], backend: str
) -> None:
    broker, server = gatehouse
    alice = caller("alice", claims={"department": "payments", "secret_level": 3})
    r = route("app", pass_claims=("department",))
    headers = dict(await broker.headers("app", r, alice))
    status, claims = await call(backend, headers)
    assert status == 200, claims
    assert claims["iss"] == server.url
    assert claims["aud"] == "app"
    assert claims["sub"] == "alice"
    assert claims["email"] == "alice@example.com"
    assert claims["groups"] == ["eng"]
    assert claims["department"] == "payments"
    assert "secret_level" not in claims  # only the route's pass_claims travel
    assert 0 < claims["exp"] - claims["iat"] <= 120
    header = jwt.get_unverified_header(headers["X-Gatehouse-Assertion"])
    assert header["alg"] == "ES256"
    assert header["kid"]


async def test_backend_refuses_missing_forged_and_other_audience_assertions(
    gatehouse: tuple[CredentialBroker, JwksServer], backend: str, tmp_path: Path
) -> None:
    broker, _ = gatehouse
    assert (await call(backend, {}))[0] == 401
    for_other = dict(await broker.headers("other", route("other"), caller()))
    assert (await call(backend, for_other))[0] == 401
    # Same kid, a key that is not ours.
    good = dict(await broker.headers("app", route("app"), caller()))["X-Gatehouse-Assertion"]
    stranger = tmp_path / "stranger.json"
    rotate_key_file(stranger)
    (key,) = load_signing_keys(stranger)
    payload = jwt.decode(good, options={"verify_signature": False})
    forged = jwt.encode(
        {**payload, "sub": "root"},
        key.private_key,
        algorithm="ES256",
        headers={"kid": jwt.get_unverified_header(good)["kid"]},
    )
    assert (await call(backend, {"X-Gatehouse-Assertion": forged}))[0] == 401


async def test_key_rotation_publishes_first_signs_later_and_keeps_the_old_kid(
    gatehouse: tuple[CredentialBroker, JwksServer], backend: str, keys_file: Path
) -> None:
    broker, _ = gatehouse
    assert broker.signer is not None
    before = dict(await broker.headers("app", route("app"), caller()))
    old_kid = jwt.get_unverified_header(before["X-Gatehouse-Assertion"])["kid"]
    new_kid = rotate_key_file(keys_file, keep=1)
    broker.signer.load()  # what the 1 s mtime check does on its own
    published = {k["kid"] for k in json.loads(broker.jwks_document())["keys"]}
    assert published == {old_kid, new_kid}
    # Published but not yet signing: backends get time to see it.
    during = dict(await broker.headers("app", route("app"), caller()))
    assert jwt.get_unverified_header(during["X-Gatehouse-Assertion"])["kid"] == old_kid
    await asyncio.sleep(0.6)  # publish_before_use: 0.5s in this config
    after = dict(await broker.headers("app", route("app"), caller()))
    assert jwt.get_unverified_header(after["X-Gatehouse-Assertion"])["kid"] == new_kid
    # An assertion issued before the rotation and one after both verify.
    assert (await call(backend, before))[0] == 200
    assert (await call(backend, after))[0] == 200
    assert all("d" not in k for k in json.loads(broker.jwks_document())["keys"])


def test_pass_claims_over_the_byte_budget_are_dropped_whole_in_route_order() -> None:
    who = caller(
        claims={
            "department": "payments",
            "roles": ["r" * 40] * 50,
            "tenant": "t1",
            "sub": "spoofed",
        }
    )
    out, dropped = claims_within_budget(who, ("department", "roles", "tenant", "sub"), 64)
    assert out == {"department": "payments", "tenant": "t1"}
    assert dropped == ["roles"]
    assert len(json.dumps(out, separators=(",", ":"))) <= 64


async def test_assertion_respects_the_route_budget_and_reserved_claims(
    gatehouse: tuple[CredentialBroker, JwksServer],
) -> None:
    broker, _ = gatehouse
    who = caller(claims={"big": "x" * 5000, "iss": "https://evil", "team": "core"})
    r = route("app", pass_claims=("big", "iss", "team"), pass_claims_max_bytes=1024)
    ((_, token),) = await broker.headers("app", r, who)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert "big" not in claims
    assert claims["team"] == "core"
    assert claims["iss"] == broker.public_url
    assert len(token) < 1500


async def test_anonymous_request_gets_an_assertion_without_a_subject(
    gatehouse: tuple[CredentialBroker, JwksServer], backend: str
) -> None:
    broker, _ = gatehouse
    headers = dict(await broker.headers("app", route("app"), None))
    status, claims = await call(backend, headers)
    assert status == 200
    assert "sub" not in claims


async def test_no_assertion_or_caller_token_appears_in_any_log_record(
    gatehouse: tuple[CredentialBroker, JwksServer], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    broker, _ = gatehouse
    who = caller(token="caller-bearer-token-value", claims={"big": "x" * 5000})
    r = route("app", pass_claims=("big",), pass_claims_max_bytes=100)
    ((_, token),) = await broker.headers("app", r, who)
    broker.invalidate("app", who)
    records = [f"{rec.getMessage()} {rec.__dict__}" for rec in caplog.records]
    assert any("pass_claims over budget" in text for text in records)
    for text in records:
        assert token not in text
        assert "caller-bearer-token-value" not in text
        assert "x" * 100 not in text


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def signed_by(keys_file: Path, clock: Clock) -> AssertionProvider:
    signing = AssertionSigningConfig("test", keys_file, lifetime=120.0)
    signer = AssertionSigner(signing, "https://gatehouse.test")
    signer.load()
    return AssertionProvider(AssertionSpec("app", "test", "app"), signer, clock=clock)


def token_of(headers: list[tuple[str, str]]) -> str:
    ((_, token),) = headers
    return token


def test_one_caller_gets_the_same_assertion_while_more_than_half_its_lifetime_is_left(
    keys_file: Path,
) -> None:
    clock = Clock()
    provider = signed_by(keys_file, clock)
    first = token_of(provider.headers(route("app"), caller("alice")))
    clock.now += 59
    assert token_of(provider.headers(route("app"), caller("alice"))) == first
    clock.now += 1  # half of the 120 s lifetime gone: sign a fresh one
    fresh = token_of(provider.headers(route("app"), caller("alice")))
    assert fresh != first
    claims = jwt.decode(fresh, options={"verify_signature": False})
    assert claims["iat"] == int(clock.now) and claims["exp"] == int(clock.now) + 120


def test_a_different_caller_or_different_claims_never_share_an_assertion(
    keys_file: Path,
) -> None:
    provider = signed_by(keys_file, Clock())
    r = route("app", pass_claims=("department",))
    alice = caller("alice", claims={"department": "payments"})
    callers = [
        alice,
        caller("bob", claims={"department": "payments"}),
        caller("alice", claims={"department": "risk"}),
        replace(alice, groups=frozenset({"ops"})),
        replace(alice, email="other@example.com"),
        replace(alice, issuer="https://other.test"),
        None,
    ]
    tokens = [token_of(provider.headers(r, who)) for who in callers]
    assert len(set(tokens)) == len(callers)
    decoded = [jwt.decode(t, options={"verify_signature": False}) for t in tokens]
    subjects = [d.get("sub") for d in decoded]
    assert subjects == ["alice", "bob", "alice", "alice", "alice", "alice", None]
    assert decoded[2]["department"] == "risk" and decoded[3]["groups"] == ["ops"]
    assert decoded[4]["email"] == "other@example.com"
    assert decoded[5]["idp"] == "https://other.test"
    # The same caller again is served from the cache, whichever route shows the same claims.
    again = token_of(provider.headers(route("app", pass_claims=("department",)), callers[0]))
    assert again == tokens[0]


def test_a_clock_stepped_back_signs_afresh(keys_file: Path) -> None:
    clock = Clock()
    provider = signed_by(keys_file, clock)
    first = token_of(provider.headers(route("app"), caller()))
    clock.now -= 3600
    stepped = token_of(provider.headers(route("app"), caller()))
    assert stepped != first
    assert jwt.decode(stepped, options={"verify_signature": False})["iat"] == int(clock.now)


def test_the_assertion_cache_is_bounded(keys_file: Path) -> None:
    provider = signed_by(keys_file, Clock())
    for i in range(MAX_CACHED_ASSERTIONS + 10):
        provider.headers(route("app"), caller(f"user{i}"))
    assert provider.cached == MAX_CACHED_ASSERTIONS


async def test_an_upstream_401_makes_the_broker_sign_a_new_assertion(
    gatehouse: tuple[CredentialBroker, JwksServer],
) -> None:
    broker, _ = gatehouse
    first = dict(await broker.headers("app", route("app"), caller()))
    assert dict(await broker.headers("app", route("app"), caller())) == first
    broker.invalidate("app", caller())
    assert dict(await broker.headers("app", route("app"), caller())) != first
