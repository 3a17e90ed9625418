"""`authenticated`: whether the caller has a verified identity."""

from __future__ import annotations

from pathlib import Path

from tests.policy.criteria.support import holds, outcome, refused
from tests.policy.support import caller, facts, policy


def test_authenticated_true_needs_an_identity(tmp_path: Path) -> None:
    assert holds(tmp_path, "authenticated: true", caller())
    assert not holds(tmp_path, "authenticated: true", None)
    assert outcome(tmp_path, "authenticated: true", None) is False  # known, never unknown


def test_authenticated_false_never_admits_by_itself(tmp_path: Path) -> None:
    assert not holds(tmp_path, "authenticated: false", None)
    assert not holds(tmp_path, "authenticated: false", caller())


def test_authenticated_false_can_deny_anonymous_callers_on_a_public_route(tmp_path: Path) -> None:
    ps = policy(
        tmp_path,
        "routes:\n  - name: app\n    path: /\n    backend: b\n"
        "    allow: [{name: anyone, public: true}]\n"
        "    deny: [{name: anonymous-writes, authenticated: false, method: [POST]}]\n",
    )
    route = ps.routes[0]
    assert ps.decide(route, facts(method="POST"), None, 0.0).reason == "denied:anonymous-writes"
    assert ps.decide(route, facts(method="POST"), caller(), 0.0).allowed
    assert ps.decide(route, facts(), None, 0.0).allowed


def test_authenticated_must_be_a_boolean(tmp_path: Path) -> None:
    assert "authenticated: expected true or false, got a string" in refused(
        tmp_path, "authenticated: 'yes'"
    )
