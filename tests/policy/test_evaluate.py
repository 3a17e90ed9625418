"""Decisions: deny wins, nothing is implied, audit rules never enforce, explanations cite rules."""

from __future__ import annotations

import ipaddress
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.model import Identity, RequestFacts
from proxy.policy.criteria import Criterion
from proxy.policy.criteria.authenticated import Authenticated
from proxy.policy.criteria.fields import IdentitySetAny
from proxy.policy.criteria.logic import All, AnyOf, Not
from proxy.policy.criteria.method import MethodIn
from proxy.policy.criteria.path import PathMatch
from proxy.policy.criteria.public import Public
from proxy.policy.criteria.source_ip import SourceIp
from proxy.policy.evaluate import PolicySet
from proxy.policy.load import load_policies
from proxy.policy.model import Route, Rule
from proxy.policy.routes import reads_caller
from tests.policy.support import caller, facts, policy

ROUTE = """\
routes:
  - name: app
    path: /
    backend: b
"""


def app(tmp_path: Path, rules: str) -> PolicySet:
    return policy(tmp_path, ROUTE + rules)


def decide(ps: PolicySet, **kw: object) -> tuple[bool, str]:
    identity = kw.pop("identity", None)
    f = facts(**kw)  # type: ignore[arg-type]
    route = ps.match(f.host, f.path, f.method)
    assert route is not None
    d = ps.decide(route, f, identity, 0.0)  # type: ignore[arg-type]
    return d.allowed, d.reason


def test_a_route_without_allow_admits_no_one(tmp_path: Path) -> None:
    ps = app(tmp_path, "")
    assert decide(ps) == (False, "unauthenticated")
    assert decide(ps, identity=caller(groups=("admins",))) == (False, "no_rule_matched")


def test_deny_wins_over_allow_whatever_the_order(tmp_path: Path) -> None:
    ps = app(
        tmp_path,
        """\
    allow:
      - {name: staff, groups: [staff]}
    deny:
      - {name: no-interns, groups: [interns]}
""",
    )
    assert decide(ps, identity=caller(groups=("staff",))) == (True, "allowed:staff")
    assert decide(ps, identity=caller(groups=("staff", "interns"))) == (False, "denied:no-interns")


def test_unauthenticated_only_when_no_identity_and_not_explicitly_denied(tmp_path: Path) -> None:
    ps = app(
        tmp_path,
        """\
    allow:
      - {name: staff, groups: [staff]}
    deny:
      - {name: blocked-net, source_ip: [203.0.113.0/24]}
""",
    )
    assert decide(ps) == (False, "unauthenticated")
    assert decide(ps, client_ip="203.0.113.5") == (False, "denied:blocked-net")
    assert decide(ps, identity=caller()) == (False, "no_rule_matched")


def test_public_must_be_explicit(tmp_path: Path) -> None:
    ps = app(tmp_path, "    allow:\n      - {name: anyone, public: true}\n")
    assert decide(ps) == (True, "allowed:anyone")


def test_first_matching_allow_rule_is_cited(tmp_path: Path) -> None:
    ps = app(
        tmp_path,
        """\
    allow:
      - {name: admins, groups: [admins]}
      - {name: signed-in, authenticated: true}
""",
    )
    assert decide(ps, identity=caller(groups=("admins",))) == (True, "allowed:admins")
    assert decide(ps, identity=caller()) == (True, "allowed:signed-in")


def test_criteria_in_one_rule_must_all_hold(tmp_path: Path) -> None:
    ps = app(
        tmp_path,
        "    allow:\n      - {name: r, groups: [ops], method: [GET], source_ip: [10.0.0.0/8]}\n",
    )
    ops = caller(groups=("ops",))
    assert decide(ps, identity=ops, client_ip="10.1.2.3") == (True, "allowed:r")
    assert decide(ps, identity=ops, client_ip="10.1.2.3", method="POST")[0] is False
    assert decide(ps, identity=ops, client_ip="11.1.2.3")[0] is False


