"""``gatehouse state new-key`` and ``gatehouse state check`` against a real Redis."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml

from proxy.cli.state import add_commands
from proxy.identity.session import parse_cookie_keys
from tests.state.redis_server import RedisServer


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="gatehouse")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    code: int = args.func(args)
    return code


def write_config(tmp_path: Path, state: dict[str, object] | None) -> Path:
    path = tmp_path / "gatehouse.yaml"
    body: dict[str, object] = {"listen": {"address": "127.0.0.1:0"}}
    if state is not None:
        body["state"] = state
    path.write_text(yaml.safe_dump(body))
    return path


def test_new_key_prints_a_usable_encryption_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("state", "new-key") == 0
    (key,) = parse_cookie_keys(capsys.readouterr().out)
    assert len(key) == 32


def test_check_writes_reads_and_deletes_a_sealed_value(
    redis_server: RedisServer,
    state_key: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = write_config(
        tmp_path, {"redis_url": redis_server.url, "encryption_key_file": str(state_key)}
    )
    assert run("state", "check", "--config", str(config)) == 0
    out = capsys.readouterr().out
    assert out.startswith("state: OK (write, read, delete under 'gatehouse:'")
    assert str(redis_server.port) not in out
    with redis_server.inspect() as plain:
        assert plain.keys("*") == []


def test_check_fails_when_redis_is_unreachable(
    redis_server: RedisServer,
    state_key: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = write_config(
        tmp_path, {"redis_url": redis_server.url, "encryption_key_file": str(state_key)}
    )
    redis_server.stop()
    assert run("state", "check", "--config", str(config)) == 1
    assert "state: FAILED Redis unreachable" in capsys.readouterr().out


def test_check_reports_config_problems_and_a_missing_section(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, {"redis_url": "redis://u:pw-in-url@h:6379"})
    assert run("state", "check", "--config", str(config)) == 2
    err = capsys.readouterr().err
    assert "passwords are refused" in err and "encryption_key" in err
    assert "pw-in-url" not in err
    assert run("state", "check", "--config", str(write_config(tmp_path, None))) == 2
    assert "no state: section" in capsys.readouterr().err
