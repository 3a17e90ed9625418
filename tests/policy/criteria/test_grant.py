"""The grant criterion in policy: loaded from YAML, composed with all/any, evaluated
on the grants the caller holds (plain data, no I/O)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from proxy.config.reader import ConfigError
from proxy.grants.admitted import admitting_grant
from proxy.grants.catalogue import catalogue, route_grants
from proxy.model import HeldGrant
from tests.policy.support import caller, facts, policy

POLICY = """
rules:
  sre-on-call:
    grant: {approvers: {groups: [sre]}, max_duration: 1h, justification: optional}
routes:
  - name: prod-api
    path: /prod
    backend: up
    allow:
      - name: prod-writers-on-approval
        all:
          - groups: [eng]
          - grant: {approvers: {groups: [sre]}, max_duration: 8h, justification: required}
      - sre-on-call
  - name: plain
    path: /plain
    backend: up
    allow:
      - name: engineers
        groups: [eng]
"""
T = 1_800_000_000.0


def _held(rule: str, start: float = T - 60, end: float = T + 3600) -> HeldGrant:
    return HeldGrant(f"g_{rule}", rule, start, end)


def test_a_grant_rule_admits_only_a_caller_holding_a_grant_for_it(tmp_path: Path) -> None:
    policies = policy(tmp_path, POLICY)
    route = policies.match("app.example.com", "/prod/x", "GET")
    assert route is not None
    alice = caller("alice", groups=("eng",))
    assert policies.decide(route, facts("/prod/x"), alice, T).reason == "no_rule_matched"
    holding = dataclasses.replace(alice, grants=(_held("prod-writers-on-approval"),))
    decision = policies.decide(route, facts("/prod/x"), holding, T)
    assert decision.reason == "allowed:prod-writers-on-approval"
    assert admitting_grant(route.allow, decision.reason, holding, T) == "g_prod-writers-on-approval"


def test_the_other_criteria_of_the_rule_still_apply(tmp_path: Path) -> None:
    policies = policy(tmp_path, POLICY)
    route = policies.match("app.example.com", "/prod", "GET")
    assert route is not None
    contractor = dataclasses.replace(caller("carol"), grants=(_held("prod-writers-on-approval"),))
    assert not policies.decide(route, facts("/prod"), contractor, T).allowed


def test_a_grant_for_another_rule_or_outside_its_window_does_not_count(tmp_path: Path) -> None:
    policies = policy(tmp_path, POLICY)
    route = policies.match("app.example.com", "/prod", "GET")
    assert route is not None
    alice = caller("alice", groups=("eng",))
    for held in (
        _held("some-other-rule"),
        _held("prod-writers-on-approval", start=T + 10),
        _held("prod-writers-on-approval", end=T),
    ):
        holding = dataclasses.replace(alice, grants=(held,))
        assert not policies.decide(route, facts("/prod"), holding, T).allowed


def test_the_rules_max_duration_caps_a_grant_approved_under_a_longer_one(tmp_path: Path) -> None:
    policies = policy(tmp_path, POLICY)
    route = policies.match("app.example.com", "/prod", "GET")
    assert route is not None
    # Approved for 3h when the named rule allowed it; the rule now says 1h.
    held = HeldGrant("g_1", "sre-on-call", T - 2 * 3600, T + 3600)
    holding = dataclasses.replace(caller("bob"), grants=(held,))
    assert not policies.decide(route, facts("/prod"), holding, T).allowed
    assert policies.decide(route, facts("/prod"), holding, T - 3600 - 1).allowed


def test_a_named_rule_with_a_grant_is_requested_by_its_own_name(tmp_path: Path) -> None:
    route = policy(tmp_path, POLICY).match("app.example.com", "/prod", "GET")
    assert route is not None
    specs = route_grants(route)
    assert sorted(specs) == ["prod-writers-on-approval", "sre-on-call"]
    assert specs["prod-writers-on-approval"].max_duration == 8 * 3600
    assert specs["sre-on-call"].justification == "optional"


def test_the_catalogue_lists_requestable_rules_and_routes_without_grants_have_none(
    tmp_path: Path,
) -> None:
    policies = policy(tmp_path, POLICY)
    found = catalogue(policies)
    assert [(i.route.name, i.spec.rule) for i in found.items] == [
        ("prod-api", "prod-writers-on-approval"),
        ("prod-api", "sre-on-call"),
    ]
    assert found.spec("prod-api", None) is None  # two rules: the request must name one
    assert found.spec("plain", None) is None
    plain = policies.match("app.example.com", "/plain", "GET")
    assert plain is not None and not route_grants(plain)


def test_an_anonymous_caller_never_holds_a_grant(tmp_path: Path) -> None:
    policies = policy(tmp_path, POLICY)
    route = policies.match("app.example.com", "/prod", "GET")
    assert route is not None
    assert policies.decide(route, facts("/prod"), None, T).reason == "unauthenticated"


@pytest.mark.parametrize(
    ("grant", "message"),
    [
        ("{max_duration: 1h}", "missing required key 'approvers'"),
        ("{approvers: {method: [GET]}, max_duration: 1h}", "must say who approves"),
        ("{approvers: {groups: [sre]}, max_duration: 0s}", "expected a positive duration like 8h"),
        ("{approvers: {groups: [sre]}}", "missing required key 'max_duration'"),
        (
            "{approvers: {groups: [sre]}, max_duration: 1h, justification: maybe}",
            "must be one of required, optional",
        ),
        ("[sre]", "expected a mapping"),
    ],
)
def test_a_malformed_grant_criterion_is_refused_with_its_line(
    tmp_path: Path, grant: str, message: str
) -> None:
    text = f"""
routes:
  - name: r
    path: /r
    backend: up
    allow:
      - name: x
        grant: {grant}
"""
    with pytest.raises(ConfigError) as info:
        policy(tmp_path, text)
    assert any(message in str(p) and ":8:" in str(p) for p in info.value.problems), info.value


def test_a_grant_rule_pins_the_identity_source_so_the_lint_does_not_flag_it(
    tmp_path: Path,
) -> None:
    # A grant belongs to one issuer and subject (the gateway reads it by both).
    route = policy(tmp_path, POLICY).match("app.example.com", "/prod", "GET")
    assert route is not None
    assert all(rule.criterion.pins_source for rule in route.allow)