def test_any_all_not_nest(tmp_path: Path) -> None:
    ps = app(
        tmp_path,
        """\
    allow:
      - name: nested
        any:
          - all:
              - groups: [eng]
              - not: {groups: [contractors]}
          - subject: [root]
""",
    )
    assert decide(ps, identity=caller(groups=("eng",)))[0] is True
    assert decide(ps, identity=caller(groups=("eng", "contractors")))[0] is False
    assert decide(ps, identity=caller("root", groups=("contractors",)))[0] is True
    assert decide(ps, identity=caller(groups=("sales",)))[0] is False


def test_not_over_a_caller_criterion_never_admits_anonymous_callers(tmp_path: Path) -> None:
    ps = app(tmp_path, "    allow:\n      - name: not-interns\n        not: {groups: [interns]}\n")
    assert decide(ps) == (False, "unauthenticated")
    assert decide(ps, identity=caller()) == (True, "allowed:not-interns")


def test_named_rules_are_reusable_and_cited_by_name(tmp_path: Path) -> None:
    ps = policy(
        tmp_path,
        """\
rules:
  admins: {all: [{groups: [admins]}, {mfa: true}]}
routes:
  - name: app
    path: /
    backend: b
    allow: [admins]
    deny:
      - {name: not-from-vpn, not: {source_ip: [10.8.0.0/16]}, any: [admins]}
""",
    )
    admin = caller(groups=("admins",), claims={"amr": ["pwd", "mfa"]})
    assert decide(ps, identity=admin, client_ip="10.8.0.1") == (True, "allowed:admins")
    assert decide(ps, identity=admin, client_ip="10.9.0.1") == (False, "denied:not-from-vpn")


def test_audit_rules_are_reported_but_never_enforced(tmp_path: Path) -> None:
    ps = app(
        tmp_path,
        """\
    deny:
      - {name: future-deny, mode: audit, groups: [sales]}
    allow:
      - {name: future-allow, mode: audit, groups: [guests]}
      - {name: staff, groups: [staff, sales]}
""",
    )
    route = ps.routes[0]
    sales = ps.decide(route, facts(), caller(groups=("sales",)), 0.0)
    assert (sales.allowed, sales.reason, sales.audit) == (
        True,
        "allowed:staff",
        ("denied:future-deny",),
    )
    guest = ps.decide(route, facts(), caller(groups=("guests",)), 0.0)
    assert (guest.allowed, guest.reason, guest.audit) == (
        False,
        "no_rule_matched",
        ("allowed:future-allow",),
    )
    staff = ps.decide(route, facts(), caller(groups=("staff",)), 0.0)
    assert staff.audit == ()


def test_decisions_carry_route_and_policy_version_and_are_reused(tmp_path: Path) -> None:
    ps = app(tmp_path, "    allow:\n      - {name: anyone, public: true}\n")
    route = ps.routes[0]
    first = ps.decide(route, facts(), None, 0.0)
    assert (first.route, first.policy_version) == ("app", ps.version)
    assert ps.decide(route, facts(), None, 1.0) is first  # prebuilt: no allocation


def test_route_not_found_reveals_nothing(tmp_path: Path) -> None:
    ps = policy(
        tmp_path,
        "routes:\n  - name: secret-admin\n    path: /admin\n    backend: b\n",
    )
    assert ps.match("app.example.com", "/other", "GET") is None
    d = ps.explain(facts("/other"), None, 0.0).decision
    assert (d.allowed, d.reason, d.route) == (False, "route_not_found", None)


def test_explain_lists_every_rule_with_its_outcome(tmp_path: Path) -> None:
    ps = app(
        tmp_path,
        """\
    deny:
      - {name: no-interns, groups: [interns]}
      - {name: dry, mode: audit, method: [GET]}
    allow:
      - name: eng-with-mfa
        all: [{groups: [eng]}, {mfa: true}]
      - {name: signed-in, authenticated: true}
""",
    )
    explanation = ps.explain(facts("/x"), caller(groups=("eng",)), 0.0)
    outcomes = [(o.rule.effect, o.rule.name, o.outcome) for o in explanation.rules]
    assert outcomes == [
        ("deny", "no-interns", False),
        ("deny", "dry", True),
        ("allow", "eng-with-mfa", False),
        ("allow", "signed-in", True),
    ]
    text = "\n".join(explanation.lines())
    assert "route: app (backend b" in text
    assert "deny dry [audit: not enforced]" in text
    assert "groups any of [eng]: match" in text
    assert "mfa (amr any of [mfa]): no match" in text
    assert "decision: allow (allowed:signed-in)" in text
    assert "audit-mode rules that fired: denied:dry" in text
    assert f"policy version: {ps.version}" in text


