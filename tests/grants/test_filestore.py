"""The file store: atomic writes, private permissions, worker processes sharing one file,
and a damaged file never overwritten."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from proxy.errors import StateUnavailable
from proxy.grants import machine
from proxy.grants.filestore import FileGrantStore
from tests.grants.conftest import LIMITS
from tests.grants.support import ALICE, BOB, T0, pending


async def _store(path: Path) -> FileGrantStore:
    store = FileGrantStore(path, LIMITS)
    await store.start()
    return store


async def test_the_file_is_private_and_no_temporary_file_is_left_behind(tmp_path: Path) -> None:
    store = await _store(tmp_path / "grants.json")
    await store.add(pending(), T0)
    assert stat.S_IMODE(os.stat(tmp_path / "grants.json").st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grants.json", "grants.json.lock"]


async def test_a_change_by_another_worker_is_seen_by_the_next_decision(tmp_path: Path) -> None:
    path = tmp_path / "grants.json"
    one, two = await _store(path), await _store(path)
    grant = pending()
    await one.add(grant, T0)
    assert await two.held(ALICE.issuer, ALICE.subject, "prod-api") == ()
    stored = await two.get(grant.id)
    assert stored is not None
    await two.replace(stored, machine.decide(stored, "approve", BOB, T0, "ok"))
    assert len(await one.held(ALICE.issuer, ALICE.subject, "prod-api")) == 1
    # And neither worker's write lost the other's.
    await one.add(pending(BOB), T0)
    assert {g.requester for g in await two.open_grants()} == {ALICE, BOB}


async def test_a_damaged_file_is_never_overwritten_and_decisions_keep_the_last_good_grants(
    tmp_path: Path,
) -> None:
    path = tmp_path / "grants.json"
    store = await _store(path)
    grant = pending()
    await store.add(grant, T0)
    await store.replace(grant, machine.decide(grant, "approve", BOB, T0, "ok"))
    path.write_text('{"format": 1, "grants": [{"id": "half')
    with pytest.raises(StateUnavailable):
        await store.add(pending(BOB), T0)
    assert path.read_text().endswith('"half')
    assert len(await store.held(ALICE.issuer, ALICE.subject, "prod-api")) == 1


async def test_finished_grants_are_forgotten_after_their_retention(tmp_path: Path) -> None:
    store = await _store(tmp_path / "grants.json")
    old = pending(now=1000.0)
    await store.add(old, 1000.0)
    await store.replace(old, machine.decide(old, "deny", BOB, 1000.0, "no"))
    # Any later change prunes it: it finished long before retention ago.
    await store.add(pending(BOB), T0)
    assert await store.get(old.id) is None
