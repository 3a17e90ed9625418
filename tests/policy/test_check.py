"""`policy check` warnings: broad open rules, shadowed routes, overlaps, routes that admit no one."""

from __future__ import annotations

from pathlib import Path

from proxy.policy.check import check_policies
from tests.policy.support import policy


def messages(tmp_path: Path, text: str) -> list[str]:
    return [f.message for f in check_policies(policy(tmp_path, text))]


def test_public_rule_on_a_broad_prefix_is_flagged(tmp_path: Path) -> None:
    found = messages(
        tmp_path,
        """\
routes:
  - name: root
    path: /
    backend: b
    allow: [{name: anyone, public: true}]
  - name: api
    path: /api/
    backend: b
    allow: [{name: signed-in, any: [{authenticated: true}, {groups: [x]}]}]
  - name: deep
    path: /api/v1/health
    backend: b
    allow: [{name: anyone, public: true}]
  - name: narrow
    path: /
    host: a.example.com
    backend: b
    allow: [{name: eng, all: [{authenticated: true}, {groups: [eng]}]}]
""",
    )
    assert "rule 'anyone' admits everyone on broad prefix '/' of route 'root'" in found
    assert (
        "rule 'signed-in' admits every authenticated caller on broad prefix '/api/' of route 'api'"
        in found
    )
    assert not any("'deep'" in m or "'narrow'" in m for m in found)


def test_shadowed_routes_are_reported_as_unreachable(tmp_path: Path) -> None:
    found = messages(
        tmp_path,
        """\
routes:
  - {name: first, path: /a, methods: [GET], backend: b, allow: [{name: x, groups: [g]}]}
  - {name: second, path: /a, methods: [POST], backend: b, allow: [{name: x, groups: [g]}]}
  - {name: third, path: /a, methods: [GET, POST], backend: b, allow: [{name: x, groups: [g]}]}
  - {name: all-methods, path_exact: /e, backend: b, allow: [{name: x, groups: [g]}]}
  - {name: dead, path_exact: /e, methods: [GET], backend: b, allow: [{name: x, groups: [g]}]}
""",
    )
    assert any(m.startswith("route 'third' is unreachable") for m in found)
    assert any(
        m.startswith("route 'dead' is unreachable: shadowed by route 'all-methods'") for m in found
    )
    assert not any("'second' is unreachable" in m for m in found)


def test_overlapping_routes_with_different_backends_are_reported(tmp_path: Path) -> None:
    found = messages(
        tmp_path,
        """\
routes:
  - {name: old, path: /a, methods: [GET, POST], backend: one, allow: [{name: x, groups: [g]}]}
  - {name: new, path: /a, methods: [POST, PUT], backend: two, allow: [{name: x, groups: [g]}]}
  - {name: same, path: /c, methods: [GET], backend: one, allow: [{name: x, groups: [g]}]}
  - {name: same2, path: /c, methods: [PUT], backend: one, allow: [{name: x, groups: [g]}]}
""",
    )
    assert any(
        m.startswith("route 'new' (backend two) overlaps route 'old' (backend one") for m in found
    )
    assert not any("'same" in m for m in found)


def test_routes_that_admit_no_one_are_reported(tmp_path: Path) -> None:
    found = messages(
        tmp_path,
        """\
routes:
  - {name: closed, path: /a, backend: b}
  - {name: dry-only, path: /b, backend: b, allow: [{name: x, mode: audit, groups: [g]}]}
""",
    )
    assert "route 'closed' admits no one (no enforced allow rule)" in found
    assert "route 'dry-only' admits no one (no enforced allow rule)" in found


def test_deny_negating_a_caller_criterion_on_a_public_route_is_flagged(tmp_path: Path) -> None:
    found = messages(
        tmp_path,
        """\
routes:
  - name: docs
    path: /docs/guide
    backend: b
    deny: [{name: staff-only, not: {groups: [staff]}}]
    allow: [{name: anyone, public: true}]
""",
    )
    assert any("deny rule 'staff-only'" in m and "anonymous callers" in m for m in found)


def test_findings_cite_file_and_line(tmp_path: Path) -> None:
    ps = policy(tmp_path, "routes:\n  - {name: closed, path: /a, backend: b}\n")
    (finding,) = check_policies(ps)
    assert str(finding).startswith(f"{tmp_path / 'policies' / 'policy.yaml'}:2: warning: ")


def test_rules_restricting_only_what_not_who_count_as_admitting_every_signed_in_caller(
    tmp_path: Path,
) -> None:
    found = messages(
        tmp_path,
        """\
routes:
  - name: api
    path: /api
    backend: b
    allow:
      - {name: reads, method: [GET]}
      - {name: office, source_ip: [10.0.0.0/8]}
      - {name: mixed, any: [{public: true, method: [GET]}, {groups: [x]}]}
""",
    )
    assert (
        "rule 'reads' admits every authenticated caller on broad prefix '/api' of route 'api'"
        in found
    )
    assert "rule 'mixed' admits everyone on broad prefix '/api' of route 'api'" in found
    assert not any("'office'" in m for m in found)


AUDIT_CITED = """\
rules:
  guests-dry: {mode: audit, groups: [guests]}
routes:
  - name: app
    path: /app/reports
    backend: b
    allow:
      - {name: staff, any: [{groups: [staff]}, guests-dry]}
      - {name: only-dry, all: [guests-dry]}
      - {name: plain, groups: [admins]}
"""


def test_audit_rules_cited_inside_enforced_rules_are_flagged(tmp_path: Path) -> None:
    found = messages(tmp_path, AUDIT_CITED)
    assert any(
        m.startswith("allow rule 'staff' of route 'app' cites audit-mode rule 'guests-dry' inside")
        and "that part is not enforced" in m
        for m in found
    )
    assert (
        "allow rule 'only-dry' of route 'app' is made only of audit-mode rules ('guests-dry'): "
        "it is not enforced at all" in found
    )
    assert not any("'plain'" in m for m in found)


NAMESPACE = """\
routes:
  - name: app
    path: /app/reports
    backend: b
    allow:
      - {name: eng, groups: [eng]}
      - {name: pinned, all: [{issuer: [https://idp.example.com]}, {groups: [eng]}]}
      - name: both-pinned
        any:
          - {auth_method: [apikey], subject: [svc-ci]}
          - {issuer: [https://idp.example.com], groups: [ops]}
      - name: one-branch-unpinned
        any: [{issuer: [https://idp.example.com], groups: [ops]}, {claim: {path: x, is: y}}]
      - {name: anyone-signed-in, authenticated: true}
      - {name: dry, mode: audit, groups: [eng]}
"""


def test_unpinned_caller_rules_are_flagged_when_several_identity_sources_exist(
    tmp_path: Path,
) -> None:
    sources = ["issuer https://idp.example.com", "API keys"]
    found = [f.message for f in check_policies(policy(tmp_path, NAMESPACE), sources)]
    flagged = {m.split("'")[1] for m in found if "pins neither 'issuer' nor 'auth_method'" in m}
    assert flagged == {"eng", "one-branch-unpinned"}
    assert any(
        "2 identity sources are configured (issuer https://idp.example.com, API keys)" in m
        for m in found
    )
    # One source: subjects and groups cannot collide, nothing to pin.
    one = check_policies(policy(tmp_path, NAMESPACE), sources[:1])
    assert not any("pins neither" in f.message for f in one)