def test_explain_without_identity_marks_caller_criteria_unknown(tmp_path: Path) -> None:
    ps = app(tmp_path, "    allow:\n      - {name: staff, groups: [staff]}\n")
    text = "\n".join(ps.explain(facts(), None, 0.0).lines())
    assert "allow staff" in text and "unknown (no identity)" in text
    assert "decision: deny (unauthenticated)" in text


def test_explain_for_no_route(tmp_path: Path) -> None:
    ps = app(tmp_path, "")
    explanation = ps.explain(facts(host="h", path="/", method="GET"), None, 0.0)
    assert explanation.route is not None  # "/" catches everything here
    ps2 = policy(tmp_path, "routes: []\n")
    lines = ps2.explain(facts(), None, 0.0).lines()
    assert lines[0] == "route: none matched"
    assert "decision: deny (route_not_found)" in lines


def test_request_criteria_alone_never_admit_anonymous_callers(tmp_path: Path) -> None:
    ps = app(
        tmp_path,
        """\
    allow:
      - {name: gets, method: [GET]}
      - {name: not-blocked, not: {source_ip: [203.0.113.0/24]}}
      - {name: not-signed-in, not: {authenticated: true}}
""",
    )
    assert decide(ps) == (False, "unauthenticated")
    assert decide(ps, identity=caller()) == (True, "allowed:gets")
    text = "\n".join(ps.explain(facts(), None, 0.0).lines())
    assert "allow gets (" in text and "unknown (no identity)" in text


def test_anonymous_callers_are_admitted_only_through_public(tmp_path: Path) -> None:
    ps = app(
        tmp_path,
        """\
    allow:
      - name: mixed
        any:
          - {public: true, path: /docs}
          - {method: [GET]}
""",
    )
    assert decide(ps, path="/docs/x") == (True, "allowed:mixed")
    assert decide(ps, path="/other") == (False, "unauthenticated")
    assert decide(ps, path="/other", identity=caller()) == (True, "allowed:mixed")


# -- properties over generated rule trees ----------------------------------------------
LEAVES: list[Criterion] = [
    Public(),
    Authenticated(True),
    Authenticated(False),
    MethodIn(frozenset({"GET"})),
    IdentitySetAny("groups", "groups", frozenset({"eng"}), frozenset({"groups"})),
    IdentitySetAny("scope", "scopes", frozenset({"read"}), frozenset({"scope"})),
    SourceIp((ipaddress.ip_network("10.0.0.0/8"),)),
    PathMatch("/docs", None),
]


def trees(leaves: list[Criterion]) -> st.SearchStrategy[Criterion]:
    return st.recursive(
        st.sampled_from(leaves),
        lambda kids: st.one_of(
            st.lists(kids, min_size=1, max_size=3).map(lambda k: All(tuple(k))),
            st.lists(kids, min_size=1, max_size=3).map(lambda k: AnyOf(tuple(k))),
            kids.map(Not),
        ),
        max_leaves=6,
    )


def rules(
    effect: str, tree_strategy: st.SearchStrategy[Criterion], mode: str = "enforce"
) -> st.SearchStrategy[tuple[Rule, ...]]:
    return st.lists(tree_strategy, max_size=3).map(
        lambda ts: tuple(
            Rule(f"{effect}-{mode}-{i}", effect, t, "t:1", mode)  # type: ignore[arg-type]
            for i, t in enumerate(ts)
        )
    )


CALLERS = st.sampled_from(
    [None, caller(), caller(groups=("eng",)), caller(scopes=("read",), groups=("ops",))]
)
REQUESTS = st.sampled_from(
    [facts("/docs/a"), facts("/x", method="POST"), facts("/x", client_ip="10.1.1.1")]
)
PS = PolicySet((), "v1")


def route_with(allow: tuple[Rule, ...], deny: tuple[Rule, ...]) -> Route:
    return Route(name="r", backend="b", source="t:1", path_prefix="/", allow=allow, deny=deny)


