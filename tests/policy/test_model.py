"""Routes and rules as plain data."""

from __future__ import annotations

from proxy.policy.criteria.public import Public
from proxy.policy.model import Route, Rule


def test_equal_routes_hash_equal_so_per_route_caches_work() -> None:
    a = Route(name="r", backend="b", source="f:1", path_prefix="/", order=3)
    b = Route(name="r", backend="b", source="f:1", path_prefix="/", order=3)
    assert a == b and hash(a) == hash(b)
    assert {a: 1}[b] == 1
    assert a != Route(name="r", backend="other", source="f:1", path_prefix="/", order=3)


def test_rule_reason_names_effect_and_rule() -> None:
    assert Rule("admins", "allow", Public(), "f:1").reason == "allowed:admins"
    assert Rule("interns", "deny", Public(), "f:1").reason == "denied:interns"
