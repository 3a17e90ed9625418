"""Gatehouse under test: generated configuration, capability check, start and readiness.

The configuration is written the way a user would write it (YAML files on disk)
and checked with ``gatehouse check`` first, so a feature that is not built yet
turns into a clear "skipped: <why>" instead of a misleading number.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.procs import ProcessGroup, free_port, wait_http_ok, wait_tcp

ROUTE_COUNT = 100


class Unavailable(Exception):
    """The scenario cannot run on this build; the message says why."""


@dataclass(frozen=True, slots=True)
class Setup:
    name: str
    config: Path
    port: int
    admin_port: int
    scheme: str = "http"
    path: str = "/"
    headers: tuple[tuple[str, str], ...] = ()
    # The subject the audit log must show once the probe passed (identity scenarios).
    expect_subject: str | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{self.path}"

    @property
    def audit(self) -> Path:
        return self.config.parent / "audit.jsonl"


def _dump(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _base_config(d: Path, upstream_url: str) -> tuple[dict[str, Any], int, int]:
    port, admin_port = free_port(), free_port()
    config: dict[str, Any] = {
        "listen": {"address": f"127.0.0.1:{port}"},
        "admin": {"address": f"127.0.0.1:{admin_port}"},
        "audit": {"output": str(d / "audit.jsonl")},
        "policies": {"dir": str(d / "policies")},
        "backends": {"up": {"urls": [upstream_url]}},
    }
    return config, port, admin_port


def public_route(
    workdir: Path, name: str, upstream_url: str, *, listen: dict[str, object] | None = None
) -> Setup:
    """Scenario 4 (and the memory sections): one public route to the upstream."""
    d = workdir / name
    config, port, admin_port = _base_config(d, upstream_url)
    config["listen"].update(listen or {})
    route: dict[str, Any] = {
        "name": "bench",
        "path": "/",
        "backend": "up",
        "allow": [{"name": "anyone", "public": True}],
    }
    _dump(d / "policies" / "bench.yaml", {"routes": [route]})
    return Setup(name, _dump(d / "gatehouse.yaml", config), port, admin_port)


@dataclass(frozen=True, slots=True)
class IdentityParams:
    issuer: str
    audience: str
    token: str
    subject: str


def full_identity(
    workdir: Path,
    name: str,
    upstream_url: str,
    ident: IdentityParams,
    *,
    tls: tuple[Path, Path] | None = None,
    assertion_key: Path | None = None,
) -> Setup:
    """Scenarios 5-7: JWT RS256 from a local JWKS, 100 routes, audit to a file, metrics."""
    d = workdir / name
    config, port, admin_port = _base_config(d, upstream_url)
    config["identity"] = {
        "issuers": [
            {
                "issuer": ident.issuer,
                "audiences": [ident.audience],
                "jwks_uri": f"{ident.issuer}/jwks.json",
                "algorithms": ["RS256"],
            }
        ]
    }
    if assertion_key is not None:
        # Upstream credentials belong to the backend; the signing keys are global.
        config["assertions"] = {"signing_keys_file": str(assertion_key)}
        config["backends"]["up"]["credentials"] = {"type": "assertion", "audience": "bench"}
    if tls is not None:
        config["listen"]["tls"] = {"cert_file": str(tls[0]), "key_file": str(tls[1])}
    routes: list[dict[str, Any]] = []
    # 99 decoys in front so the matcher does real work, then the measured route.
    for i in range(ROUTE_COUNT - 1):
        routes.append(
            {
                "name": f"svc{i:03d}",
                "path": f"/svc{i:03d}/",
                "backend": "up",
                "allow": [{"name": "team", "groups": [f"team{i:03d}"]}],
            }
        )
    bench_route: dict[str, Any] = {
        "name": "bench",
        "path": "/api/",
        "backend": "up",
        "allow": [{"name": "engineers", "groups": ["engineering"]}],
    }
    routes.append(bench_route)
    _dump(d / "policies" / "routes.yaml", {"routes": routes})
    return Setup(
        name,
        _dump(d / "gatehouse.yaml", config),
        port,
        admin_port,
        scheme="https" if tls else "http",
        path="/api/items",
        headers=(("Authorization", f"Bearer {ident.token}"),),
        expect_subject=ident.subject,
    )


def check(gatehouse: str, setup: Setup) -> None:
    """Raise Unavailable with gatehouse's own explanation when it refuses the config."""
    try:
        r = subprocess.run(
            [gatehouse, "check", "--config", str(setup.config)],
            capture_output=True,
            timeout=60,
            text=True,
        )
    except (OSError, subprocess.SubprocessError) as e:
        raise Unavailable(f"`gatehouse check` failed to run: {e}") from e
    if r.returncode != 0:
        text = (r.stderr.strip() or r.stdout.strip() or f"exit {r.returncode}").splitlines()
        where = f"{setup.config.parent}/"
        lines = [line.strip().replace(where, "") for line in text[:4]]
        raise Unavailable("config rejected: " + "; ".join(lines))


def start(
    pg: ProcessGroup,
    gatehouse: str,
    setup: Setup,
    cpus: set[int] | None,
    *,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start one pinned worker and wait until the admin /healthz answers."""
    check(gatehouse, setup)
    argv = [gatehouse, "run", "--config", str(setup.config), "--workers", "1"]
    proc = pg.start(f"gatehouse-{setup.name}", argv, cpus=cpus, env=env, cwd=setup.config.parent)
    if not wait_http_ok("127.0.0.1", setup.admin_port, "/healthz", timeout=30, proc=proc):
        tail = pg.log_tail(f"gatehouse-{setup.name}", 4).replace("\n", " | ")
        pg.stop(proc)
        raise Unavailable(f"gatehouse did not become healthy: {tail or 'no output'}")
    if not wait_tcp("127.0.0.1", setup.port, timeout=10, proc=proc):
        pg.stop(proc)
        raise Unavailable("gatehouse is healthy but its listener does not accept connections")
    return proc


def audit_shows_subject(setup: Setup, timeout: float = 5.0) -> bool:
    """True once the audit log has a request by ``expect_subject``: the identity path ran."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with setup.audit.open("rb") as f:
                for line in f:
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(record, dict) and record.get("subject") == setup.expect_subject:
                        return True
        except OSError:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def metrics_show_route(setup: Setup, route: str) -> bool:
    """True when the admin /metrics counts requests for ``route`` (metrics are really on)."""
    url = f"http://127.0.0.1:{setup.admin_port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            text = resp.read().decode(errors="replace")
    except OSError:
        return False
    return any(
        line.startswith("gatehouse_requests_total{") and f'route="{route}"' in line
        for line in text.splitlines()
    )