@settings(max_examples=300, deadline=None)
@given(
    rules("allow", trees([x for x in LEAVES if not isinstance(x, Public)])),
    rules("deny", trees(LEAVES)),
    REQUESTS,
)
def test_without_public_no_anonymous_caller_is_ever_admitted(
    allow: tuple[Rule, ...], deny: tuple[Rule, ...], request: RequestFacts
) -> None:
    decision = PS.decide(route_with(allow, deny), request, None, 0.0)
    assert not decision.allowed
    assert decision.reason == "unauthenticated" or decision.reason.startswith("denied:")


@settings(max_examples=300, deadline=None)
@given(
    rules("allow", trees(LEAVES)),
    rules("deny", trees(LEAVES)),
    rules("deny", trees(LEAVES)),
    CALLERS,
    REQUESTS,
)
def test_adding_deny_rules_never_widens_access(
    allow: tuple[Rule, ...],
    deny: tuple[Rule, ...],
    more: tuple[Rule, ...],
    identity: Identity | None,
    request: RequestFacts,
) -> None:
    before = PS.decide(route_with(allow, deny), request, identity, 0.0)
    after = PS.decide(route_with(allow, deny + more), request, identity, 0.0)
    assert before.allowed or not after.allowed


@settings(max_examples=300, deadline=None)
@given(
    rules("allow", trees(LEAVES)),
    rules("deny", trees(LEAVES)),
    rules("allow", trees(LEAVES), "audit"),
    rules("deny", trees(LEAVES), "audit"),
    CALLERS,
    REQUESTS,
)
def test_audit_rules_never_change_the_outcome(
    allow: tuple[Rule, ...],
    deny: tuple[Rule, ...],
    audit_allow: tuple[Rule, ...],
    audit_deny: tuple[Rule, ...],
    identity: Identity | None,
    request: RequestFacts,
) -> None:
    plain = PS.decide(route_with(allow, deny), request, identity, 0.0)
    dry = PS.decide(route_with(audit_allow + allow, audit_deny + deny), request, identity, 0.0)
    assert (dry.allowed, dry.reason) == (plain.allowed, plain.reason)


# -- claims that were not received (Identity.unknown_claims) --------------------------
DROPPED_GROUPS = caller(groups=(), unknown_claims=("groups",))


def test_a_deny_rule_on_a_claim_not_received_fails_closed_with_its_own_reason(
    tmp_path: Path,
) -> None:
    ps = app(
        tmp_path,
        """\
    deny:
      - {name: no-interns, groups: [interns]}
    allow:
      - {name: signed-in, authenticated: true}
""",
    )
    assert decide(ps, identity=DROPPED_GROUPS) == (False, "unknown_claims:no-interns")
    assert decide(ps, identity=caller(groups=("staff",))) == (True, "allowed:signed-in")
    # Without identity a deny rule about the caller still does not decide (unchanged).
    assert decide(ps) == (False, "unauthenticated")


def test_an_unknown_claim_is_not_decisive_when_the_rest_of_the_rule_already_decides(
    tmp_path: Path,
) -> None:
    ps = app(
        tmp_path,
        """\
    deny:
      - {name: interns-writing, groups: [interns], method: [POST]}
    allow:
      - {name: signed-in, authenticated: true}
""",
    )
    assert decide(ps, identity=DROPPED_GROUPS) == (True, "allowed:signed-in")  # a GET
    assert decide(ps, identity=DROPPED_GROUPS, method="POST") == (
        False,
        "unknown_claims:interns-writing",
    )


def test_not_of_an_unknown_claim_stays_unknown_and_fails_closed(tmp_path: Path) -> None:
    ps = app(
        tmp_path,
        """\
    deny:
      - {name: staff-only, not: {groups: [staff]}}
    allow:
      - {name: signed-in, authenticated: true}
""",
    )
    assert decide(ps, identity=DROPPED_GROUPS) == (False, "unknown_claims:staff-only")


def test_an_allow_rule_on_a_claim_not_received_admits_no_one_and_says_why(
    tmp_path: Path,
) -> None:
    ps = app(tmp_path, "    allow:\n      - {name: admins, groups: [admins]}\n")
    assert decide(ps, identity=DROPPED_GROUPS) == (False, "unknown_claims:admins")
    assert decide(ps, identity=caller()) == (False, "no_rule_matched")


