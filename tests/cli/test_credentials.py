"""``gatehouse credentials rotate-key`` and ``check``: useful output, never a token."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest

from proxy.cli.credentials import _check, add_commands
from proxy.config.load import load_config
from tests.peers.cloud.oauth import OAuthServer


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_commands(p.add_subparsers(dest="command"))
    return p


def test_rotate_key_puts_a_new_key_first_and_keeps_the_previous_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "keys.json"
    kids = []
    for _ in range(4):
        args = parser().parse_args(["credentials", "rotate-key", "--keys-file", str(keys)])
        assert args.func(args) == 0
        kids.append(capsys.readouterr().out.strip())
    doc = json.loads(keys.read_text(encoding="utf-8"))
    assert [k["kid"] for k in doc["keys"]] == [kids[3], kids[2], kids[1]]
    assert keys.stat().st_mode & 0o077 == 0  # private keys: owner only


def rotate(keys: Path) -> int:
    args = parser().parse_args(["credentials", "rotate-key", "--keys-file", str(keys)])
    return int(args.func(args))


def test_rotate_key_writes_the_keys_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    old = os.umask(0)
    try:
        assert rotate(keys) == 0
        assert rotate(keys) == 0
    finally:
        os.umask(old)
    assert keys.stat().st_mode & 0o777 == 0o600
    assert not (tmp_path / "keys.json.tmp").exists()


def test_rotate_key_never_writes_through_a_planted_tmp_symlink(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "keys.json"
    assert rotate(keys) == 0
    before = keys.read_bytes()
    victim = tmp_path / "readable-by-all"
    victim.write_text("x")
    (tmp_path / "keys.json.tmp").symlink_to(victim)
    capsys.readouterr()
    assert rotate(keys) == 2
    assert "keys.json.tmp exists: another rotation is running" in capsys.readouterr().err
    assert victim.read_text() == "x"  # no private key written through the link
    assert keys.read_bytes() == before


def test_rotate_key_refuses_to_reuse_a_leftover_tmp_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "keys.json"
    leftover = tmp_path / "keys.json.tmp"
    leftover.write_text("half a rotation")
    leftover.chmod(0o644)
    assert rotate(keys) == 2
    assert "interrupted" in capsys.readouterr().err
    assert leftover.read_text() == "half a rotation"
    assert not keys.exists()


def _config(tmp_path: Path, oauth: OAuthServer, secret: Path) -> Path:
    (tmp_path / "policies").mkdir()
    path = tmp_path / "gatehouse.yaml"
    path.write_text(
        f"""
backends:
  app:
    urls: [http://127.0.0.1:1]
    credentials:
      type: client_credentials
      token_url: {oauth.token_url}
      client_id: gh-client
      client_secret_file: {secret}
  jobs:
    urls: [http://127.0.0.1:1]
    credentials:
      type: token_exchange
      token_url: {oauth.token_url}
      client_id: gh-client
      client_secret_file: {secret}
""",
        encoding="utf-8",
    )
    return path


async def test_check_reports_each_backend_with_expiry_and_no_token(
    tmp_path: Path, oauth: OAuthServer, secret_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = load_config(_config(tmp_path, oauth, secret_file))
    assert await _check(config, None) == 0
    out = capsys.readouterr().out
    assert "app: client_credentials: OK (Authorization), expires in 3" in out
    assert "jobs: token_exchange: skipped" in out
    assert oauth.issuer.issued
    assert oauth.issuer.issued[0] not in out


async def test_check_fails_with_the_reason_when_the_endpoint_refuses(
    tmp_path: Path, oauth: OAuthServer, secret_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = load_config(_config(tmp_path, oauth, secret_file))
    oauth.clients["gh-client"].secret = "rotated"
    assert await _check(config, "app") == 1
    out = capsys.readouterr().out
    assert "app: client_credentials: FAILED upstream_credentials_unavailable" in out
    assert "invalid_client" in out
    assert "s3cr3t" not in out
