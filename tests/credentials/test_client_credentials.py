"""OAuth 2.0 client credentials: against the real oidc-provider and an RFC 7523 peer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from proxy.errors import UpstreamCredentialsUnavailable
from tests.credentials.conftest import make_broker, parse_backends, refused_once_oversized, route
from tests.peers.cloud.oauth import OAuthServer
from tests.peers.oidc_provider import CI_CLIENT, RESOURCE, OidcProvider, oidc_provider


@pytest.fixture(scope="module")
def idp() -> Iterator[OidcProvider]:
    with oidc_provider() as provider:
        yield provider


async def test_client_secret_basic_gets_a_jwt_from_oidc_provider_that_verifies(
    idp: OidcProvider, tmp_path: Path
) -> None:
    secret = tmp_path / "secret"
    secret.write_text(CI_CLIENT["client_secret"], encoding="utf-8")
    specs, _ = parse_backends(
        tmp_path,
        f"""
backends:
  api:
    credentials:
      type: client_credentials
      token_url: {idp.token_endpoint}
      client_id: {CI_CLIENT["client_id"]}
      client_secret_file: {secret}
      scope: api:read
      resource: {RESOURCE}
""",
    )
    broker = await make_broker(specs)
    try:
        ((name, value),) = await broker.headers("api", route("api"), None)
    finally:
        await broker.close()
    assert name == "Authorization"
    token = value.removeprefix("Bearer ")
    key = jwt.PyJWKClient(idp.jwks_uri).get_signing_key_from_jwt(token)
    claims = jwt.decode(token, key, algorithms=["RS256"], audience=RESOURCE, issuer=idp.issuer)
    assert claims["client_id"] == CI_CLIENT["client_id"]
    assert "api:read" in claims["scope"].split()


async def test_wrong_client_secret_fails_closed_with_the_idp_error_code(
    idp: OidcProvider, tmp_path: Path
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("not-the-secret", encoding="utf-8")
    specs, _ = parse_backends(
        tmp_path,
        f"""
backends:
  api:
    credentials:
      type: client_credentials
      token_url: {idp.token_endpoint}
      client_id: {CI_CLIENT["client_id"]}
      client_secret_file: {secret}
      resource: {RESOURCE}
""",
    )
    broker = await make_broker(specs)
    try:
        with pytest.raises(UpstreamCredentialsUnavailable) as err:
            await broker.headers("api", route("api"), None)
    finally:
        await broker.close()
    assert "invalid_client" in err.value.detail
    assert "not-the-secret" not in err.value.detail


async def test_client_secret_post_and_a_secret_from_the_environment(
    oauth: OAuthServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GH_CLIENT_SECRET", "s3cr3t:with%odd chars")
    specs, _ = parse_backends(
        tmp_path,
        f"""
backends:
  app:
    credentials:
      type: client_credentials
      token_url: {oauth.token_url}
      client_id: gh-client
      client_secret: env:GH_CLIENT_SECRET
      auth_method: client_secret_post
      resource: https://app.test
""",
    )
    broker = await make_broker(specs)
    try:
        ((_, value),) = await broker.headers("app", route(), None)
    finally:
        await broker.close()
    claims = oauth.issuer.verify(value.removeprefix("Bearer "), "https://app.test")
    assert claims["sub"] == "gh-client"
    assert oauth.requests[-1]["client_id"] == "gh-client"


async def test_private_key_jwt_authenticates_with_a_signed_client_assertion(
    oauth: OAuthServer, tmp_path: Path
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    key_file = tmp_path / "client.pem"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    oauth.add_client("jwt-client", public_key=key.public_key())
    specs, _ = parse_backends(
        tmp_path,
        f"""
backends:
  app:
    credentials:
      type: client_credentials
      token_url: {oauth.token_url}
      client_id: jwt-client
      auth_method: private_key_jwt
      private_key_file: {key_file}
      key_id: k1
      audience: https://app.test
""",
    )
    broker = await make_broker(specs)
    try:
        ((_, value),) = await broker.headers("app", route(), None)
    finally:
        await broker.close()
    assert oauth.issuer.verify(value.removeprefix("Bearer "), "https://app.test")["sub"] == (
        "jwt-client"
    )
    sent = oauth.requests[-1]
    assert jwt.get_unverified_header(sent["client_assertion"])["kid"] == "k1"
    # A key the server does not know for this client is refused.
    oauth.add_client("jwt-client", public_key=ec.generate_private_key(ec.SECP256R1()).public_key())
    broker = await make_broker(specs)
    try:
        with pytest.raises(UpstreamCredentialsUnavailable):
            await broker.headers("app", route(), None)
    finally:
        await broker.close()


async def test_a_token_response_over_1_mib_fails_the_fetch_without_being_read_whole(
    oauth: OAuthServer, secret_file: Path, tmp_path: Path
) -> None:
    specs, _ = parse_backends(
        tmp_path,
        f"backends:\n  app:\n    credentials: {{type: client_credentials, "
        f"token_url: '{oauth.token_url}', client_id: gh-client, "
        f"client_secret_file: '{secret_file}'}}\n",
    )
    detail = await refused_once_oversized(await make_broker(specs), oauth, "app")
    assert "token endpoint: response too large" in detail
