"""`auth_method`: how the caller authenticated."""

from __future__ import annotations

from pathlib import Path

from tests.policy.criteria.support import compiled, holds, refused
from tests.policy.support import caller


def test_auth_method_is_one_of_the_listed_methods(tmp_path: Path) -> None:
    assert holds(tmp_path, "auth_method: [apikey, mtls]", caller(method="apikey"))
    assert not holds(tmp_path, "auth_method: [apikey]", caller(method="jwt"))
    assert compiled(tmp_path, "auth_method: [apikey]").pins_source


def test_only_known_methods_are_accepted(tmp_path: Path) -> None:
    assert (
        "auth_method: must be one of jwt, opaque, session, apikey, mtls, got 'password'"
        in refused(tmp_path, "auth_method: [password]")
    )
