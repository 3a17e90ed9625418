"""The dev IdP: loopback only, and its tokens verify through the real Authenticator."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from proxy.dev.idp import DEFAULT_AUDIENCE, start_dev_idp
from proxy.errors import AuthenticationError
from proxy.identity.authenticate import Authenticator
from proxy.identity.config import IdentityConfig, IssuerConfig
from tests.identity.conftest import bearer

REPO = Path(__file__).resolve().parents[2]


def dev_token(key_file: Path, issuer: str, *extra: str) -> str:
    cmd = [sys.executable, "-m", "proxy", "dev-token", "--sub", "alice", "--groups", "eng"]
    cmd += ["--key-file", str(key_file), "--issuer", issuer, *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=True, timeout=60)
    return out.stdout.strip()


async def test_dev_token_is_accepted_and_tampering_is_not(tmp_path: Path) -> None:
    key_file = tmp_path / "dev.pem"
    issuer, runner = await start_dev_idp("127.0.0.1", 0, key_file)
    auth = Authenticator(
        IdentityConfig(issuers=(IssuerConfig(issuer=issuer, audiences=(DEFAULT_AUDIENCE,)),))
    )
    try:
        await auth.start()
        assert auth.ready()
        token = dev_token(key_file, issuer, "--ttl", "10m")
        identity = await auth.authenticate(bearer(token))
        assert identity is not None
        assert identity.subject == "alice" and identity.groups == frozenset({"eng"})
        head, body, sig = token.split(".")
        flipped = sig[:-2] + ("AA" if not sig.endswith("AA") else "BB")
        with pytest.raises(AuthenticationError):
            await auth.authenticate(bearer(f"{head}.{body}.{flipped}"))
    finally:
        await auth.close()
        await runner.cleanup()


async def test_dev_idp_token_endpoint_issues_verifiable_tokens(tmp_path: Path) -> None:
    issuer, runner = await start_dev_idp("127.0.0.1", 0, tmp_path / "dev.pem")
    auth = Authenticator(
        IdentityConfig(issuers=(IssuerConfig(issuer=issuer, audiences=(DEFAULT_AUDIENCE,)),))
    )
    try:
        await auth.start()
        async with aiohttp.ClientSession() as http:
            form = {"grant_type": "client_credentials", "client_id": "svc-ci", "groups": "a,b"}
            async with http.post(f"{issuer}/token", data=form) as response:
                assert response.status == 200
                token = (await response.json())["access_token"]
            async with http.post(f"{issuer}/token", data={"grant_type": "password"}) as response:
                assert response.status == 400
        identity = await auth.authenticate(bearer(token))
        assert identity is not None
        assert identity.subject == "svc-ci" and identity.groups == frozenset({"a", "b"})
    finally:
        await auth.close()
        await runner.cleanup()


async def test_dev_idp_refuses_non_loopback_addresses(tmp_path: Path) -> None:
    for host in ("0.0.0.0", "::", "192.0.2.1", "example.com"):
        with pytest.raises(ValueError, match="loopback"):
            await start_dev_idp(host, 0, tmp_path / "dev.pem")
    cmd = [sys.executable, "-m", "proxy", "dev-idp", "--host", "0.0.0.0", "--port", "0"]
    cmd += ["--key-file", str(tmp_path / "dev.pem")]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 2
    assert "loopback" in result.stderr


def test_dev_key_file_is_private(tmp_path: Path) -> None:
    key_file = tmp_path / "dev.pem"
    dev_token(key_file, "http://127.0.0.1:9000")
    assert key_file.stat().st_mode & 0o077 == 0
