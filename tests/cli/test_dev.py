"""``gatehouse dev-idp`` tells how to mint tokens it accepts; ``dev-token`` says when
it had to create a key (a token no running dev IdP will accept)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import urllib.request
from pathlib import Path

import jwt

from tests.support.net import free_port

REPO = Path(__file__).resolve().parents[2]


def gatehouse_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "proxy", *args]


def test_dev_token_warns_when_it_creates_a_new_key(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.run(
        gatehouse_argv("dev-token", "--sub", "alice"),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert first.returncode == 0
    key = tmp_path / ".demo" / "dev-idp-key.pem"
    assert "created a new signing key" in first.stderr and str(key) in first.stderr
    second = subprocess.run(
        gatehouse_argv("dev-token", "--sub", "alice"),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 0 and second.stderr == ""
    assert jwt.get_unverified_header(second.stdout.strip())["alg"] == "ES256"


def test_dev_idp_prints_the_dev_token_command_that_it_accepts(tmp_path: Path) -> None:
    port = free_port()
    key_file = tmp_path / "idp key.pem"
    idp = subprocess.Popen(
        gatehouse_argv(
            "dev-idp", "--port", str(port), "--key-file", str(key_file), "--audience", "orders"
        ),
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert idp.stdout is not None
        lines = [idp.stdout.readline() for _ in range(3)]
        assert lines[0].startswith(
            f"dev IdP (development only) listening: issuer http://127.0.0.1:{port}"
        )
        command = shlex.split(lines[2].strip())
        assert command[:2] == ["gatehouse", "dev-token"]
        minted = subprocess.run(
            gatehouse_argv(*command[1:]),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert minted.stderr == "", "the key exists: no warning"
        token = minted.stdout.strip()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/jwks", timeout=10) as response:
            jwks = json.loads(response.read())
        key = jwt.PyJWK(jwks["keys"][0]).key
        claims = jwt.decode(
            token, key, algorithms=["ES256"], audience="orders", issuer=f"http://127.0.0.1:{port}"
        )
        assert claims["sub"] == "alice" and claims["groups"] == ["eng"]
    finally:
        idp.terminate()
        idp.wait(10)
