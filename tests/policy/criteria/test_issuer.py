"""`issuer`: where the caller's identity was issued, compared exactly."""

from __future__ import annotations

from pathlib import Path

from tests.policy.criteria.support import compiled, holds, refused
from tests.policy.support import caller


def test_issuer_is_compared_exactly(tmp_path: Path) -> None:
    assert holds(tmp_path, "issuer: [https://idp.example.com]", caller())
    assert not holds(tmp_path, "issuer: [https://idp.example.com/]", caller())


def test_issuer_pins_the_identity_source(tmp_path: Path) -> None:
    assert compiled(tmp_path, "issuer: [https://idp.example.com]").pins_source
    assert not compiled(tmp_path, "subject: [alice]").pins_source


def test_issuer_must_not_be_empty(tmp_path: Path) -> None:
    assert "issuer: must not be empty" in refused(tmp_path, "issuer: []")
