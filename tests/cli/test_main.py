"""The ``gatehouse`` command as operators and CI meet it: real processes, real files."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.cli.main import build_parser
from proxy.dev.certs import issue, make_ca
from tests.support.net import free_port
from tests.support.unprivileged import obey_file_modes

REPO = Path(__file__).resolve().parents[2]
ROUTES = (
    "routes:\n"
    "  - name: orders\n"
    "    path: /orders\n"
    "    backend: up\n"
    "    allow: [{name: eng, groups: [eng]}]\n"
)


def gatehouse(
    *args: str, env: dict[str, str] | None = None, obey_modes: bool = False, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "GATEHOUSE_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**base, **(env or {})},
        preexec_fn=obey_file_modes if obey_modes else None,
    )


def write_config(tmp_path: Path, text: str, routes: str = ROUTES) -> Path:
    (tmp_path / "policies").mkdir(exist_ok=True)
    (tmp_path / "policies" / "routes.yaml").write_text(routes)
    path = tmp_path / "gatehouse.yaml"
    path.write_text(text)
    return path


def plain_config(tmp_path: Path, port: int | None = None, admin: int | None = None) -> Path:
    return write_config(
        tmp_path,
        f"listen: {{address: 127.0.0.1:{port or free_port()}}}\n"
        f"admin: {{address: 127.0.0.1:{admin or free_port()}}}\n"
        f"audit: {{output: {tmp_path / 'audit.jsonl'}}}\n"
        "backends:\n  up: {urls: [http://127.0.0.1:1]}\n",
    )


# -- check: one pass, warnings, JSON, offline ------------------------------------
def test_check_reports_configuration_and_policy_problems_in_one_pass(tmp_path: Path) -> None:
    """An undefined backend in a policy no longer hides behind the config's own problems."""
    path = write_config(
        tmp_path,
        "listen: {address: nowhere}\nbackends:\n  up: {urls: [http://127.0.0.1:1]}\n",
        routes=ROUTES.replace("backend: up", "backend: missing"),
    )
    result = gatehouse("check", "--config", str(path))
    assert result.returncode == 2
    policy = tmp_path / "policies" / "routes.yaml"
    lines = result.stderr.splitlines()
    assert any(line.startswith(f"{path}:1: config.listen.address") for line in lines), lines
    assert any(line.startswith(f"{policy}:4:") and "missing" in line for line in lines), lines
    assert lines[-1] == "2 problem(s); configuration refused"


def test_check_prints_policy_warnings_as_policy_check_does(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        "backends:\n  up: {urls: [http://127.0.0.1:1]}\n",
        routes=ROUTES.replace(
            "{name: eng, groups: [eng]}", "{name: everyone, public: true}"
        ).replace("/orders", "/"),
    )
    result = gatehouse("check", "--config", str(path))
    assert result.returncode == 0, result.stderr
    policy = tmp_path / "policies" / "routes.yaml"
    assert f"{policy}:5: warning: rule 'everyone' admits everyone" in result.stdout
    twin = gatehouse("policy", "check", "--config", str(path))
    assert twin.stdout.splitlines()[0] == result.stdout.splitlines()[0]


def test_check_json_reports_problems_and_summary_as_data(tmp_path: Path) -> None:
    path = plain_config(tmp_path)
    ok = gatehouse("check", "--config", str(path), "--json")
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)
    assert report["ok"] is True and report["problems"] == []
    assert report["backends"] == ["up"] and report["routes"] == 1
    assert len(report["policy_version"]) == 12

    path.write_text(path.read_text() + "colour: blue\n")
    refused = gatehouse("check", "--config", str(path), "--json")
    assert refused.returncode == 2
    report = json.loads(refused.stdout)
    assert report["ok"] is False
    [problem] = report["problems"]
    assert problem["file"] == str(path) and problem["line"] == 6
    assert problem["message"].startswith("config: unknown key 'colour'")


@pytest.mark.parametrize("shape", ["gateway", "sidecar"])
def test_check_offline_passes_the_shipped_kubernetes_configs(shape: str) -> None:
    """CI can check deploy/kubernetes without the Secrets that exist only in the pod."""
    config = REPO / "deploy" / "kubernetes" / shape / "config" / "gatehouse.yaml"
    offline = gatehouse("check", "--offline", "--config", str(config), "--json")
    assert offline.returncode == 0, offline.stdout
    assert json.loads(offline.stdout)["offline"] is True
    online = gatehouse("check", "--config", str(config))
    assert online.returncode == 2, "without --offline the pod's secret files are required"
    assert "file not found: /run/secrets/" in online.stderr


def test_check_offline_still_reports_everything_else(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        "listen:\n  tls: {cert_file: /run/secrets/tls.crt, key_file: /run/secrets/tls.key}\n"
        "  max_headers: many\n"
        "backends:\n  up: {urls: [http://127.0.0.1:1]}\n",
    )
    result = gatehouse("check", "--offline", "--config", str(path))
    assert result.returncode == 2
    assert "tls.crt" not in result.stderr
    assert f"{path}:3: config.listen.max_headers: expected an integer" in result.stderr


