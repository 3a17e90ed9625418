"""`method`: the request method."""

from __future__ import annotations

from pathlib import Path

from tests.policy.criteria.support import holds, refused
from tests.policy.support import facts


def test_method_criterion_is_upper_cased_at_load(tmp_path: Path) -> None:
    assert holds(tmp_path, "method: [get, head]", request=facts(method="HEAD"))
    assert not holds(tmp_path, "method: [GET]", request=facts(method="POST"))


def test_methods_must_be_http_tokens(tmp_path: Path) -> None:
    assert "method: not an HTTP method: 'GE T'" in refused(tmp_path, "method: ['GE T']")
