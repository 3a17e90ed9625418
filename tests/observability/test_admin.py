"""Readiness files: published atomically, never through a planted link, retried on failure."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from proxy.files import temporary_of
from proxy.observability.admin import ReadinessBoard


def test_readiness_is_never_written_through_a_link_at_its_temporary_name(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("untouched")
    board = ReadinessBoard(tmp_path / "ready")
    published = tmp_path / "ready" / f"ready-{os.getpid()}.json"
    temporary_of(published).symlink_to(target)
    board.publish({"policies": True})
    assert target.read_text() == "untouched"
    assert board.collect(expected_workers=1) == {"policies": True, "workers": True}
    assert list((tmp_path / "ready").iterdir()) == [published]


def test_a_readiness_file_that_cannot_be_written_is_logged_once_and_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    board = ReadinessBoard(tmp_path)
    blocker = temporary_of(tmp_path / f"ready-{os.getpid()}.json")
    blocker.mkdir()  # cannot be removed as a file, nor opened as one
    with caplog.at_level(logging.WARNING, logger="gatehouse.admin"):
        board.publish({"policies": True})
        board.publish({"policies": True})
    assert [r.getMessage() for r in caplog.records] == [
        f"cannot publish readiness to {tmp_path}/ready-{os.getpid()}.json: Is a directory"
    ]
    assert board.collect(expected_workers=1) == {"workers": False}
    blocker.rmdir()
    board.publish({"policies": True})
    assert board.collect(expected_workers=1) == {"policies": True, "workers": True}