# -- start-up failures: key: message, exit 2, never a traceback ------------------
@pytest.fixture
def mismatched_tls(tmp_path: Path) -> tuple[Path, Path]:
    ca = make_ca(tmp_path / "pki")
    one = issue(ca, tmp_path / "pki", "one", common_name="localhost", dns=("localhost",))
    two = issue(ca, tmp_path / "pki", "two", common_name="localhost", dns=("localhost",))
    return one.cert_file, two.key_file


def test_a_tls_key_that_does_not_match_its_certificate_is_refused_by_check_and_run(
    tmp_path: Path, mismatched_tls: tuple[Path, Path]
) -> None:
    cert, key = mismatched_tls
    path = write_config(
        tmp_path,
        f"listen:\n  address: 127.0.0.1:{free_port()}\n"
        f"  tls:\n    cert_file: {cert}\n    key_file: {key}\n"  # key_file: line 5
        "backends:\n  up: {urls: [http://127.0.0.1:1]}\n",
    )
    expected = f"{path}:5: config.listen.tls.key_file: does not match the certificate in cert_file"
    for command in ("check", "run"):
        result = gatehouse(command, "--config", str(path))
        assert result.returncode == 2, (command, result.stderr)
        assert expected in result.stderr.splitlines(), (command, result.stderr)
        assert "Traceback" not in result.stderr


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_port_in_use_is_a_clean_start_up_error(
    tmp_path: Path, taken_port: int, workers: str
) -> None:
    listen = plain_config(tmp_path, port=taken_port)
    result = gatehouse("run", "--config", str(listen), "--workers", workers)
    assert result.returncode == 2
    assert result.stderr == (
        f"listen.address: cannot listen on 127.0.0.1:{taken_port}: Address already in use\n"
    )

    admin = plain_config(tmp_path, admin=taken_port)
    result = gatehouse("run", "--config", str(admin), "--workers", workers)
    assert result.returncode == 2
    assert result.stderr.endswith(
        f"admin.address: cannot listen on 127.0.0.1:{taken_port}: Address already in use\n"
    ), result.stderr
    assert "Traceback" not in result.stderr


def test_an_unreadable_tls_key_is_a_clean_start_up_error(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "pki")
    server = issue(ca, tmp_path / "pki", "server", common_name="localhost", dns=("localhost",))
    server.key_file.chmod(0)
    path = write_config(
        tmp_path,
        f"listen:\n  address: 127.0.0.1:{free_port()}\n"
        f"  tls:\n    cert_file: {server.cert_file}\n    key_file: {server.key_file}\n"
        "backends:\n  up: {urls: [http://127.0.0.1:1]}\n",
    )
    result = gatehouse("run", "--config", str(path), obey_modes=True)
    assert result.returncode == 2
    assert (
        f"{path}:5: config.listen.tls.key_file: cannot read {server.key_file}: Permission denied"
        in result.stderr
    ), result.stderr
    assert "Traceback" not in result.stderr


def test_an_unwritable_audit_file_is_refused_before_start_up(tmp_path: Path) -> None:
    path = plain_config(tmp_path)
    audit = tmp_path / "audit.jsonl"
    audit.touch(mode=0o400)
    result = gatehouse("run", "--config", str(path), obey_modes=True)
    assert result.returncode == 2
    assert f"{path}:3: audit.output: is not writable by this user" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


# -- the command line itself -------------------------------------------------------
def _parsers(
    parser: argparse.ArgumentParser, name: str = "gatehouse"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def test_every_option_of_every_command_has_help() -> None:
    missing = [
        f"{name} {action.option_strings or action.dest}"
        for name, parser in _parsers(build_parser())
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction | argparse._SubParsersAction)
        and not action.help
    ]
    assert missing == []


def test_version_prints_gatehouse_python_and_library_versions() -> None:
    result = gatehouse("version")
    assert result.returncode == 0
    lines = dict(line.split(None, 1) for line in result.stdout.splitlines())
    assert lines["gatehouse"] == "0.1.0"
    assert lines["python"].startswith(f"{sys.version_info.major}.{sys.version_info.minor}.")
    for library in ("aiohttp", "pyjwt", "cryptography", "azure-identity", "opentelemetry-sdk"):
        assert lines[library][0].isdigit(), (library, lines[library])
    as_json = json.loads(gatehouse("version", "--json").stdout)
    assert as_json["aiohttp"] == lines["aiohttp"]


@pytest.mark.parametrize(
    ("blocked", "command", "extra"),
    [
        ("redis", ["state", "check"], "redis"),
        ("fastapi", ["demo", "--port", "1"], "demo"),
    ],
)
def test_a_command_whose_optional_package_is_missing_says_which_extra_to_install(
    tmp_path: Path, blocked: str, command: list[str], extra: str
) -> None:
    config = tmp_path / "gatehouse.yaml"
    config.write_text(
        "state: {redis_url: redis://127.0.0.1:1/0, encryption_key: env:KEY}\n"
        f"policies: {{dir: {tmp_path}}}\nbackends: {{}}\n"
    )
    args = [*command, "--config", str(config)] if command[0] == "state" else command
    # The package is made unimportable for this process only, as if it were not installed.
    script = (
        f"import sys; sys.modules[{blocked!r}] = None\n"
        "from proxy.cli.main import main\n"
        f"sys.exit(main({args!r}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "KEY": "a" * 44},
    )
    assert result.returncode == 2, result.stderr
    assert f"pip install 'gatehouse[{extra}]'" in result.stderr
    assert "Traceback" not in result.stderr
