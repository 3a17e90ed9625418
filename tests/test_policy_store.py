"""Hot reload: a complete valid set is swapped in; anything else keeps the last good set."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from proxy.config.reader import ConfigError
from proxy.policy_store import PolicyStore
from tests.policy.support import caller, decision, facts, write

STRICT = """\
routes:
  - name: admin
    path: /admin
    backend: b
    allow: [{name: admins, groups: [admins]}]
"""
OPEN = """\
routes:
  - name: site
    path: /
    backend: b
    allow: [{name: anyone, public: true}]
"""


def reloads(result: str) -> float:
    return REGISTRY.get_sample_value("gatehouse_config_reload_total", {"result": result}) or 0.0


def admin_allowed_for_anonymous(store: PolicyStore) -> bool:
    return decision(store.current, facts("/admin/users"), None).allowed


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    d = tmp_path / "policies"
    d.mkdir()
    write(d, "a-admin.yaml", STRICT)
    write(d, "b-site.yaml", OPEN)
    return d


def test_start_up_fails_on_an_invalid_policy(tmp_path: Path) -> None:
    write(tmp_path, "p.yaml", "routes: [")
    with pytest.raises(ConfigError):
        PolicyStore(tmp_path)


def test_a_valid_change_is_swapped_in_and_counted(policy_dir: Path) -> None:
    store = PolicyStore(policy_dir, {"b"})
    before, ok = store.current, reloads("ok")
    write(policy_dir, "a-admin.yaml", STRICT.replace("[admins]", "[admins, ops]"))
    assert store.reload() is True
    assert store.current is not before
    assert store.current.version != before.version
    assert reloads("ok") == ok + 1
    assert decision(store.current, facts("/admin"), caller(groups=("ops",))).allowed


def test_a_broken_file_keeps_the_last_good_set_and_counts_an_error(
    policy_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = PolicyStore(policy_dir)
    good, errors = store.current, reloads("error")
    write(policy_dir, "a-admin.yaml", "routes:\n  - name: admin\n    path: [\n")
    with caplog.at_level(logging.ERROR, logger="gatehouse.policy"):
        assert store.reload() is False
    assert store.current is good
    assert reloads("error") == errors + 1
    assert "keeping policy version" in caplog.text and "a-admin.yaml:" in caplog.text
    assert not admin_allowed_for_anonymous(store)


def test_an_emptied_file_keeps_the_last_good_set(policy_dir: Path) -> None:
    store = PolicyStore(policy_dir)
    good = store.current
    write(policy_dir, "a-admin.yaml", "")
    assert store.reload() is False
    assert store.current is good
    assert not admin_allowed_for_anonymous(store)


def test_a_deleted_file_never_widens_access(policy_dir: Path) -> None:
    store = PolicyStore(policy_dir)
    good, errors = store.current, reloads("error")
    # Without the strict route, /admin would fall through to the public "/" route.
    (policy_dir / "a-admin.yaml").unlink()
    assert store.reload() is False
    assert store.current is good
    assert reloads("error") == errors + 1
    assert not admin_allowed_for_anonymous(store)


def test_a_deletion_is_accepted_only_when_asked_explicitly(policy_dir: Path) -> None:
    store = PolicyStore(policy_dir)
    (policy_dir / "a-admin.yaml").unlink()
    assert store.reload(allow_removal=True) is True
    assert [r.name for r in store.current.routes] == ["site"]


def test_a_removed_directory_keeps_the_last_good_set(tmp_path: Path, policy_dir: Path) -> None:
    store = PolicyStore(policy_dir)
    good = store.current
    policy_dir.rename(tmp_path / "elsewhere")
    assert store.reload(allow_removal=True) is False
    assert store.current is good


def configmap(directory: Path, generation: str, files: dict[str, str]) -> None:
    """Lay out files the way the kubelet does: ..<gen>/ dir, ..data symlink, file symlinks."""
    data = directory / f"..{generation}"
    data.mkdir()
    for name, text in files.items():
        write(data, name, text)
        link = directory / name
        if not link.is_symlink():
            os.symlink(f"..data/{name}", link)
    tmp_link = directory / "..data_tmp"
    os.symlink(data.name, tmp_link)
    os.replace(tmp_link, directory / "..data")  # the atomic swap


async def wait_for(predicate: object, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.02)


async def test_watch_sees_a_configmap_symlink_swap(tmp_path: Path) -> None:
    d = tmp_path / "mounted"
    d.mkdir()
    configmap(d, "2026_11_21_10_00_00.1", {"admin.yaml": STRICT, "site.yaml": OPEN})
    store = PolicyStore(d)
    first = store.current.version
    task = asyncio.create_task(store.watch(interval=0.02))
    try:
        configmap(
            d,
            "2026_11_21_10_05_00.2",
            {"admin.yaml": STRICT.replace("[admins]", "[admins, ops]"), "site.yaml": OPEN},
        )
        await wait_for(lambda: store.current.version != first)
        assert decision(store.current, facts("/admin"), caller(groups=("ops",))).allowed
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_watch_keeps_the_last_good_set_on_a_broken_edit(policy_dir: Path) -> None:
    store = PolicyStore(policy_dir)
    good, errors = store.current, reloads("error")
    task = asyncio.create_task(store.watch(interval=0.02))
    try:
        write(policy_dir, "a-admin.yaml", "routes: [ {name: admin")
        await wait_for(lambda: reloads("error") == errors + 1)
        assert store.current is good
        write(policy_dir, "a-admin.yaml", STRICT + "# fixed\n")
        await wait_for(lambda: store.current is not good)
        assert not admin_allowed_for_anonymous(store)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_a_policy_file_made_writable_by_every_user_keeps_the_last_good_set(
    policy_dir: Path,
) -> None:
    store = PolicyStore(policy_dir)
    good = store.current
    loosened = write(policy_dir, "a-admin.yaml", STRICT.replace("[admins]", "[admins, ops]"))
    loosened.chmod(0o666)
    assert store.reload() is False
    assert store.current is good
    assert not admin_allowed_for_anonymous(store)
