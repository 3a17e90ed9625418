"""deploy/Dockerfile: its builder stage replayed in a fresh virtualenv, its runtime stage pinned.

There is no Docker daemon here, so the builder stage is interpreted: ARG and
ENV are applied, COPY copies from the repository (minus what a
.dockerignore leaves out: caches and build output) into a scratch root,
and each RUN command, which may only be ``python -m venv`` or a program
from that venv, runs with the image's venv path re-rooted into the scratch
directory and the system Python as ``python``. Anything else in the
builder fails the test, so the image cannot drift from what is exercised
here. The one deviation: pip's download cache stays on (the image disables
it only to keep the layer small).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.deploy.manifests import (
    DEPLOY,
    KUSTOMIZATIONS,
    REPO,
    materialise_compose,
    materialise_pod,
    render,
)
from tests.support.net import free_port, wait_for_port

DOCKERFILE = DEPLOY / "Dockerfile"
VENV = "/opt/gatehouse"
_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", ".*")


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with continuation lines joined."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "dangling line continuation"
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", rest.strip(), flags=re.IGNORECASE)
            assert m, line
            stages.append(Stage(m.group(1), m.group(2) or str(len(stages))))
        elif not stages:
            assert keyword == "ARG", f"only ARG may precede FROM: {line}"
            name, _, default = rest.strip().partition("=")
            global_args[name] = default
        else:
            stages[-1].instructions.append((keyword, rest.strip()))
    return global_args, stages


def _substitute(text: str, values: dict[str, str]) -> str:
    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        assert name in values, f"${name} is not defined"
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, text)


def _env_pairs(rest: str) -> dict[str, str]:
    pairs = {}
    for token in shlex.split(rest):
        key, sep, value = token.partition("=")
        assert sep, f"use ENV KEY=VALUE, not {rest!r}"
        pairs[key] = value
    return pairs


def _stage(name: str) -> tuple[dict[str, str], Stage]:
    global_args, stages = parse_dockerfile(DOCKERFILE.read_text())
    return global_args, next(s for s in stages if s.name == name)


def system_python() -> Path:
    """The interpreter the project's venv was made from (not the venv itself)."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    return Path(sys.base_prefix) / "bin" / version


def replay_builder(root: Path) -> Path:
    """Run the builder stage under ``root``; return the venv it made."""
    global_args, stage = _stage("builder")
    values = dict(global_args)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "VIRTUAL_ENV"))}
    workdir = root
    venv = root / VENV.lstrip("/")

    def reroot(token: str) -> str:
        return str(venv) + token[len(VENV) :] if token.startswith(VENV) else token

    for keyword, rest in stage.instructions:
        rest = _substitute(rest, values)
        if keyword == "ARG":
            name, _, default = rest.partition("=")
            values.setdefault(name, default)
        elif keyword == "ENV":
            pairs = _env_pairs(rest)
            values.update(pairs)
            env.update({k: v for k, v in pairs.items() if k != "PIP_NO_CACHE_DIR"})
        elif keyword == "WORKDIR":
            workdir = root / rest.lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        elif keyword == "COPY":
            *sources, dest = shlex.split(rest)
            assert not any(s.startswith("--") for s in sources), "builder COPY takes no flags"
            target = workdir / dest
            for source in sources:
                src = REPO / source
                if src.is_dir():
                    shutil.copytree(src, target, ignore=_IGNORED, dirs_exist_ok=True)
                else:
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, target / src.name)
        elif keyword == "RUN":
            for command in rest.split("&&"):
                argv = [reroot(t) for t in shlex.split(command)]
                if argv[:3] == ["python", "-m", "venv"]:
                    argv[0] = str(system_python())
                assert argv[0] == str(system_python()) or argv[0].startswith(str(venv)), (
                    f"builder RUN may only use python -m venv or the venv's programs: {command}"
                )
                out = subprocess.run(
                    argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=300
                )
                assert out.returncode == 0, f"{command}\n{out.stdout[-3000:]}{out.stderr[-3000:]}"
        else:
            raise AssertionError(f"builder stage: {keyword} is not replayed by this test")
    return venv


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    started = time.monotonic()
    venv = replay_builder(tmp_path_factory.mktemp("image"))
    # Reported by -rP / on failure: the budget for this is ~90 s.
    print(f"builder stage replayed in {time.monotonic() - started:.1f}s")
    return venv


def runtime_env(venv: Path) -> dict[str, str]:
    """The runtime stage's ENV, with the image's venv path mapped to ``venv``."""
    _, stage = _stage("runtime")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIRTUAL_ENV")}
    for keyword, rest in stage.instructions:
        if keyword == "ENV":
            for key, value in _env_pairs(rest).items():
                env[key] = value.replace(VENV, str(venv)).replace("$PATH", os.environ["PATH"])
    return env


# -- the runtime stage -------------------------------------------------------------