def test_an_audit_deny_rule_on_a_claim_not_received_reports_it_would_fail_closed(
    tmp_path: Path,
) -> None:
    ps = app(
        tmp_path,
        """\
    deny:
      - {name: future-deny, mode: audit, groups: [interns]}
    allow:
      - {name: signed-in, authenticated: true}
""",
    )
    d = ps.decide(ps.routes[0], facts(), DROPPED_GROUPS, 0.0)
    assert (d.allowed, d.reason, d.audit) == (
        True,
        "allowed:signed-in",
        ("unknown_claims:future-deny",),
    )


def test_explain_names_the_claims_that_were_not_received(tmp_path: Path) -> None:
    ps = app(tmp_path, "    deny:\n      - {name: no-interns, groups: [interns]}\n")
    text = "\n".join(ps.explain(facts(), DROPPED_GROUPS, 0.0).lines())
    assert "deny no-interns" in text and "unknown (claims not received: groups)" in text
    assert "decision: deny (unknown_claims:no-interns)" in text


GROUPS = ("eng", "interns", "staff")


@settings(max_examples=300, deadline=None)
@given(
    rules("allow", trees(LEAVES)),
    rules("deny", trees(LEAVES)),
    st.sets(st.sampled_from(GROUPS)),
    REQUESTS,
)
def test_unknown_groups_never_admit_a_caller_whom_some_actual_groups_would_refuse(
    allow: tuple[Rule, ...], deny: tuple[Rule, ...], actual: set[str], request: RequestFacts
) -> None:
    route = route_with(allow, deny)
    dropped = caller(groups=(), unknown_claims=("groups",))
    if PS.decide(route, request, dropped, 0.0).allowed:
        assert PS.decide(route, request, caller(groups=tuple(actual)), 0.0).allowed


# -- named audit rules cited inside any/all/not -----------------------------------------
CITED = """\
rules:
  guests-dry: {mode: audit, groups: [guests]}
  mfa-dry: {mode: audit, mfa: true}
  office-dry: {mode: audit, source_ip: [10.0.0.0/8]}
routes:
  - name: app
    path: /
    backend: b
"""


def cited(tmp_path: Path, rules_text: str) -> PolicySet:
    return policy(tmp_path, CITED + rules_text)


def test_an_audit_alternative_in_any_admits_no_one_and_reports_it_would(tmp_path: Path) -> None:
    ps = cited(
        tmp_path, "    allow:\n      - {name: staff, any: [{groups: [staff]}, guests-dry]}\n"
    )
    route = ps.routes[0]
    guest = ps.decide(route, facts(), caller(groups=("guests",)), 0.0)
    assert (guest.allowed, guest.reason, guest.audit) == (
        False,
        "no_rule_matched",
        ("allowed:staff",),
    )
    staff = ps.decide(route, facts(), caller(groups=("staff",)), 0.0)
    assert (staff.allowed, staff.reason, staff.audit) == (True, "allowed:staff", ())


def test_an_audit_requirement_in_all_restricts_no_one_and_reports_whom_it_would(
    tmp_path: Path,
) -> None:
    ps = cited(tmp_path, "    allow:\n      - {name: admins, all: [{groups: [admins]}, mfa-dry]}\n")
    route = ps.routes[0]
    no_mfa = ps.decide(route, facts(), caller(groups=("admins",)), 0.0)
    assert (no_mfa.allowed, no_mfa.reason, no_mfa.audit) == (
        True,
        "allowed:admins",
        ("not_allowed:admins",),
    )
    with_mfa = caller(groups=("admins",), claims={"amr": ["mfa"]})
    assert ps.decide(route, facts(), with_mfa, 0.0).audit == ()


def test_an_audit_alternative_in_a_deny_rule_denies_no_one_and_reports_whom_it_would(
    tmp_path: Path,
) -> None:
    ps = cited(
        tmp_path,
        """\
    deny:
      - {name: outsiders, any: [{groups: [interns]}, guests-dry]}
    allow:
      - {name: signed-in, authenticated: true}
""",
    )
    route = ps.routes[0]
    guest = ps.decide(route, facts(), caller(groups=("guests",)), 0.0)
    assert (guest.allowed, guest.reason, guest.audit) == (
        True,
        "allowed:signed-in",
        ("denied:outsiders",),
    )
    intern = ps.decide(route, facts(), caller(groups=("interns",)), 0.0)
    assert (intern.allowed, intern.reason, intern.audit) == (False, "denied:outsiders", ())


