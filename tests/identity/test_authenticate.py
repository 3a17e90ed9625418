"""Bearer authentication against the real oidc-provider and a counting local issuer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import jwt
import pytest
from prometheus_client import REGISTRY

from proxy.config.reader import SecretRef
from proxy.errors import AuthenticationError, IdentityProviderUnavailable
from proxy.identity.apikeys import create_key
from proxy.identity.authenticate import Authenticator
from proxy.identity.config import (
    ApiKeysConfig,
    IdentityConfig,
    IntrospectionConfig,
    JwksCacheConfig,
)
from proxy.observability.metrics import AUTH, TOKEN_CACHE
from tests.identity.conftest import bearer, facts, identity_config, issuer_config
from tests.identity.jwks_server import LocalIssuer, local_issuer
from tests.peers.oidc_provider import (
    OPAQUE_CLIENT,
    WEB_CLIENT,
    OidcProvider,
    oidc_provider,
    private_key,
    rsa_jwk,
)


async def started(config: IdentityConfig) -> Authenticator:
    auth = Authenticator(config)
    await auth.start()
    return auth


@pytest.fixture
async def provider_auth(provider: OidcProvider) -> AsyncIterator[Authenticator]:
    auth = await started(identity_config(issuer_config(provider.issuer)))
    yield auth
    await auth.close()


def metric(counter: object, **labels: str) -> float:
    """A counter's value as the exposition shows it (prometheus_client's public reader)."""
    name = f"{counter.name}_total"  # type: ignore[attr-defined]
    return REGISTRY.get_sample_value(name, labels) or 0.0


# -- the real provider --------------------------------------------------------
async def test_client_credentials_jwt_from_the_provider_is_accepted(
    provider: OidcProvider, provider_auth: Authenticator
) -> None:
    assert provider_auth.ready()
    token = await asyncio.to_thread(provider.client_credentials_token)
    before = metric(AUTH, issuer=provider.issuer, method="jwt", result="ok")
    identity = await provider_auth.authenticate(bearer(token))
    assert identity is not None
    assert identity.subject == "svc-ci"
    assert identity.method == "jwt"
    assert identity.issuer == provider.issuer
    assert identity.groups == frozenset({"deployers"})
    assert "api:read" in identity.scopes
    assert identity.token == token
    assert metric(AUTH, issuer=provider.issuer, method="jwt", result="ok") == before + 1


async def test_verified_token_cache_hits_on_the_second_request(
    provider: OidcProvider, provider_auth: Authenticator
) -> None:
    token = await asyncio.to_thread(provider.client_credentials_token)
    misses = metric(TOKEN_CACHE, result="miss")
    hits = metric(TOKEN_CACHE, result="hit")
    first = await provider_auth.authenticate(bearer(token))
    second = await provider_auth.authenticate(bearer(token))
    assert first == second
    assert metric(TOKEN_CACHE, result="miss") == misses + 1
    assert metric(TOKEN_CACHE, result="hit") == hits + 1


async def test_cached_answers_a_verified_bearer_and_defers_to_an_api_key_header(
    provider: OidcProvider, tmp_path: Path
) -> None:
    keys = tmp_path / "keys.yaml"
    key = create_key(keys, name="ci", subject="svc-key", groups=[])
    config = identity_config(issuer_config(provider.issuer), api_keys=ApiKeysConfig(file=keys))
    auth = await started(config)
    try:
        token = await asyncio.to_thread(provider.client_credentials_token)
        assert auth.cached(bearer(token)) is None  # never verified: the full path runs
        verified = await auth.authenticate_full(bearer(token))
        assert auth.cached(bearer(token)) == verified
        assert auth.cached(facts({"Authorization": f"Basic {token}"})) is None
        # The API key header comes first in authenticate_full; cached() must not skip it.
        both = facts({"Authorization": f"Bearer {token}", "X-Api-Key": key})
        assert auth.cached(both) is None
        identity = await auth.authenticate(both)
        assert identity is not None and identity.subject == "svc-key"
    finally:
        await auth.close()


async def test_cached_token_still_expires(provider: OidcProvider) -> None:
    clock = [time.time()]
    auth = Authenticator(identity_config(issuer_config(provider.issuer)), clock=lambda: clock[0])
    await auth.start()
    try:
        token = await asyncio.to_thread(provider.client_credentials_token)
        assert await auth.authenticate(bearer(token)) is not None
        clock[0] += 300 + 61  # token TTL + clock skew
        with pytest.raises(AuthenticationError) as info:
            await auth.authenticate(bearer(token))
        assert info.value.reason == "expired_token"
    finally:
        await auth.close()


async def test_cached_token_is_refused_when_the_clock_steps_back_before_its_iat(
    provider: OidcProvider,
) -> None:
    clock = [time.time()]
    auth = Authenticator(identity_config(issuer_config(provider.issuer)), clock=lambda: clock[0])
    await auth.start()
    try:
        token = await asyncio.to_thread(provider.client_credentials_token)
        assert await auth.authenticate(bearer(token)) is not None
        clock[0] -= 3600  # far beyond the clock skew: the token is "issued in the future"
        with pytest.raises(AuthenticationError) as info:
            await auth.authenticate(bearer(token))
        assert info.value.reason == "invalid_token"
        clock[0] += 3600
        assert await auth.authenticate(bearer(token)) is not None
    finally:
        await auth.close()


async def test_token_cache_keeps_only_the_most_recently_used_tokens(
    provider: OidcProvider,
) -> None:
    auth = await started(identity_config(issuer_config(provider.issuer), token_cache_size=2))
    try:
        tokens = [await asyncio.to_thread(provider.client_credentials_token) for _ in range(3)]
        for token in tokens:
            await auth.authenticate(bearer(token))
        hits, misses = metric(TOKEN_CACHE, result="hit"), metric(TOKEN_CACHE, result="miss")
        await auth.authenticate(bearer(tokens[2]))  # still cached
        await auth.authenticate(bearer(tokens[0]))  # pushed out by the third
        assert metric(TOKEN_CACHE, result="hit") == hits + 1
        assert metric(TOKEN_CACHE, result="miss") == misses + 1
    finally:
        await auth.close()


async def test_token_for_another_audience_is_rejected(provider: OidcProvider) -> None:
    auth = await started(identity_config(issuer_config(provider.issuer, audiences=("other",))))
    try:
        token = await asyncio.to_thread(provider.client_credentials_token)
        with pytest.raises(AuthenticationError):
            await auth.authenticate(bearer(token))
    finally:
        await auth.close()


async def test_token_from_an_unconfigured_issuer_is_rejected(
    provider: OidcProvider, provider_auth: Authenticator
) -> None:
    key = private_key(provider.keys[0])
    now = int(time.time())
    forged = jwt.encode(
        {"iss": provider.issuer + "/", "aud": "urn:gatehouse:api", "sub": "x", "exp": now + 60},
        key,
        algorithm="RS256",
        headers={"kid": provider.keys[0]["kid"]},
    )
    with pytest.raises(AuthenticationError) as info:
        await provider_auth.authenticate(bearer(forged))
    assert info.value.reason == "invalid_token"


async def test_no_credential_means_no_identity(provider_auth: Authenticator) -> None:
    assert await provider_auth.authenticate(facts()) is None
    assert await provider_auth.authenticate(facts({"Authorization": "Basic dTpw"})) is None


async def test_empty_or_oversize_bearer_is_rejected(provider_auth: Authenticator) -> None:
    for value in ("Bearer ", "Bearer " + "a" * 10_000 + ".b.c"):
        with pytest.raises(AuthenticationError):
            await provider_auth.authenticate(facts({"Authorization": value}))


async def test_provider_key_rotation_accepts_new_kid_after_one_refetch_and_drops_old() -> None:
    with oidc_provider([rsa_jwk("old")]) as op:
        auth = await started(identity_config(issuer_config(op.issuer)))
        try:
            jwks = auth.jwks_client(op.issuer)
            assert jwks is not None
            old_token = await asyncio.to_thread(op.client_credentials_token)
            assert await auth.authenticate(bearer(old_token)) is not None
            await asyncio.to_thread(op.restart, [rsa_jwk("new")])
            new_token = await asyncio.to_thread(op.client_credentials_token)
            assert jwt.get_unverified_header(new_token)["kid"] == "new"
            fetches = jwks.fetches
            identity = await auth.authenticate(bearer(new_token))
            assert identity is not None
            assert identity.subject == "svc-ci"
            assert jwks.fetches == fetches + 1
            # The old token was verified and cached before: its key is gone, so it fails now.
            with pytest.raises(AuthenticationError) as info:
                await auth.authenticate(bearer(old_token))
            assert info.value.reason == "invalid_token"
            assert jwks.fetches == fetches + 1  # no second refetch within the interval
        finally:
            await auth.close()


async def test_provider_down_keeps_known_keys_and_fails_closed_on_unknown_kid() -> None:
    with oidc_provider([rsa_jwk("k1")]) as op:
        auth = await started(identity_config(issuer_config(op.issuer)))
        try:
            token = await asyncio.to_thread(op.client_credentials_token)
            key = private_key(op.keys[0])
            op.stop()
            identity = await auth.authenticate(bearer(token))
            assert identity is not None
            now = int(time.time())
            unknown = jwt.encode(
                {"iss": op.issuer, "aud": "urn:gatehouse:api", "sub": "x", "exp": now + 60},
                key,
                algorithm="RS256",
                headers={"kid": "rotated-while-down"},
            )
            with pytest.raises(IdentityProviderUnavailable) as info:
                await auth.authenticate(bearer(unknown))
            assert info.value.status == 503
            assert info.value.reason == "idp_unavailable"
            # Known keys keep working after the failed refetch.
            assert await auth.authenticate(bearer(token)) is not None
            assert auth.ready()
        finally:
            await auth.close()


async def test_opaque_token_is_introspected_and_cached(
    provider: OidcProvider, tmp_path: Path
) -> None:
    secret_file = tmp_path / "introspection-secret"
    secret_file.write_text(WEB_CLIENT["client_secret"])
    introspection = IntrospectionConfig(
        endpoint=f"{provider.issuer}/token/introspection",
        client_id=WEB_CLIENT["client_id"],
        client_secret=SecretRef("file", str(secret_file)),
        cache_ttl=60,
        require_aud=False,  # the provider's opaque tokens name no audience
    )
    auth = await started(
        identity_config(issuer_config(provider.issuer, introspection=introspection))
    )
    try:
        token = await asyncio.to_thread(provider.client_credentials_token, OPAQUE_CLIENT)
        assert token.count(".") != 2
        identity = await auth.authenticate(bearer(token))
        assert identity is not None
        assert identity.method == "opaque"
        assert identity.subject == OPAQUE_CLIENT["client_id"]
        assert await auth.authenticate(bearer(token)) == identity
        introspector = auth.introspector(provider.issuer)
        assert introspector is not None
        assert introspector.requests == 1
        with pytest.raises(AuthenticationError) as info:
            await auth.authenticate(bearer("not-a-token-the-provider-ever-issued"))
        assert info.value.status == 401
    finally:
        await auth.close()


async def test_introspection_with_wrong_client_secret_is_unavailable_not_accepted(
    provider: OidcProvider, tmp_path: Path
) -> None:
    secret_file = tmp_path / "wrong"
    secret_file.write_text("wrong-secret")
    introspection = IntrospectionConfig(
        endpoint=f"{provider.issuer}/token/introspection",
        client_id=WEB_CLIENT["client_id"],
        client_secret=SecretRef("file", str(secret_file)),
    )
    auth = await started(
        identity_config(issuer_config(provider.issuer, introspection=introspection))
    )
    try:
        token = await asyncio.to_thread(provider.client_credentials_token, OPAQUE_CLIENT)
        with pytest.raises(IdentityProviderUnavailable):
            await auth.authenticate(bearer(token))
    finally:
        await auth.close()


# -- a counting local issuer --------------------------------------------------------
async def local_auth(issuer: LocalIssuer, **jwks: float) -> Authenticator:
    cfg = issuer_config(issuer.issuer, jwks_cache=JwksCacheConfig(**jwks))
    return await started(identity_config(cfg))


async def test_flood_of_random_kids_causes_one_jwks_fetch_per_interval() -> None:
    async with local_issuer("k1") as issuer:
        auth = await local_auth(issuer)
        try:
            assert issuer.jwks_fetches == 1
            tokens = [issuer.random_kid_token() for _ in range(200)]
            results = await asyncio.gather(
                *(auth.authenticate(bearer(t)) for t in tokens), return_exceptions=True
            )
            assert all(isinstance(r, AuthenticationError) for r in results)
            assert all(not isinstance(r, IdentityProviderUnavailable) for r in results)
            for token in tokens[:50]:
                with pytest.raises(AuthenticationError):
                    await auth.authenticate(bearer(token))
            assert issuer.jwks_fetches == 2  # startup + one single-flight refetch
            assert await auth.authenticate(bearer(issuer.token())) is not None
        finally:
            await auth.close()


async def test_refetch_rate_limit_allows_one_fetch_per_interval_over_time() -> None:
    async with local_issuer("k1") as issuer:
        auth = await local_auth(issuer, refetch_interval=0.3)
        try:
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                with pytest.raises(AuthenticationError):
                    await auth.authenticate(bearer(issuer.random_kid_token()))
                await asyncio.sleep(0.01)
            # 1 s of flood at one refetch per 0.3 s: at most 4, plus the startup fetch.
            assert 2 <= issuer.jwks_fetches <= 5
        finally:
            await auth.close()


async def test_failed_refetch_keeps_known_keys() -> None:
    async with local_issuer("k1") as issuer:
        auth = await local_auth(issuer, refetch_interval=0)
        try:
            good = issuer.token()
            issuer.failing = True
            with pytest.raises(IdentityProviderUnavailable):
                await auth.authenticate(bearer(issuer.random_kid_token()))
            assert issuer.jwks_fetches == 2
            assert await auth.authenticate(bearer(good)) is not None
        finally:
            await auth.close()


async def test_no_keys_at_startup_fails_closed_with_503() -> None:
    async with local_issuer("k1") as issuer:
        issuer.failing = True
        auth = await local_auth(issuer)
        try:
            assert not auth.ready()
            with pytest.raises(IdentityProviderUnavailable):
                await auth.authenticate(bearer(issuer.token()))
        finally:
            await auth.close()


async def test_discovery_pointing_off_origin_is_refused() -> None:
    async with local_issuer("k1") as issuer, local_issuer("k1") as elsewhere:
        issuer.jwks_origin = elsewhere.issuer
        auth = await local_auth(issuer)
        try:
            assert not auth.ready()
            assert elsewhere.jwks_fetches == 0
            with pytest.raises(IdentityProviderUnavailable):
                await auth.authenticate(bearer(issuer.token()))
        finally:
            await auth.close()


async def test_api_key_shaped_bearer_is_never_sent_to_introspection(
    provider: OidcProvider, tmp_path: Path
) -> None:
    introspection = IntrospectionConfig(
        endpoint=f"{provider.issuer}/token/introspection",
        client_id=WEB_CLIENT["client_id"],
        client_secret=None,
    )
    auth = await started(
        identity_config(issuer_config(provider.issuer, introspection=introspection))
    )
    try:
        with pytest.raises(AuthenticationError) as info:
            await auth.authenticate(bearer("gh_0123456789ab_" + "s" * 43))
        assert info.value.reason == "invalid_api_key"
        introspector = auth.introspector(provider.issuer)
        assert introspector is not None
        assert introspector.requests == 0
    finally:
        await auth.close()


async def test_hmac_issuer_uses_only_its_secret_file(tmp_path: Path) -> None:
    secret = tmp_path / "hs"
    secret.write_text("a-long-shared-secret-for-this-issuer-only\n")
    cfg = issuer_config(
        "https://hs.example.test",
        algorithms=("HS256",),
        hs256_secret=SecretRef("file", str(secret)),
    )
    auth = await started(identity_config(cfg))
    try:
        assert auth.ready()
        now = int(time.time())
        claims = {"iss": cfg.issuer, "aud": "urn:gatehouse:api", "sub": "job", "exp": now + 60}
        good = jwt.encode(claims, b"a-long-shared-secret-for-this-issuer-only", algorithm="HS256")
        identity = await auth.authenticate(bearer(good))
        assert identity is not None and identity.subject == "job"
        forged = jwt.encode(claims, b"some-other-secret-of-enough-length!!", algorithm="HS256")
        with pytest.raises(AuthenticationError):
            await auth.authenticate(bearer(forged))
        rsa_token = jwt.encode(claims, private_key(rsa_jwk("x")), algorithm="RS256")
        with pytest.raises(AuthenticationError):
            await auth.authenticate(bearer(rsa_token))
    finally:
        await auth.close()
