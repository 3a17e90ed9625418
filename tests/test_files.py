"""Files replaced atomically, private from the first byte, never written through a link."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from proxy.files import replace_file, temporary_of


def test_the_new_content_replaces_the_old_file_and_nothing_is_left_behind(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_bytes(b"old")
    path.chmod(0o644)
    replace_file(path, b"new")
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert list(tmp_path.iterdir()) == [path]


def test_a_temporary_file_already_there_stops_the_write_and_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_bytes(b"old")
    temporary_of(path).write_bytes(b"another writer's")
    with pytest.raises(FileExistsError):
        replace_file(path, b"new")
    assert path.read_bytes() == b"old"
    assert temporary_of(path).read_bytes() == b"another writer's"


def test_a_single_writer_removes_a_link_planted_at_its_temporary_name_not_its_target(
    tmp_path: Path,
) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"untouched")
    path = tmp_path / "ready.json"
    temporary_of(path).symlink_to(target)
    replace_file(path, b"{}", sync=False, take_over=True)
    assert path.read_bytes() == b"{}"
    assert target.read_bytes() == b"untouched"
    assert not temporary_of(path).exists()