def test_an_audit_condition_is_left_out_of_the_enforced_rule_even_under_not(
    tmp_path: Path,
) -> None:
    # "As if not written there": the deny keeps its other condition, so it denies
    # every POST, and reports where the audit condition would have spared one.
    ps = cited(
        tmp_path,
        """\
    deny:
      - {name: outside-writes, all: [{method: [POST]}, {not: office-dry}]}
    allow:
      - {name: signed-in, authenticated: true}
""",
    )
    route = ps.routes[0]
    inside = ps.decide(route, facts(method="POST", client_ip="10.1.1.1"), caller(), 0.0)
    assert (inside.allowed, inside.reason, inside.audit) == (
        False,
        "denied:outside-writes",
        ("not_denied:outside-writes",),
    )
    outside = ps.decide(route, facts(method="POST", client_ip="192.0.2.1"), caller(), 0.0)
    assert (outside.allowed, outside.audit) == (False, ())
    assert ps.decide(route, facts(), caller(), 0.0).allowed


def test_a_rule_made_only_of_audit_rules_is_an_audit_rule(tmp_path: Path) -> None:
    ps = cited(tmp_path, "    allow:\n      - {name: guests, any: [guests-dry]}\n")
    (rule,) = ps.routes[0].allow
    assert rule.mode == "audit"
    d = ps.decide(ps.routes[0], facts(), caller(groups=("guests",)), 0.0)
    assert (d.allowed, d.reason, d.audit) == (False, "no_rule_matched", ("allowed:guests",))


def test_audit_mode_holds_through_an_enforced_named_rule_that_cites_it(tmp_path: Path) -> None:
    ps = policy(
        tmp_path,
        """\
rules:
  guests-dry: {mode: audit, groups: [guests]}
  readers: {any: [{groups: [readers]}, guests-dry]}
routes:
  - name: app
    path: /
    backend: b
    allow: [readers]
""",
    )
    d = ps.decide(ps.routes[0], facts(), caller(groups=("guests",)), 0.0)
    assert (d.allowed, d.reason, d.audit) == (False, "no_rule_matched", ("allowed:readers",))
    assert decide(ps, identity=caller(groups=("readers",))) == (True, "allowed:readers")


def test_explain_shows_the_rule_as_written_with_the_audit_part_marked(tmp_path: Path) -> None:
    ps = cited(
        tmp_path, "    allow:\n      - {name: staff, any: [{groups: [staff]}, guests-dry]}\n"
    )
    text = "\n".join(ps.explain(facts(), caller(groups=("guests",)), 0.0).lines())
    assert "allow staff (" in text and "): no match" in text
    assert "rule guests-dry [audit: not enforced]: match" in text
    assert "audit-mode rules that fired: allowed:staff" in text


AUDIT_LEAVES = [
    "{groups: [eng]}",
    "{scope: [read]}",
    "{method: [GET]}",
    "{source_ip: [10.0.0.0/8]}",
    "{authenticated: true}",
    "{public: true}",
    "{path: /docs}",
]


def yaml_trees() -> st.SearchStrategy[str]:
    """Rule bodies as YAML flow text; `dry` cites the named audit rule."""
    return st.recursive(
        st.sampled_from([*AUDIT_LEAVES, "dry"]),
        lambda kids: st.one_of(
            st.lists(kids, min_size=1, max_size=3).map(lambda k: "{all: [" + ", ".join(k) + "]}"),
            st.lists(kids, min_size=1, max_size=3).map(lambda k: "{any: [" + ", ".join(k) + "]}"),
            kids.map(lambda k: "{not: " + k + "}"),
        ),
        max_leaves=6,
    )


def with_dry(body: str, allow: list[str], deny: list[str]) -> PolicySet:
    lines = [f"rules:\n  dry: {{mode: audit, {body[1:-1]}}}", "routes:", "  - name: r"]
    lines += ["    path: /", "    backend: b", "    allow:"]
    lines += [f"      - {{name: a{i}, all: [{tree}]}}" for i, tree in enumerate(allow)] or ["[]"]
    lines += ["    deny:"]
    lines += [f"      - {{name: d{i}, all: [{tree}]}}" for i, tree in enumerate(deny)] or ["[]"]
    text = "\n".join(lines).replace("allow:\n[]", "allow: []").replace("deny:\n[]", "deny: []")
    with tempfile.TemporaryDirectory() as directory:
        (Path(directory) / "p.yaml").write_text(text + "\n", encoding="utf-8")
        return load_policies(Path(directory))


