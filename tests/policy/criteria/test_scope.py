"""`scope`: the caller's token carries at least one listed scope."""

from __future__ import annotations

from pathlib import Path

from tests.policy.criteria.support import holds, outcome, refused
from tests.policy.support import caller


def test_scope_holds_when_any_listed_scope_was_granted(tmp_path: Path) -> None:
    assert holds(tmp_path, "scope: [orders:write]", caller(scopes=("orders:read", "orders:write")))
    assert not holds(tmp_path, "scope: [orders:write]", caller(scopes=("orders:read",)))


def test_scope_must_not_be_empty(tmp_path: Path) -> None:
    assert "scope: must not be empty" in refused(tmp_path, "scope: ")


def test_scope_is_unknown_when_scope_or_scp_was_not_received(tmp_path: Path) -> None:
    assert outcome(tmp_path, "scope: [read]", caller(unknown_claims=("scope",))) is None
    assert outcome(tmp_path, "scope: [read]", caller(unknown_claims=("scp",))) is None
