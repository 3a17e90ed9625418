"""The criterion registry: the one list the loader, the lint and the README all follow."""

from __future__ import annotations

import pkgutil
from pathlib import Path

import pytest

import proxy.policy.criteria as package
from proxy.policy.criteria import CRITERIA, REGISTRY, reference_table
from proxy.policy.criteria.base import register
from tests.policy.criteria.support import refused

ROOT = Path(__file__).resolve().parents[3]
TESTS = Path(__file__).resolve().parent


def readme_table() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    begin, end = "<!-- criteria:begin -->\n", "<!-- criteria:end -->"
    assert text.count(begin) == 1 and text.count(end) == 1
    return text.split(begin, 1)[1].split(end, 1)[0]


def test_the_readme_criterion_table_is_the_registry() -> None:
    # On failure, paste the output of:
    #   python -c "from proxy.policy.criteria import reference_table; print(reference_table())"
    assert readme_table() == reference_table()
    listed = {line.split("`")[1] for line in readme_table().splitlines() if line.startswith("| `")}
    assert listed == set(REGISTRY) == set(CRITERIA)


def test_every_criterion_module_in_the_package_is_loaded_and_tested() -> None:
    modules = {f"{package.__name__}.{m.name}" for m in pkgutil.iter_modules(package.__path__)}
    registering = {kind.parse.__module__ for kind in REGISTRY.values()}
    assert registering <= modules
    for module in registering:
        short = module.rsplit(".", 1)[1]
        assert (TESTS / f"test_{short}.py").is_file(), f"{module} has no test module"


def test_the_loader_knows_exactly_the_registered_keys(tmp_path: Path) -> None:
    problem = refused(tmp_path, "publc: true")
    assert "unknown key 'publc'" in problem
    for key in REGISTRY:
        assert key in problem.split("known keys: ", 1)[1]


@pytest.mark.parametrize("key", ["public", "name", "mode"])
def test_a_key_can_be_registered_once_and_never_shadow_rule_fields(key: str) -> None:
    with pytest.raises(ValueError, match="is taken"):
        register(key, REGISTRY["public"].parse, about="caller", syntax="", holds="")


@pytest.mark.parametrize("key", sorted(REGISTRY))
def test_an_empty_value_is_refused_for_every_criterion(tmp_path: Path, key: str) -> None:
    # Once compiled to a rule with no criterion at all, which held for every caller.
    assert f"'r'.{key}: " in refused(tmp_path, f"{key}: ")
