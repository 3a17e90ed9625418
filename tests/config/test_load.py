"""Configuration is validated completely: every problem, as file:line, exit code 2."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from proxy.config.load import load_config, parse_address
from proxy.config.reader import ConfigError
from tests.support.cli import gatehouse_command


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "policies").mkdir(exist_ok=True)
    path = tmp_path / "gatehouse.yaml"
    path.write_text(text)
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return [str(p) for p in info.value.problems]


def test_a_minimal_config_loads_with_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "backends:\n  up:\n    urls: [http://127.0.0.1:8000]\n")
    config = load_config(path)
    assert config.listen.address.port == 8443
    assert config.backends["up"].urls == ("http://127.0.0.1:8000",)
    assert config.backends["up"].timeouts.connect == 5.0
    assert config.policy_dir == tmp_path / "policies"
    assert config.audit.output == "stdout"


def test_every_problem_is_reported_with_its_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "listen:\n"
        "  address: nowhere\n"  # line 2
        "  colour: blue\n"  # line 3
        "  max_headers: lots\n"  # line 4
        "backends:\n"
        "  up:\n"
        "    urls: [ftp://x]\n"  # line 7
        "    timeouts: {connect: soon}\n"  # line 8
        "  Bad Name:\n"  # line 9
        "    urls: [http://a]\n"
        "  up:\n"  # line 11: duplicate
        "    urls: [http://b]\n"
        "admin:\n"
        "  address: 127.0.0.1:9901\n"
        "shutdown: {drain_timeout: -1s}\n",  # line 15
    )
    found = problems(path)
    f = str(path)
    assert f"{f}:2: config.listen.address: expected host:port, got 'nowhere'" in found
    assert any(p.startswith(f"{f}:3: config.listen: unknown key 'colour'") for p in found)
    assert f"{f}:4: config.listen.max_headers: expected an integer, got a string" in found
    assert f"{f}:7: backends.up.urls: expected an http(s) URL, got 'ftp://x'" in found
    assert any(
        p.startswith(f"{f}:8: backends.up.timeouts.connect: expected a duration") for p in found
    )
    assert any(p.startswith(f"{f}:9: backends: invalid backend name") for p in found)
    assert f"{f}:11: config.backends: duplicate key 'up'" in found
    assert any(p.startswith(f"{f}:15: config.shutdown.drain_timeout") for p in found)


def test_inline_secrets_are_refused_with_how_to_reference_them(tmp_path: Path) -> None:
    from proxy.config.reader import Mapping, Problems, load_document

    path = tmp_path / "s.yaml"
    path.write_text("client_secret: hunter2\nother: env:MY_SECRET\n")
    found = Problems()
    doc, node = load_document(path, found)
    m = Mapping.of(doc, node, "x")
    assert m is not None
    assert m.secret("client_secret") is None
    ref = m.secret("other")
    assert ref is not None and ref.kind == "env" and ref.name == "MY_SECRET"
    [problem] = found.items
    assert problem.line == 1
    assert "client_secret_file: /path/to/file" in problem.message
    assert "env:VARIABLE" in problem.message
    assert "hunter2" not in problem.message


def test_missing_files_are_reported(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "listen:\n  tls:\n    cert_file: missing.crt\n    key_file: missing.key\nbackends: {}\n",
    )
    found = problems(path)
    assert any(":3: config.listen.tls.cert_file: file not found" in p for p in found)
    assert any(":4: config.listen.tls.key_file: file not found" in p for p in found)
    assert problems(tmp_path / "absent.yaml") == [f"{tmp_path / 'absent.yaml'}:1: file not found"]


def test_invalid_yaml_is_reported_at_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "listen:\n  address: [\n")
    [problem] = problems(path)
    assert problem.startswith(f"{path}:3: invalid YAML")


def test_addresses_parse_ipv4_ipv6_and_reject_garbage() -> None:
    assert str(parse_address("127.0.0.1:80")) == "127.0.0.1:80"
    assert str(parse_address("[::1]:8443")) == "[::1]:8443"
    assert parse_address(":8080") is not None
    assert parse_address("host") is None
    assert parse_address("h:99999") is None


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return gatehouse_command(*args, env={**os.environ})


def test_check_command_lists_every_error_and_exits_2(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "listen: {address: bad, nope: 1}\nbackends:\n  up: {urls: [http://127.0.0.1:1]}\n",
    )
    (tmp_path / "policies" / "r.yaml").write_text(
        "routes:\n  - name: r\n    path: /\n    backend: missing\n    allow: [{name: a, public: true}]\n"
    )
    result = run_cli("check", "--config", str(path))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert any(line.startswith(f"{path}:1:") and "address" in line for line in lines)
    assert any(line.startswith(f"{path}:1:") and "unknown key 'nope'" in line for line in lines)
    assert "problem(s); configuration refused" in lines[-1]


def test_check_command_reports_policy_errors_with_their_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "backends:\n  up: {urls: [http://127.0.0.1:1]}\n")
    policy = tmp_path / "policies" / "r.yaml"
    policy.write_text(
        "routes:\n  - name: r\n    path: /\n    backend: missing\n    allow: [{name: a, public: true}]\n"
    )
    result = run_cli("check", "--config", str(path))
    assert result.returncode == 2
    assert any(line.startswith(f"{policy}:4:") for line in result.stderr.splitlines()), (
        result.stderr
    )


def test_check_command_accepts_a_valid_config(tmp_path: Path) -> None:
    path = write(tmp_path, "backends:\n  up: {urls: [http://127.0.0.1:1]}\n")
    (tmp_path / "policies" / "r.yaml").write_text(
        "routes:\n  - name: r\n    path: /\n    backend: up\n    allow: [{name: a, public: true}]\n"
    )
    result = run_cli("check", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_run_refuses_a_bad_config_before_serving(tmp_path: Path) -> None:
    path = write(tmp_path, "listen: {address: bad}\nbackends: {}\n")
    result = run_cli("run", "--config", str(path))
    assert result.returncode == 2
    assert f"{path}:1:" in result.stderr