@settings(max_examples=150, deadline=None)
@given(
    st.lists(yaml_trees(), max_size=3),
    st.lists(yaml_trees(), max_size=2),
    st.sampled_from(AUDIT_LEAVES),
    st.sampled_from(AUDIT_LEAVES),
    CALLERS,
    REQUESTS,
)
def test_what_a_cited_audit_rule_says_never_changes_the_enforced_decision(
    allow: list[str],
    deny: list[str],
    one: str,
    other: str,
    identity: Identity | None,
    request: RequestFacts,
) -> None:
    first = with_dry(one, allow, deny)
    second = with_dry(other, allow, deny)
    a = first.decide(first.routes[0], request, identity, 0.0)
    b = second.decide(second.routes[0], request, identity, 0.0)
    assert (a.allowed, a.reason) == (b.allowed, b.reason)


def test_the_policy_lists_every_claim_it_reads_so_sessions_can_keep_them(tmp_path: Path) -> None:
    ps = policy(
        tmp_path,
        """\
rules:
  dry: {mode: audit, claim: {path: org.unit, is: data}}
routes:
  - name: a
    path: /a
    backend: b
    pass_claims: {claims: [department, tid]}
    deny:
      - {name: d, claim: [{path: 'https://x.io/role', is: guest}, {path: tenant, exists: true}]}
    allow:
      - {name: admins, all: [{groups: [admins]}, {mfa: {acr: [loa2]}}, dry]}
  - name: b
    path: /b
    backend: b
    allow:
      - {name: readers, any: [{scope: [read]}, {email_domain: [example.com]}, {mfa: true}]}
      - {name: dry-only, mode: audit, claim: {path: cost_center, exists: true}}
""",
    )
    assert ps.referenced_claims == frozenset(
        {
            "department",
            "tid",
            "https://x.io/role",
            "tenant",
            "groups",
            "acr",
            "org.unit",
            "scope",
            "scp",
            "email",
            "email_verified",
            "amr",
            "cost_center",
        }
    )
    assert policy(tmp_path, "routes:\n  - {name: p, path: /, backend: b}\n").referenced_claims == (
        frozenset()
    )


# Leaves that ignore the caller, so routes that need no identity come up often.
ANONYMOUS_LEAVES = [leaf for leaf in LEAVES if not leaf.reads_caller]
ANYONE = Rule("anyone", "allow", Public(), "t:1")


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        rules("allow", trees(LEAVES)),
        rules("allow", trees(ANONYMOUS_LEAVES)).map(lambda r: (*r, ANYONE)),
    ),
    st.one_of(rules("deny", trees(LEAVES)), rules("deny", trees(ANONYMOUS_LEAVES))),
    rules("allow", trees(LEAVES), "audit"),
    st.sampled_from([caller(), caller(groups=("eng",)), caller(scopes=("read",))]),
    REQUESTS,
)
def test_a_route_that_does_not_use_identity_decides_alike_with_and_without_one(
    allow: tuple[Rule, ...],
    deny: tuple[Rule, ...],
    audit: tuple[Rule, ...],
    identity: Identity,
    request: RequestFacts,
) -> None:
    route = route_with(audit + allow, deny)
    if not reads_caller(route.allow, route.deny):
        anonymous = PS.decide(route, request, None, 0.0)
        identified = PS.decide(route, request, identity, 0.0)
        assert (anonymous.allowed, anonymous.reason) == (identified.allowed, identified.reason)


def test_a_request_rule_before_public_makes_the_route_use_identity() -> None:
    # With an identity `method: [GET]` admits first, without one `public` does:
    # the reasons would differ.
    public = Rule("p", "allow", Public(), "t:1")
    assert not reads_caller((public,), ())
    assert reads_caller((Rule("m", "allow", MethodIn(frozenset({"GET"})), "t:1"), public), ())
