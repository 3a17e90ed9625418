"""Google ID tokens from a GCE metadata server and a key file's token_uri, checked by a
Cloud Function run with the real functions-framework."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from proxy.credentials.broker import CredentialBroker
from proxy.errors import UpstreamCredentialsUnavailable
from tests.credentials.conftest import (
    EXAMPLES,
    make_broker,
    parse_backends,
    refused_once_oversized,
    route,
    run_function,
)
from tests.peers.cloud.google import GOOGLE_ISSUER, METADATA_SA, GooglePeer
from tests.peers.cloud.server import PeerServer

AUDIENCE = "https://europe-west1-test-project.cloudfunctions.net/hello"
SA = "invoker@test-project.iam.gserviceaccount.com"


@pytest.fixture
async def google() -> AsyncIterator[GooglePeer]:
    peer = await GooglePeer().start()
    yield peer
    await peer.stop()


@pytest.fixture
def function(google: GooglePeer) -> Iterator[str]:
    env = {"FUNCTION_AUDIENCE": AUDIENCE, "GOOGLE_JWKS_URL": google.jwks_url}
    with run_function(EXAMPLES / "cloud_function" / "main.py", "hello", env) as url:
        yield url


def _call(url: str, headers: dict[str, str]) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


async def call(url: str, headers: dict[str, str]) -> tuple[int, bytes]:
    # Off the loop: the function fetches its JWKS from the peer this loop serves.
    return await asyncio.to_thread(_call, url, headers)


async def _broker(tmp_path: Path, options: str) -> CredentialBroker:
    specs, _ = parse_backends(
        tmp_path,
        f"backends:\n  fn:\n    credentials:\n      type: gcp\n      audience: {AUDIENCE}\n"
        + options,
    )
    return await make_broker(specs)


async def test_metadata_server_id_token_is_accepted_by_the_cloud_function(
    google: GooglePeer, function: str, tmp_path: Path
) -> None:
    broker = await _broker(tmp_path, f"      metadata_host: {google.host}\n")
    try:
        headers = dict(await broker.headers("fn", route("fn"), None))
        await broker.headers("fn", route("fn"), None)
    finally:
        await broker.close()
    assert google.calls["metadata_identity"] == 1
    token = headers["Authorization"].removeprefix("Bearer ")
    assert google.issuer.verify(token, AUDIENCE)["email"] == METADATA_SA
    status, body = await call(function, headers)
    assert status == 200, body
    assert METADATA_SA.encode() in body
    assert (await call(function, {}))[0] == 401
    wrong_aud = google.issuer.mint({"aud": "https://other.run.app", "email": METADATA_SA})
    assert (await call(function, {"Authorization": f"Bearer {wrong_aud}"}))[0] == 401


async def test_gce_metadata_host_from_the_environment_is_honoured(
    google: GooglePeer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GCE_METADATA_HOST", google.host)
    broker = await _broker(tmp_path, "")
    try:
        assert await broker.headers("fn", route("fn"), None)
    finally:
        await broker.close()
    assert google.calls["metadata_identity"] == 1


async def test_a_reply_without_metadata_flavor_is_not_trusted(tmp_path: Path) -> None:
    # A plain web server that answers any path with a JWT-looking body but no flavor header.
    server = PeerServer()
    token = GooglePeer().issuer.mint({"aud": AUDIENCE})

    async def anything(request: web.Request) -> web.Response:
        return web.Response(text=token)

    server.app.router.add_get("/{tail:.*}", anything)
    await server.start()
    broker = await _broker(tmp_path, f"      metadata_host: {server.host}\n")
    try:
        with pytest.raises(UpstreamCredentialsUnavailable) as err:
            await broker.headers("fn", route("fn"), None)
    finally:
        await broker.close()
        await server.stop()
    assert "Metadata-Flavor" in err.value.detail


async def test_key_file_token_uri_flow_is_accepted_by_the_cloud_function(
    google: GooglePeer, function: str, tmp_path: Path
) -> None:
    key_file = google.service_account_key_file(tmp_path, SA)
    broker = await _broker(tmp_path, f"      service_account_key_file: {key_file}\n")
    try:
        headers = dict(await broker.headers("fn", route("fn"), None))
    finally:
        await broker.close()
    assert google.calls["token_uri"] == 1
    claims = google.issuer.verify(headers["Authorization"].removeprefix("Bearer "), AUDIENCE)
    assert claims["iss"] == GOOGLE_ISSUER
    assert claims["email"] == SA
    status, body = await call(function, headers)
    assert status == 200, body
    assert SA.encode() in body


async def test_callers_authorization_passes_through_and_ours_goes_in_serverless_header(
    google: GooglePeer, function: str, tmp_path: Path
) -> None:
    broker = await _broker(tmp_path, f"      metadata_host: {google.host}\n")
    try:
        passthrough = route("fn", pass_authorization=True)
        headers = dict(await broker.headers("fn", passthrough, None))
    finally:
        await broker.close()
    assert set(headers) == {"X-Serverless-Authorization"}
    # Cloud Run checks X-Serverless-Authorization first; the caller's own token rides along.
    headers["Authorization"] = "Bearer caller-opaque-token"
    status, body = await call(function, headers)
    assert status == 200, body


@pytest.mark.parametrize("source", ["metadata", "key_file"])
async def test_impersonation_mints_an_id_token_for_the_target_account(
    google: GooglePeer, function: str, tmp_path: Path, source: str
) -> None:
    target = "fn-invoker@test-project.iam.gserviceaccount.com"
    if source == "metadata":
        options = f"      metadata_host: {google.host}\n"
        google.token_creators[target] = {METADATA_SA}
    else:
        key_file = google.service_account_key_file(tmp_path, SA)
        options = f"      service_account_key_file: {key_file}\n"
        google.token_creators[target] = {SA}
    options += f"      impersonate_service_account: {target}\n      iam_endpoint: {google.url}\n"
    broker = await _broker(tmp_path, options)
    try:
        headers = dict(await broker.headers("fn", route("fn"), None))
        google.token_creators[target] = set()  # permission withdrawn
        broker.invalidate("fn", None)
        with pytest.raises(UpstreamCredentialsUnavailable) as err:
            await broker.headers("fn", route("fn"), None)
    finally:
        await broker.close()
    assert "403" in err.value.detail
    claims = google.issuer.verify(headers["Authorization"].removeprefix("Bearer "), AUDIENCE)
    assert claims["email"] == target
    status, body = await call(function, headers)
    assert status == 200, body
    assert target.encode() in body


async def test_a_metadata_answer_over_1_mib_fails_the_fetch(
    google: GooglePeer, tmp_path: Path
) -> None:
    broker = await _broker(tmp_path, f"      metadata_host: {google.host}\n")
    detail = await refused_once_oversized(broker, google, "fn")
    assert "metadata server: response too large" in detail


async def test_an_iam_answer_over_1_mib_fails_the_impersonation(
    google: GooglePeer, tmp_path: Path
) -> None:
    target = "fn-invoker@test-project.iam.gserviceaccount.com"
    google.token_creators[target] = {SA}
    key_file = google.service_account_key_file(tmp_path, SA)
    broker = await _broker(
        tmp_path,
        f"      service_account_key_file: {key_file}\n"
        f"      impersonate_service_account: {target}\n      iam_endpoint: {google.url}\n",
    )
    detail = await refused_once_oversized(broker, google, "fn")
    assert "IAM credentials API: response too large" in detail
