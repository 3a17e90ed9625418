"""Browser login's provider metadata and keys: single flight, backoff, recovery on its own."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from proxy.errors import IdentityProviderUnavailable
from proxy.identity.config import IssuerConfig
from proxy.identity.discovery import Backoff, ProviderDiscovery
from proxy.identity.jwks import JwksClient
from tests.peers.oidc_provider import WEB_CLIENT, OidcProvider, rsa_jwk
from tests.support.net import free_port


def test_backoff_doubles_with_jitter_up_to_its_cap_and_resets_on_success() -> None:
    rolls = iter([0.0, 0.999, 0.0, 0.0, 0.0, 0.0, 0.5])
    backoff = Backoff(base=1.0, maximum=8.0, rand=lambda: next(rolls))
    assert backoff.ready(0.0)
    waits = []
    for _ in range(6):
        backoff.failed(100.0)
        waits.append(backoff.wait(100.0))
    # Between half and all of min(8, 2^(n-1)): never an immediate retry.
    assert waits[0] == 0.5 and 1.99 < waits[1] <= 2.0
    assert waits[2:] == [2.0, 4.0, 4.0, 4.0]
    assert not backoff.ready(103.9) and backoff.ready(104.0)
    backoff.succeeded()
    assert backoff.ready(100.0) and backoff.failures == 0


def _cfg(issuer: str) -> IssuerConfig:
    return IssuerConfig(issuer=issuer, audiences=(WEB_CLIENT["client_id"],))


async def test_discovery_fails_fast_inside_its_backoff_then_recovers_in_the_background() -> None:
    provider = OidcProvider(keys=[rsa_jwk("rsa-1")], port=free_port())
    provider.issuer = f"http://127.0.0.1:{provider.port}"
    async with aiohttp.ClientSession() as http:
        discovery = ProviderDiscovery(
            http, _cfg(provider.issuer), None, backoff=Backoff(base=0.2, maximum=0.4)
        )
        try:
            await discovery.start()  # the IdP is down
            assert not discovery.ready() and discovery.attempts == 1
            started = time.monotonic()
            results = await asyncio.gather(
                *(discovery.get() for _ in range(50)), return_exceptions=True
            )
            assert all(isinstance(r, IdentityProviderUnavailable) for r in results)
            assert time.monotonic() - started < 0.1  # answered at once, no network
            assert discovery.attempts == 1
            await asyncio.to_thread(provider.start)
            deadline = time.monotonic() + 10
            while not discovery.ready():
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            metadata = await discovery.get()
            assert metadata.token_endpoint == f"{provider.issuer}/token"
            assert discovery.jwks is not None and len(discovery.jwks.current()) == 1
        finally:
            await discovery.close()
            await asyncio.to_thread(provider.close)


async def test_parallel_first_requests_share_one_discovery(provider: OidcProvider) -> None:
    async with aiohttp.ClientSession() as http:
        discovery = ProviderDiscovery(http, _cfg(provider.issuer), None)
        try:
            found = await asyncio.gather(*(discovery.get() for _ in range(20)))
            assert discovery.attempts == 1 and len({id(m) for m in found}) == 1
        finally:
            await discovery.close()


async def test_shared_issuer_keys_are_used_not_fetched_again(provider: OidcProvider) -> None:
    async with aiohttp.ClientSession() as http:
        shared = JwksClient(_cfg(provider.issuer), http)
        await shared.refresh()
        discovery = ProviderDiscovery(http, _cfg(provider.issuer), shared)
        try:
            await discovery.start()
            assert discovery.ready() and discovery.jwks is shared and shared.fetches == 1
        finally:
            await discovery.close()
        # Closing browser login leaves the issuer's own key client alone.
        assert len(shared.current(refresh=False)) == 1
        await shared.close()
