"""`source_ip`: the trusted client address is in a listed network."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.policy.criteria.support import holds, outcome, refused
from tests.policy.support import facts


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("10.1.2.3", True),
        ("11.0.0.1", False),
        ("::ffff:10.1.2.3", True),
        ("2001:db8::5", True),
        ("2001:db9::5", False),
        ("not-an-ip", False),
        ("", False),
    ],
)
def test_source_ip(tmp_path: Path, ip: str, expected: bool) -> None:
    rule = "source_ip: [10.0.0.0/8, '2001:db8::/32']"
    assert holds(tmp_path, rule, request=facts(client_ip=ip)) is expected


def test_source_ip_is_known_without_identity(tmp_path: Path) -> None:
    assert outcome(tmp_path, "source_ip: [10.0.0.0/8]", None, facts(client_ip="10.0.0.1"))


def test_networks_must_be_valid(tmp_path: Path) -> None:
    assert "not an IP network: '10.0.0.0/33'" in refused(tmp_path, "source_ip: [10.0.0.0/33]")
    assert "source_ip: must not be empty" in refused(tmp_path, "source_ip: []")
