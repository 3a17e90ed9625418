"""RFC 8693: the caller's token exchanged for one scoped to the backend, cached per caller."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy.credentials.broker import CredentialBroker
from proxy.errors import AuthenticationError, UpstreamCredentialsUnavailable
from tests.credentials.conftest import caller, make_broker, parse_backends, route
from tests.peers.cloud.keys import Issuer
from tests.peers.cloud.oauth import OAuthServer

IDP = Issuer("https://idp.test")


@pytest.fixture
async def sts() -> AsyncIterator[OAuthServer]:
    server = await OAuthServer(subject_issuer=IDP).start()
    server.add_client("gatehouse", "exchange-secret")
    yield server
    await server.stop()


@pytest.fixture
async def broker(sts: OAuthServer, tmp_path: Path) -> AsyncIterator[CredentialBroker]:
    secret = tmp_path / "secret"
    secret.write_text("exchange-secret", encoding="utf-8")
    specs, _ = parse_backends(
        tmp_path,
        f"""
backends:
  jobs:
    credentials:
      type: token_exchange
      token_url: {sts.token_url}
      client_id: gatehouse
      client_secret_file: {secret}
      audience: https://jobs.test
      scope: jobs.run
""",
    )
    b = await make_broker(specs)
    yield b
    await b.close()


async def test_exchanged_token_carries_the_caller_and_the_backend_audience(
    sts: OAuthServer, broker: CredentialBroker
) -> None:
    alice = caller("alice", token=IDP.mint({"sub": "alice"}))
    ((name, value),) = await broker.headers("jobs", route("jobs"), alice)
    claims = sts.issuer.verify(value.removeprefix("Bearer "), "https://jobs.test")
    assert name == "Authorization"
    assert claims["sub"] == "alice"
    assert claims["act"] == {"sub": "gatehouse"}
    assert claims["scope"] == "jobs.run"


async def test_tokens_are_cached_per_caller_and_never_shared(
    sts: OAuthServer, broker: CredentialBroker
) -> None:
    alice = caller("alice", token=IDP.mint({"sub": "alice"}))
    bob = caller("bob", token=IDP.mint({"sub": "bob"}))
    results = await asyncio.gather(
        *(broker.headers("jobs", route("jobs"), who) for who in [alice, bob] * 50)
    )
    assert sts.calls["exchange"] == 2
    subjects = {
        sts.issuer.verify(r[0][1].removeprefix("Bearer "), "https://jobs.test")["sub"]
        for r in results
    }
    assert subjects == {"alice", "bob"}
    assert results[0] == results[2] != results[1]


async def test_invalidate_after_401_refetches_only_that_callers_token(
    sts: OAuthServer, broker: CredentialBroker
) -> None:
    alice = caller("alice", token=IDP.mint({"sub": "alice"}))
    bob = caller("bob", token=IDP.mint({"sub": "bob"}))
    await broker.headers("jobs", route("jobs"), alice)
    await broker.headers("jobs", route("jobs"), bob)
    broker.invalidate("jobs", alice)
    await broker.headers("jobs", route("jobs"), alice)
    await broker.headers("jobs", route("jobs"), bob)
    assert sts.calls["exchange"] == 3


async def test_a_caller_without_a_token_gets_401_and_the_exchange_endpoint_is_not_called(
    broker: CredentialBroker, sts: OAuthServer
) -> None:
    # Signed in with an API key or a client certificate: nothing to exchange.
    for who in (caller("carol"), None):
        with pytest.raises(AuthenticationError) as err:
            await broker.headers("jobs", route("jobs"), who)
        assert (err.value.status, err.value.reason) == (401, "bearer_token_required")
    assert sum(sts.attempts.values()) == 0
    assert broker.ready()  # one caller's missing token says nothing about the backend


async def test_a_caller_with_a_rejected_token_gets_503(broker: CredentialBroker) -> None:
    forged = Issuer("https://idp.test").mint({"sub": "mallory"})  # right iss, wrong key
    with pytest.raises(UpstreamCredentialsUnavailable) as err:
        await broker.headers("jobs", route("jobs"), caller("mallory", token=forged))
    assert "invalid_grant" in err.value.detail
    assert forged not in err.value.detail
