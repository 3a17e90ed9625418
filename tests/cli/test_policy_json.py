"""``gatehouse policy check|explain|test`` output for CI: ``--json`` parsed, and
``test --junit``; through real processes."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import yaml

from tests.support.cli import gatehouse_async as gatehouse

POLICY = """\
routes:
  - name: orders
    host: api.example.com
    path: /orders
    backend: orders
    allow:
      - name: engineers
        groups: [eng]
"""


def fake_jwt(claims: dict[str, Any]) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    return f"{b64(b'{}')}.{b64(json.dumps(claims).encode())}.c2ln"


def write_policies(tmp_path: Path) -> Path:
    policies = tmp_path / "policies"
    policies.mkdir(exist_ok=True)
    (policies / "orders.yaml").write_text(POLICY)
    return policies


def write_config(tmp_path: Path, extra: dict[str, Any]) -> Path:
    write_policies(tmp_path)
    path = tmp_path / "gatehouse.yaml"
    body = {"backends": {"orders": {"urls": ["http://127.0.0.1:1"]}}, **extra}
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


# -- policy ----------------------------------------------------------------------
async def test_policy_check_json_lists_warnings_and_problems(tmp_path: Path) -> None:
    policies = write_policies(tmp_path)
    code, out, _ = await gatehouse("policy", "check", "--json", str(policies))
    assert code == 0
    report = json.loads(out)
    assert report["ok"] is True and report["routes"] == 1 and report["warnings"] == []

    (policies / "orders.yaml").write_text(POLICY.replace("backend: orders", "backend: 7"))
    code, out, _ = await gatehouse(
        "policy", "check", "--json", "--backends", "orders", str(policies)
    )
    assert code == 2
    [problem] = json.loads(out)["problems"]
    assert problem["file"] == str(policies / "orders.yaml") and problem["line"] == 5


async def test_explain_token_applies_the_issuers_claim_mappings_from_config(
    tmp_path: Path,
) -> None:
    """Without the mapping explain said deny where production allows."""
    config = write_config(
        tmp_path,
        {
            "identity": {
                "issuers": [
                    {
                        "issuer": "https://login.example.com",
                        "audiences": ["gatehouse"],
                        "claims": {"subject": "oid", "groups": ["realm_access.roles"]},
                    }
                ]
            }
        },
    )
    token = fake_jwt(
        {
            "iss": "https://login.example.com",
            "sub": "x",
            "oid": "alice-oid",
            "realm_access": {"roles": ["eng"]},
        }
    )
    url = "https://api.example.com/orders/1"
    code, out, _ = await gatehouse(
        "policy", "explain", "--config", str(config), "--url", url, "--token", token, "--json"
    )
    assert code == 0, out
    explained = json.loads(out)
    assert explained["caller"]["subject"] == "alice-oid"
    assert explained["caller"]["groups"] == ["eng"]
    assert explained["decision"]["decision"] == "allow"
    assert explained["decision"]["reason"] == "allowed:engineers"
    assert explained["route"] == {"name": "orders", "backend": "orders"}
    assert any("NOT verified" in note for note in explained["notes"])

    # The same token without --config: standard claims only, as before.
    code, out, _ = await gatehouse(
        "policy", "explain", "--policies", str(tmp_path / "policies"), "--url", url,
        "--token", token, "--json",
    )  # fmt: skip
    assert json.loads(out)["decision"]["reason"] == "no_rule_matched"


async def test_policy_test_json_and_junit_report_every_case(tmp_path: Path) -> None:
    write_policies(tmp_path)
    tests = tmp_path / "policies" / "tests"
    tests.mkdir()
    fixture = tests / "orders.yaml"
    fixture.write_text(
        """\
- name: an engineer reads orders
  request: {method: GET, url: "https://api.example.com/orders/1"}
  identity: {subject: alice, groups: [eng]}
  expect: {decision: allow, reason: "allowed:engineers"}
- name: a stranger is let in (wrong on purpose)
  request: {method: GET, url: "https://api.example.com/orders/1"}
  identity: {subject: mallory}
  expect: {decision: allow}
"""
    )
    junit = tmp_path / "junit.xml"
    code, out, _ = await gatehouse("policy", "test", str(fixture), "--json", "--junit", str(junit))
    assert code == 1
    report = json.loads(out)
    assert (report["passed"], report["failed"]) == (1, 1)
    failed = report["cases"][1]
    assert failed["passed"] is False and failed["source"] == f"{fixture}:5"
    assert "expected decision=allow; got decision=deny" in failed["problem"]
    assert any(line.startswith("decision: deny") for line in failed["explanation"])

    suites = ElementTree.parse(junit).getroot()  # noqa: S314 - our own file
    assert suites.tag == "testsuites" and suites.get("failures") == "1"
    [suite] = list(suites)
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == [
        "an engineer reads orders",
        "a stranger is let in (wrong on purpose)",
    ]
    assert cases[0].find("failure") is None
    failure = cases[1].find("failure")
    assert failure is not None and "got decision=deny" in (failure.get("message") or "")
    assert cases[1].get("line") == "5"
