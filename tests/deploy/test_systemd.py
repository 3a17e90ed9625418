"""deploy/systemd/gatehouse.service: sandboxed, drains before SIGKILL, verified by systemd.

``systemd-analyze verify`` needs the ExecStart program to exist, so the unit
is verified with the image path /opt/gatehouse/bin/gatehouse pointed at this
checkout's installed ``gatehouse``; everything else is verified as written.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.cli.common import EXIT_CONFIG
from tests.deploy.manifests import DEPLOY

UNIT = DEPLOY / "systemd" / "gatehouse.service"
DEFAULT_DRAIN_SECONDS = 30.0  # shutdown.drain_timeout when unset (proxy/config/load.py)

Directives = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Directives:
    """Sections → key → every value in order (systemd keys may repeat)."""
    sections: Directives = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        m = re.fullmatch(r"\[(\w+)\]", line)
        if m:
            current = sections.setdefault(m.group(1), {})
            continue
        assert current is not None, f"directive outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"not a directive: {line}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+)(s|min)?", text)
    assert m, text
    return int(m.group(1)) * (60 if m.group(2) == "min" else 1)


def test_unit_declares_the_required_sandbox() -> None:
    service = parse_unit(UNIT.read_text())["Service"]

    def single(key: str) -> str:
        assert key in service, f"missing {key}="
        return service[key][-1]

    for key, value in {
        "DynamicUser": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "PrivateDevices": "yes",
        "RestrictNamespaces": "yes",
        "StateDirectory": "gatehouse",
        "LogsDirectory": "gatehouse",
        "ReadOnlyPaths": "/etc/gatehouse",
    }.items():
        assert single(key) == value, key
    assert set(single("RestrictAddressFamilies").split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert "@system-service" in service["SystemCallFilter"]
    assert any(v.startswith("~") and "@privileged" in v for v in service["SystemCallFilter"])


def test_unit_runs_checks_reloads_and_drains_like_the_cli_documents() -> None:
    service = parse_unit(UNIT.read_text())["Service"]
    start = service["ExecStart"][-1].split()
    assert start[0].endswith("/gatehouse") and start[1:3] == ["run", "--config"]
    assert service["ExecStartPre"][-1].split()[1:3] == ["check", "--config"]
    assert service["ExecStartPre"][-1].split()[3] == start[3], "checks the config it runs"
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert service["KillSignal"] == ["SIGTERM"]
    assert service["KillMode"] == ["mixed"], "the supervisor forwards SIGTERM to its workers"
    assert _seconds(service["TimeoutStopSec"][-1]) > DEFAULT_DRAIN_SECONDS
    # A refused configuration is not retried in a loop.
    assert service["RestartPreventExitStatus"] == [str(EXIT_CONFIG)]
    # Secret files reach the dynamic user only through systemd credentials.
    assert all(":/etc/gatehouse/secrets/" in v for v in service["LoadCredential"])


def _systemd_analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed: only the directive checks above ran")
    return exe


def _verifiable_copy(tmp_path: Path) -> Path:
    gatehouse = Path(sys.executable).parent / "gatehouse"
    assert gatehouse.exists(), "the project must be installed in the running venv"
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace("/opt/gatehouse/bin/gatehouse", str(gatehouse)))
    return copy


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    out = subprocess.run(
        [_systemd_analyze(), "verify", str(_verifiable_copy(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    # verify reports bad values and unknown keys as warnings with exit code 0.
    assert UNIT.name not in out.stdout + out.stderr, out.stdout + out.stderr


def test_systemd_analyze_verify_reports_a_bad_directive(tmp_path: Path) -> None:
    """The check above is able to fail."""
    copy = _verifiable_copy(tmp_path)
    copy.write_text(copy.read_text().replace("ProtectSystem=strict", "ProtectSystem=stricter"))
    out = subprocess.run(
        [_systemd_analyze(), "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    assert f"{UNIT.name}:" in out.stdout + out.stderr, "the warning names the unit file and line"


def test_systemd_rates_the_sandbox_exposure_ok(tmp_path: Path) -> None:
    exe = _systemd_analyze()
    unit = _verifiable_copy(tmp_path)
    out = subprocess.run(
        [exe, "security", "--offline=yes", "--threshold=20", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if "--offline" in out.stderr and "unrecognized" in out.stderr:
        pytest.skip("this systemd-analyze has no offline security assessment (systemd < 250)")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout + out.stderr)
    assert m and float(m.group(1)) <= 2.0, out.stdout[-500:]
