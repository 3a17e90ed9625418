"""``gatehouse policy explain`` and ``policy test`` with grants: whether a rule requires
one, whether the caller holds one, and fixtures that state one."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from proxy.cli.policy import add_commands
from tests.policy.support import write

POLICY = """
routes:
  - name: prod
    host: prod.example.com
    path: /orders
    backend: orders
    allow:
      - name: prod-writers-on-approval
        all:
          - groups: [eng]
          - grant: {approvers: {groups: [sre]}, max_duration: 8h, justification: required}
"""


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="gatehouse")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["policy", *argv])
    code: int = args.func(args)
    return code


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    directory = tmp_path / "policies"
    directory.mkdir()
    write(directory, "prod.yaml", POLICY)
    return directory


def _explain(policies: Path, tmp_path: Path, *extra: str) -> int:
    claims = write(tmp_path, "claims.json", json.dumps({"sub": "alice", "groups": ["eng"]}))
    return run(
        "explain", "--url", "https://prod.example.com/orders/1", "--claims", str(claims),
        "--policies", str(policies), *extra,
    )  # fmt: skip


def test_explain_says_a_grant_is_required_and_not_held(
    policies: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _explain(policies, tmp_path) == 0
    out = capsys.readouterr().out
    assert (
        "grant for rule prod-writers-on-approval (approvers: groups any of [sre]; max 8h; "
        "justification required): no match"
    ) in out
    assert "decision: deny (no_rule_matched)" in out
    assert (
        "grant: rule prod-writers-on-approval requires an approved grant "
        "(approvers: groups any of [sre]); the caller's: not held"
    ) in out
    assert "request one: gatehouse access request prod --rule prod-writers-on-approval" in out


def test_explain_with_a_stated_grant_shows_it_held_and_the_decision_it_makes(
    policies: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _explain(policies, tmp_path, "--grant", "prod-writers-on-approval") == 0
    out = capsys.readouterr().out
    assert "decision: allow (allowed:prod-writers-on-approval)" in out
    assert "the caller's: held (stated:prod-writers-on-approval)" in out


def test_fixtures_can_state_a_grant(
    policies: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fixtures = write(
        tmp_path,
        "cases.yaml",
        """
        - name: an engineer with an approved grant writes
          request: {method: POST, url: https://prod.example.com/orders}
          identity: {subject: alice, groups: [eng], grants: [prod-writers-on-approval]}
          expect: {decision: allow, reason: "allowed:prod-writers-on-approval"}
        - name: without one they do not
          request: {method: POST, url: https://prod.example.com/orders}
          identity: {subject: alice, groups: [eng]}
          expect: {decision: deny, reason: no_rule_matched}
        - name: a grant for another rule does not count
          request: {method: POST, url: https://prod.example.com/orders}
          identity: {subject: alice, groups: [eng], grants: [another-rule]}
          expect: {decision: deny}
        """,
    )
    assert run("test", str(fixtures), "--policies", str(policies)) == 0
    assert "3 passed, 0 failed" in capsys.readouterr().out
