"""The broker: combined providers per backend, lifecycle and readiness."""

from __future__ import annotations

from pathlib import Path

import jwt
import pytest

from proxy.credentials.broker import CredentialBroker
from proxy.credentials.config import AssertionSpec
from proxy.credentials.signing import rotate_key_file
from proxy.errors import UpstreamCredentialsUnavailable
from tests.credentials.conftest import caller, parse_backends, route
from tests.peers.cloud.google import GooglePeer


async def test_gcp_and_assertion_combine_into_both_headers_in_one_call(tmp_path: Path) -> None:
    google = await GooglePeer().start()
    keys = tmp_path / "keys.json"
    rotate_key_file(keys)
    specs, signing = parse_backends(
        tmp_path,
        f"""
assertions: {{signing_keys_file: {keys}}}
backends:
  fn:
    credentials:
      - {{type: gcp, audience: "https://fn.test", metadata_host: "{google.host}"}}
      - {{type: assertion}}
""",
    )
    broker = CredentialBroker(specs, signing, "https://gatehouse.test")
    assert not broker.ready()
    await broker.start()
    try:
        assert broker.ready()
        headers = dict(await broker.headers("fn", route("fn"), caller("alice")))
    finally:
        await broker.close()
        await google.stop()
    assert set(headers) == {"Authorization", "X-Gatehouse-Assertion"}
    assert google.issuer.verify(headers["Authorization"].removeprefix("Bearer "), "https://fn.test")
    claims = jwt.decode(headers["X-Gatehouse-Assertion"], options={"verify_signature": False})
    assert (claims["sub"], claims["aud"], claims["iss"]) == (
        "alice",
        "fn",
        "https://gatehouse.test",
    )
    assert not broker.ready()


async def test_start_refuses_an_assertion_backend_without_signing_keys() -> None:
    spec = AssertionSpec(backend="app", source="gatehouse.yaml:3", audience="app")
    broker = CredentialBroker({"app": (spec,)}, None, "https://gatehouse.test")
    with pytest.raises(UpstreamCredentialsUnavailable):
        await broker.start()
    await broker.close()
    assert broker.jwks_document() == b'{"keys":[]}'
