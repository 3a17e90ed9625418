"""Run ``gatehouse`` as a real process with a generated config, for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support.net import free_port, listeners

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Gatehouse:
    """A running ``gatehouse run`` process and where to find its outputs."""

    workdir: Path
    port: int
    admin_port: int
    process: subprocess.Popen[bytes]
    audit_path: Path
    scheme: str = "http"
    stderr_path: Path = field(default_factory=Path)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def audit_records(self) -> list[dict[str, Any]]:
        if not self.audit_path.exists():
            return []
        return [json.loads(line) for line in self.audit_path.read_text().splitlines() if line]

    def wait_audit(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            records = self.audit_records()
            if len(records) >= count or time.monotonic() > deadline:
                return records
            time.sleep(0.02)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def stop(self, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return int(self.process.returncode)


def write_config(
    workdir: Path,
    *,
    backends: dict[str, Any],
    routes: list[dict[str, Any]],
    listen: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    port: int | None = None,
    rules: dict[str, Any] | None = None,
) -> tuple[Path, int, int, Path]:
    port, admin_port = port or free_port(), free_port()
    policy_dir = workdir / "policies"
    policy_dir.mkdir(parents=True, exist_ok=True)
    policy = {"rules": rules, "routes": routes} if rules else {"routes": routes}
    (policy_dir / "routes.yaml").write_text(yaml.safe_dump(policy, sort_keys=False))
    audit_path = workdir / "audit.jsonl"
    config: dict[str, Any] = {
        "listen": {"address": f"127.0.0.1:{port}", **(listen or {})},
        "admin": {"address": f"127.0.0.1:{admin_port}"},
        "audit": {"output": str(audit_path)},
        "policies": {"dir": str(policy_dir)},
        "backends": backends,
        **(extra or {}),
    }
    path = workdir / "gatehouse.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path, port, admin_port, audit_path


class PortTaken(RuntimeError):
    """Another process took a port gatehouse needed, and the caller fixed that port."""


def start_gatehouse(
    workdir: Path,
    *,
    backends: dict[str, Any],
    routes: list[dict[str, Any]],
    listen: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    workers: int = 1,
    env: dict[str, str] | None = None,
    port: int | None = None,
    rules: dict[str, Any] | None = None,
) -> Gatehouse:
    """A gatehouse serving on both its ports, confirmed to be the one listening there.

    Ports are chosen free, and other processes (parallel suites) may take one
    before gatehouse binds it: then it exits, or (``--workers N``, whose
    listeners share ports) serves beside the other process. Either way it is
    started again on fresh ports (the admin port only, when the caller chose
    ``port``; if that one stays taken, PortTaken). Connecting is no proof that
    it started: the connection may reach the other process.
    """
    for attempt in range(3):
        gh = _launch(workdir, backends, routes, listen, extra, workers, env, port, rules)
        outcome = _wait_serving(gh, timeout=30)
        if outcome == "serving":
            return gh
        gh.stop()
        log = gh.stderr()
        taken = outcome == "taken" or "address already in use" in log.lower()
        if taken and attempt < 2:
            continue
        if taken and port is not None:
            raise PortTaken(f"port {port} stays taken by another process:\n{log}")
        raise RuntimeError(f"gatehouse did not start ({outcome}):\n{log}")
    raise AssertionError("unreachable")


def _wait_serving(gh: Gatehouse, timeout: float) -> str:
    """``serving`` (it listens on both ports, alone), ``taken`` (another process listens
    on one of them too), ``exited`` or ``timed out``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gh.process.poll() is not None:
            return "exited"
        found = [listeners(p, gh.process.pid) for p in (gh.admin_port, gh.port)]
        if any(f.others for f in found):
            return "taken"
        if all(f.ours for f in found):
            return "serving"
        time.sleep(0.05)
    return "timed out"


def _launch(
    workdir: Path,
    backends: dict[str, Any],
    routes: list[dict[str, Any]],
    listen: dict[str, Any] | None,
    extra: dict[str, Any] | None,
    workers: int,
    env: dict[str, str] | None,
    port: int | None,
    rules: dict[str, Any] | None = None,
) -> Gatehouse:
    config, port, admin_port, audit_path = write_config(
        workdir,
        backends=backends,
        routes=routes,
        listen=listen,
        extra=extra,
        port=port,
        rules=rules,
    )
    stderr_path = workdir / "stderr.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", "run", "--config", str(config), "--workers", str(workers)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=stderr_path.open("wb"),
        env={**os.environ, **(env or {})},
    )
    return Gatehouse(
        workdir,
        port,
        admin_port,
        proc,
        audit_path,
        scheme="https" if listen and "tls" in listen else "http",
        stderr_path=stderr_path,
    )


def public_route(name: str, path: str, backend: str, **options: Any) -> dict[str, Any]:
    return {
        "name": name,
        "path": path,
        "backend": backend,
        "allow": [{"name": "anyone", "public": True}],
        **options,
    }
