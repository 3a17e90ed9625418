"""The layering contracts in pyproject.toml: they hold, they name every layer, and
they catch an import that crosses a layer (run on a copy of the package)."""

from __future__ import annotations

import os
import pkgutil
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

import proxy
import proxy.config
from tests.support.gatehouse import REPO

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def contracts() -> list[dict[str, Any]]:
    with (REPO / "pyproject.toml").open("rb") as file:
        found: list[dict[str, Any]] = tomllib.load(file)["tool"]["importlinter"]["contracts"]
    return found


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the package and configuration under ``root``."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_layering_contracts_hold() -> None:
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Contracts: {len(contracts())} kept, 0 broken." in result.stdout


# What each forbidden contract lets its sources import. With the contract's own
# forbidden list, this must name every layer: a new package or top-level module is
# then placed in each contract deliberately, not left out by default.
ALLOWED = {
    "The plain modules every layer reads import no layer": set(),
    "HTTP imports no I/O layer, no policy and no configuration aggregate": {
        "proxy.config.keyfiles",
        "proxy.config.reader",
        "proxy.errors",
        "proxy.files",
        "proxy.model",
    },
    "Policy is pure: it imports no I/O layer and none of HTTP's I/O": {
        "proxy.config.reader",
        "proxy.errors",
        "proxy.files",
        "proxy.model",
        # The pure parts of HTTP: Host grammar, path canonicalisation, header rules.
        "proxy.http.canonical",
        "proxy.http.config",
        "proxy.http.decision",
        "proxy.http.forwarding",
        "proxy.http.headers",
        "proxy.http.host",
    },
    "Observability imports no domain layer": {
        "proxy.config.keyfiles",
        "proxy.config.reader",
        "proxy.errors",
        "proxy.files",
        "proxy.http",
        "proxy.model",
    },
}


def layers() -> set[str]:
    """Every top-level module and package of proxy (the configuration package's
    modules one by one: each layer's options and the aggregate are distinct),
    and HTTP's modules (policy may read its pure ones)."""
    out = {f"proxy.{m.name}" for m in pkgutil.iter_modules(proxy.__path__)}
    out -= {"proxy.config", "proxy.__main__"}  # __main__: the entry point, nothing imports it
    out |= {f"proxy.config.{m.name}" for m in pkgutil.iter_modules(proxy.config.__path__)}
    return out


def covered(named: set[str], universe: set[str]) -> set[str]:
    return {m for m in universe if any(m == n or m.startswith(n + ".") for n in named)}


@pytest.mark.parametrize("name", sorted(ALLOWED))
def test_each_forbidden_contract_places_every_layer(name: str) -> None:
    [contract] = [c for c in contracts() if c["name"] == name]
    sources = set(contract["source_modules"])
    forbidden = set(contract["forbidden_modules"])
    allowed = ALLOWED[name]
    universe = layers()
    if "proxy.http" not in forbidden | allowed | sources:
        import proxy.http

        universe = (universe - {"proxy.http"}) | {
            f"proxy.http.{m.name}" for m in pkgutil.iter_modules(proxy.http.__path__)
        }
    unplaced = universe - covered(sources | forbidden | allowed, universe)
    assert not unplaced, f"{name}: place {sorted(unplaced)} as forbidden or allowed"
    assert not covered(forbidden, universe) & covered(allowed, universe)


def copy_of_package(tmp_path: Path) -> Path:
    shutil.copytree(
        REPO / "proxy", tmp_path / "proxy", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


@pytest.mark.parametrize(
    ("module", "imported", "contract"),
    [
        ("http/host.py", "proxy.observability.metrics", "HTTP imports no I/O layer"),
        ("http/h1/rules.py", "proxy.config.schema", "HTTP imports no I/O layer"),
        ("policy/criteria/grant.py", "proxy.grants.service", "Policy is pure"),
        ("policy/evaluate.py", "proxy.ratelimit", "Policy is pure"),
        ("policy/index.py", "proxy.http.protocol", "Policy is pure"),
        ("credentials/config.py", "proxy.identity.config", "Identity, upstream credentials"),
        ("identity/discovery.py", "proxy.upstream.retry", "Identity, upstream credentials"),
        ("upstream/forward.py", "proxy.config.schema", "Identity, upstream credentials"),
        ("model.py", "proxy.http.host", "The plain modules every layer reads"),
        ("observability/audit.py", "proxy.policy.model", "Observability imports no domain"),
        ("runtime.py", "proxy.cli.common", "Nothing imports the command line"),
        ("gateway.py", "proxy.dev.idp", "Only the command line imports the development tools"),
    ],
)
def test_an_import_across_a_layer_breaks_its_contract(
    tmp_path: Path, module: str, imported: str, contract: str
) -> None:
    root = copy_of_package(tmp_path)
    path = root / "proxy" / module
    path.write_text(path.read_text() + f"\nimport {imported}  # noqa\n")
    result = lint_imports(root)
    assert result.returncode == 1, result.stdout + result.stderr
    broken = result.stdout.split("Broken contracts", 1)[1]
    assert contract in broken
    assert imported in broken
