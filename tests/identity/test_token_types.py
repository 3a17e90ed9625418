"""Explicit typing through a real gatehouse (RFC 8725 §3.11, RFC 9068): tokens signed
by the real provider's key with another ``typ`` are 401 ``invalid_token``, an
issuer can require ``at+jwt``, and encrypted (five-part) tokens are refused
without being sent anywhere."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from tests.conftest import GatehouseFactory
from tests.identity.introspection_server import introspection_server
from tests.identity.proxy_env import call, introspecting_issuer, sign_raw, started
from tests.identity.test_jwt_verify import ACCEPTED_TYPES, REFUSED_TYPES
from tests.peers.oidc_provider import RESOURCE, OidcProvider, private_key


def _token(provider: OidcProvider, typ: object) -> str:
    now = int(time.time())
    header: dict[str, Any] = {"alg": "RS256", "kid": "rsa-1"}
    if typ is not None:
        header["typ"] = typ
    payload = {"iss": provider.issuer, "aud": RESOURCE, "sub": "alice", "exp": now + 300}
    return sign_raw(header, payload, private_key(provider.keys[0]))


async def test_only_access_token_types_pass_by_default(
    gatehouse: GatehouseFactory, upstream_url: str, provider: OidcProvider
) -> None:
    gh = await started(
        gatehouse, upstream_url, issuers=[{"issuer": provider.issuer, "audiences": [RESOURCE]}]
    )
    for typ in ACCEPTED_TYPES:
        reply = await call(gh, token=_token(provider, typ))
        assert (reply.status, reply.subject) == (200, "alice"), typ
    for refused in REFUSED_TYPES:
        reply = await call(gh, token=_token(provider, refused))
        assert (reply.status, reply.error) == (401, "invalid_token"), refused
    # The provider's own access tokens carry at+jwt (RFC 9068) and pass.
    real = await asyncio.to_thread(provider.client_credentials_token)
    assert (await call(gh, token=real)).status == 200


async def test_an_issuer_configured_for_at_jwt_refuses_untyped_and_plain_jwt(
    gatehouse: GatehouseFactory, upstream_url: str, provider: OidcProvider
) -> None:
    gh = await started(
        gatehouse,
        upstream_url,
        issuers=[{"issuer": provider.issuer, "audiences": [RESOURCE], "token_types": ["at+jwt"]}],
    )
    for typ in ("at+jwt", "application/at+jwt", "AT+JWT"):
        assert (await call(gh, token=_token(provider, typ))).status == 200, typ
    for other in (None, "JWT", "logout+jwt"):
        reply = await call(gh, token=_token(provider, other))
        assert (reply.status, reply.error) == (401, "invalid_token"), other


async def test_encrypted_tokens_are_401_and_never_introspected(
    gatehouse: GatehouseFactory, upstream_url: str, tmp_path: Path
) -> None:
    jwe_shaped = [
        "eyJhbGciOiJSU0EtT0FFUCIsImVuYyI6IkEyNTZHQ00ifQ.ek.iv.ct.tag",
        "eyJhbGciOiJkaXIiLCJlbmMiOiJBMTI4R0NNIn0..iv.ct.tag",  # direct: empty key part
        "a.b.c.d.e",
    ]
    async with introspection_server() as server:
        gh = await started(
            gatehouse, upstream_url, issuers=[introspecting_issuer(server, tmp_path)]
        )
        for token in jwe_shaped:
            reply = await call(gh, token=token)
            assert (reply.status, reply.error) == (401, "invalid_token"), token
        assert server.calls == []
        assert (await call(gh, token="an-opaque-token")).error == "invalid_token"
        assert server.tokens == ["an-opaque-token"]  # opaque tokens still go there
