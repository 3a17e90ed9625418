"""`path`: a segment-aware prefix or a matcher over the canonical path."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.policy.criteria.support import holds, refused
from tests.policy.support import facts


@pytest.mark.parametrize(
    ("rule", "path", "expected"),
    [
        ("path: /reports", "/reports/q3", True),
        ("path: /reports", "/reports", True),
        ("path: /reports", "/reportsx", False),
        ("path: /reports/", "/reports", False),
        ("path: {regex: '/v[0-9]+/items'}", "/v2/items", True),
        ("path: {regex: '/v[0-9]+/items'}", "/v2/items/x", False),
        ("path: {ends_with: .csv}", "/a/b.csv", True),
        ("path: {in: [/a, /b]}", "/b", True),
    ],
)
def test_path_criterion(tmp_path: Path, rule: str, path: str, expected: bool) -> None:
    assert holds(tmp_path, rule, request=facts(path=path)) is expected


def test_paths_that_could_never_match_are_refused(tmp_path: Path) -> None:
    assert "path: '/a/../b' is not a canonical path" in refused(tmp_path, "path: /a/../b")
    assert "invalid regular expression" in refused(tmp_path, "path: {regex: '[a'}")
    assert "give exactly one of is, in" in refused(tmp_path, "path: {is: /a, regex: /b}")