def test_runtime_stage_is_a_non_root_read_only_friendly_gatehouse_run() -> None:
    global_args, stage = _stage("runtime")
    assert _substitute(stage.base, global_args) == "python:3.11-slim"
    by_keyword: dict[str, list[str]] = {}
    for keyword, rest in stage.instructions:
        by_keyword.setdefault(keyword, []).append(rest)
    assert by_keyword["USER"] == ["10001:10001"], "fixed numeric UID (runAsNonRoot needs it)"
    assert by_keyword["ENTRYPOINT"] == ['["gatehouse", "run"]']
    assert json.loads(by_keyword["CMD"][0]) == ["--config", "/etc/gatehouse/gatehouse.yaml"]
    assert by_keyword["EXPOSE"] == ["8443 9901"]
    assert by_keyword["STOPSIGNAL"] == ["SIGTERM"]
    env = {k: v for rest in by_keyword["ENV"] for k, v in _env_pairs(rest).items()}
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PATH"].startswith(f"{VENV}/bin:")
    assert f"--from=builder {VENV} {VENV}" in by_keyword["COPY"]
    # Nothing is installed into the runtime image itself.
    assert not any("pip" in run for run in by_keyword["RUN"])
    assert "groupadd --system --gid 10001" in by_keyword["RUN"][0]
    assert "HEALTHCHECK" in by_keyword and "/healthz" in env["GATEHOUSE_HEALTHCHECK_URL"]


def _healthcheck_argv() -> list[str]:
    _, stage = _stage("runtime")
    rest = next(r for k, r in stage.instructions if k == "HEALTHCHECK")
    argv: list[str] = json.loads(rest.split(" CMD ", 1)[1])
    return argv


# -- the builder stage, replayed ------------------------------------------------------


def test_builder_stage_installs_a_working_gatehouse_with_the_speed_extra(image_venv: Path) -> None:
    env = runtime_env(image_venv)
    out = subprocess.run(
        ["gatehouse", "--help"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "run" in out.stdout and "check" in out.stdout
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    out = subprocess.run(["gatehouse", "--version"], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == version
    # EXTRAS=speed,redis: uvloop and the Redis client are there; nothing comes from the checkout.
    probe = "import proxy, uvloop; print(proxy.__file__)"
    out = subprocess.run(["python", "-c", probe], env=env, capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith(str(image_venv))


def test_image_accepts_every_example_configuration(image_venv: Path, tmp_path: Path) -> None:
    env = runtime_env(image_venv)
    configs = [
        materialise_pod(
            render(KUSTOMIZATIONS["gateway"]), "gatehouse", "gatehouse", tmp_path / "gw"
        ),
        materialise_pod(render(KUSTOMIZATIONS["sidecar"]), "orders", "gatehouse", tmp_path / "sc"),
        materialise_compose(tmp_path / "compose", image_venv / "bin"),
    ]
    for config in configs:
        out = subprocess.run(
            ["gatehouse", "check", "--config", str(config)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd="/",
        )
        assert out.returncode == 0, f"{config}\n{out.stdout}{out.stderr}"


def _tree(root: Path) -> set[tuple[str, int]]:
    return {(str(p), p.stat().st_mtime_ns) for p in root.rglob("*") if not p.is_symlink()}


def test_healthcheck_follows_the_admin_listener_and_the_venv_stays_unwritten(
    image_venv: Path, tmp_path: Path
) -> None:
    port, admin = free_port(), free_port()
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "routes.yaml").write_text(
        yaml.safe_dump(
            {
                "routes": [
                    {
                        "name": "public",
                        "path": "/",
                        "backend": "app",
                        "allow": [{"name": "anyone", "public": True}],
                    }
                ]
            }
        )
    )
    config = tmp_path / "gatehouse.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": {"address": f"127.0.0.1:{port}"},
                "admin": {"address": f"127.0.0.1:{admin}"},
                "policies": {"dir": "policies"},
                "backends": {"app": {"urls": [f"http://127.0.0.1:{free_port()}"]}},
                "shutdown": {"drain_timeout": "2s"},
            }
        )
    )
    env = runtime_env(image_venv)
    env["GATEHOUSE_HEALTHCHECK_URL"] = f"http://127.0.0.1:{admin}/healthz"
    healthcheck = _healthcheck_argv()
    before = _tree(image_venv)
    # The image's ENTRYPOINT + CMD, with the config path of this test and 2 workers.
    process = subprocess.Popen(
        ["gatehouse", "run", "--config", str(config), "--workers", "2"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_port(admin, timeout=30)
        ok = subprocess.run(healthcheck, env=env, capture_output=True, timeout=10)
        assert ok.returncode == 0, ok.stderr
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            _, stderr = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise
    assert process.returncode == 0, stderr.decode(errors="replace")[-2000:]
    down = subprocess.run(healthcheck, env=env, capture_output=True, timeout=10)
    assert down.returncode != 0
    assert _tree(image_venv) == before, "running wrote into the image's venv"
