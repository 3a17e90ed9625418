"""deploy/compose.yaml: the local trial hangs together and its configuration is valid.

No Docker daemon here: the file is checked structurally (every mount, build
context, dependency and shared network namespace exists), the ``setup``
service's command is run for real, and the resulting configuration must
pass ``gatehouse check``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.manifests import COMPOSE, load_compose, materialise_compose
from tests.support.cli import gatehouse_command


def _seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+)(s|m)", text)
    assert m, text
    return int(m.group(1)) * (60 if m.group(2) == "m" else 1)


def test_every_mount_build_context_and_dependency_exists() -> None:
    compose = load_compose()
    services: dict[str, Any] = compose["services"]
    assert {"gatehouse", "redis", "upstream", "dev-idp", "setup"} <= set(services)
    named = set(compose.get("volumes", {}))
    for name, svc in services.items():
        build = svc.get("build")
        if build is not None:
            context = (COMPOSE.parent / build["context"]).resolve()
            assert (context / build["dockerfile"]).is_file(), name
        assert "image" in svc or build, name
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).exists(), f"{name}: {source}"
            else:
                assert source in named, f"{name}: undeclared volume {source}"
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown {dep}"
        mode = svc.get("network_mode", "")
        if mode.startswith("service:"):
            assert mode.split(":", 1)[1] in services, name
        # Read-only root filesystem everywhere, as in production.
        assert svc.get("read_only") is True, name
        assert svc.get("cap_drop") == ["ALL"], name


def test_sample_upstream_runs_the_example_app_on_the_gatehouse_loopback() -> None:
    services = load_compose()["services"]
    upstream = services["upstream"]
    assert upstream["network_mode"] == "service:gatehouse"
    command = upstream["entrypoint"]
    module = command[command.index("uvicorn") + 1].split(":")[0]
    app_dir = command[command.index("--app-dir") + 1]
    mount = next(v for v in upstream["volumes"] if v.split(":")[1] == app_dir)
    assert (COMPOSE.parent / mount.split(":")[0] / f"{module}.py").is_file()
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert upstream["build"]["args"]["EXTRAS"].split(",") >= ["speed", "demo"]
    config = yaml.safe_load((COMPOSE.parent / "compose" / "gatehouse.yaml").read_text())
    port = command[command.index("--port") + 1]
    assert [u for b in config["backends"].values() for u in b["urls"]] == [
        f"http://127.0.0.1:{port}"
    ]
    # The app verifies assertions issued for its backend name by the proxy's public URL.
    env = upstream["environment"]
    assert env["GATEHOUSE_URL"] == config["public_url"]
    assert env["GATEHOUSE_AUDIENCE"] in config["backends"]
    # Only Gatehouse is published; it outlives its own drain on `docker compose stop`.
    gatehouse = services["gatehouse"]
    assert "ports" not in upstream and "ports" not in services["dev-idp"]
    drain = _seconds(config["shutdown"]["drain_timeout"])
    assert _seconds(gatehouse["stop_grace_period"]) > drain


def test_setup_output_makes_a_configuration_that_passes_gatehouse_check(tmp_path: Path) -> None:
    config = materialise_compose(tmp_path, Path(sys.executable).parent)
    out = gatehouse_command("check", "--config", str(config))
    assert out.returncode == 0, out.stdout + out.stderr
