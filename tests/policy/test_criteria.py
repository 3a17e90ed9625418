"""Every rule criterion, loaded from YAML and evaluated on plain request data."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from proxy.http.facts import RequestFacts
from proxy.identity.model import Identity
from tests.policy.support import caller, cert, facts, policy

SOMEONE = caller("someone")


def holds(
    tmp_path: Path,
    criteria: str,
    identity: Identity | None = SOMEONE,
    request: RequestFacts | None = None,
    now: float = 0.0,
) -> bool:
    ps = policy(
        tmp_path,
        f"routes:\n  - name: app\n    path: /\n    backend: b\n    allow:\n"
        f"      - {{name: r, {criteria}}}\n",
    )
    return ps.decide(ps.routes[0], request or facts(), identity, now).allowed


def test_authenticated(tmp_path: Path) -> None:
    assert holds(tmp_path, "authenticated: true", caller())
    assert not holds(tmp_path, "authenticated: true", None)
    # `authenticated: false` never admits by itself (public is never implied) ...
    assert not holds(tmp_path, "authenticated: false", None)
    assert not holds(tmp_path, "authenticated: false", caller())
    # ... but it can deny anonymous callers where the route is otherwise public.
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


def test_subject_issuer_and_auth_method(tmp_path: Path) -> None:
    assert holds(tmp_path, "subject: [alice, bob]", caller("bob"))
    assert not holds(tmp_path, "subject: alice", caller("Alice"))
    assert holds(tmp_path, "issuer: [https://idp.example.com]", caller())
    assert not holds(tmp_path, "issuer: [https://idp.example.com/]", caller())
    assert holds(tmp_path, "auth_method: [apikey, mtls]", caller(method="apikey"))
    assert not holds(tmp_path, "auth_method: [apikey]", caller(method="jwt"))


def test_email_is_case_insensitive_and_exact(tmp_path: Path) -> None:
    assert holds(tmp_path, "email: [Alice@Example.com]", caller(email="alice@EXAMPLE.com"))
    assert not holds(tmp_path, "email: [alice@example.com]", caller(email="alice@example.co"))
    assert not holds(tmp_path, "email: [alice@example.com]", caller())


@pytest.mark.parametrize(
    ("domains", "email", "expected"),
    [
        ("[example.com]", "a@example.com", True),
        ("[example.com]", "a@EXAMPLE.com", True),
        ("[example.com]", "a@badexample.com", False),
        ("[example.com]", "a@sub.example.com", False),
        ("[example.com]", "a@evil.com@example.com", False),
        ("[example.com]", "@example.com", False),
        ("['*.example.com']", "a@sub.example.com", True),
        ("['*.example.com']", "a@example.com", False),
        ("['*.example.com']", "a@subexample.com", False),
    ],
)
def test_email_domain(tmp_path: Path, domains: str, email: str, expected: bool) -> None:
    assert holds(tmp_path, f"email_domain: {domains}", caller(email=email)) is expected


def test_groups_and_scope_hold_when_any_listed_value_is_present(tmp_path: Path) -> None:
    assert holds(tmp_path, "groups: [a, b]", caller(groups=("b", "z")))
    assert not holds(tmp_path, "groups: [a, b]", caller(groups=("A",)))
    assert holds(tmp_path, "scope: [orders:write]", caller(scopes=("orders:read", "orders:write")))
    assert not holds(tmp_path, "scope: [orders:write]", caller(scopes=("orders:read",)))


@pytest.mark.parametrize(
    ("claim", "claims", "expected"),
    [
        ("{path: dept, is: eng}", {"dept": "eng"}, True),
        ("{path: dept, is: eng}", {"dept": "Eng"}, False),
        ("{path: level, is: 1}", {"level": 1}, True),
        ("{path: level, is: 1}", {"level": "1"}, False),
        ("{path: level, is: 1}", {"level": True}, False),
        ("{path: ok, is: true}", {"ok": True}, True),
        ("{path: ok, is: true}", {"ok": "true"}, False),
        ("{path: org.unit.name, is: data}", {"org": {"unit": {"name": "data"}}}, True),
        ("{path: org.unit.name, is: data}", {"org": {"unit": "data"}}, False),
        ("{path: 'https://x.io/role', is: admin}", {"https://x.io/role": "admin"}, True),
        ("{path: dept, in: [eng, ops]}", {"dept": "ops"}, True),
        ("{path: dept, in: [eng, ops]}", {"dept": "sales"}, False),
        ("{path: client, starts_with: svc-}", {"client": "svc-a"}, True),
        ("{path: client, starts_with: svc-}", {"client": "x-svc-a"}, False),
        ("{path: client, ends_with: -prod}", {"client": "a-prod"}, True),
        ("{path: client, contains: mid}", {"client": "amidb"}, True),
        ("{path: client, contains: mid}", {"client": 5}, False),
        ("{path: roles, contains: admin}", {"roles": ["user", "admin"]}, True),
        ("{path: roles, contains: adm}", {"roles": ["user", "admin"]}, False),
        ("{path: roles, is: admin}", {"roles": ["user", "admin"]}, True),
        ("{path: roles, starts_with: ad}", {"roles": ["user", "admin"]}, True),
        ("{path: tenant, exists: true}", {"tenant": None}, True),
        ("{path: tenant, exists: true}", {}, False),
        ("{path: tenant, exists: false}", {}, True),
        ("{path: missing, is: x}", {}, False),
    ],
)
def test_claim_matchers(tmp_path: Path, claim: str, claims: dict[str, Any], expected: bool) -> None:
    assert holds(tmp_path, f"claim: {claim}", caller(claims=claims)) is expected


def test_a_list_of_claims_must_all_hold(tmp_path: Path) -> None:
    rule = "claim: [{path: a, is: x}, {path: b, is: y}]"
    assert holds(tmp_path, rule, caller(claims={"a": "x", "b": "y"}))
    assert not holds(tmp_path, rule, caller(claims={"a": "x", "b": "z"}))


def test_caller_criteria_never_hold_without_an_identity(tmp_path: Path) -> None:
    for rule in ["subject: [a]", "claim: {path: a, exists: false}", "mfa: true", "groups: [g]"]:
        assert not holds(tmp_path, rule, None)


def test_client_cert_by_san_or_fingerprint(tmp_path: Path) -> None:
    fp = "AB:" * 31 + "AB"
    mtls = caller("spiffe://ex/a", method="mtls")
    rule = f"client_cert: {{san: [spiffe://ex/a, svc.example.com], fingerprint: ['{fp}']}}"
    assert holds(
        tmp_path, rule, mtls, facts(client_cert=cert(uris=("spiffe://ex/a",), fp="00" * 32))
    )
    assert holds(
        tmp_path, rule, mtls, facts(client_cert=cert(dns=("svc.example.com",), fp="00" * 32))
    )
    assert holds(tmp_path, rule, mtls, request=facts(client_cert=cert(fp="ab" * 32)))
    assert not holds(
        tmp_path, rule, mtls, facts(client_cert=cert(uris=("spiffe://ex/b",), fp="00" * 32))
    )
    assert not holds(tmp_path, rule, mtls, request=facts())


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


def test_method_criterion(tmp_path: Path) -> None:
    assert holds(tmp_path, "method: [get, head]", request=facts(method="HEAD"))
    assert not holds(tmp_path, "method: [GET]", request=facts(method="POST"))


@pytest.mark.parametrize(
    ("rule", "path", "expected"),
    [
        ("path: /reports", "/reports/q3", True),
        ("path: /reports", "/reports", True),
        ("path: /reports", "/reportsx", False),
        ("path: {regex: '/v[0-9]+/items'}", "/v2/items", True),
        ("path: {regex: '/v[0-9]+/items'}", "/v2/items/x", False),
        ("path: {ends_with: .csv}", "/a/b.csv", True),
        ("path: {in: [/a, /b]}", "/b", True),
    ],
)
def test_path_criterion(tmp_path: Path, rule: str, path: str, expected: bool) -> None:
    assert holds(tmp_path, rule, request=facts(path=path)) is expected


def at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


@pytest.mark.parametrize(
    ("instant", "expected"),
    [
        ("2026-11-23T09:00:00+01:00", True),  # Monday 09:00 Berlin
        ("2026-11-23T08:59:00+01:00", False),
        ("2026-11-23T17:00:00+01:00", False),  # end is exclusive
        ("2026-11-23T08:30:00+00:00", True),  # 09:30 in Berlin
        ("2026-11-21T10:00:00+01:00", False),  # Saturday
        ("2026-07-20T16:30:00+02:00", True),  # summer time
    ],
)
def test_time_window_in_a_named_zone(tmp_path: Path, instant: str, expected: bool) -> None:
    rule = "time: {weekdays: [mon-fri], hours: '09:00-17:00', tz: Europe/Berlin}"
    assert holds(tmp_path, rule, now=at(instant)) is expected


@pytest.mark.parametrize(
    ("instant", "expected"),
    [
        ("2026-11-27T23:00:00", True),  # Friday night
        ("2026-11-28T05:59:00", True),  # early Saturday belongs to Friday's shift
        ("2026-11-28T23:00:00", False),  # Saturday night
        ("2026-11-23T05:00:00", False),  # early Monday belongs to Sunday
        ("2026-11-24T12:00:00", False),
    ],
)
def test_time_window_wrapping_past_midnight(tmp_path: Path, instant: str, expected: bool) -> None:
    rule = "time: {weekdays: [mon-fri], hours: '22:00-06:00', tz: UTC}"
    now = datetime.fromisoformat(instant).replace(tzinfo=ZoneInfo("UTC")).timestamp()
    assert holds(tmp_path, rule, now=now) is expected


def test_weekday_ranges_wrap_around_the_week(tmp_path: Path) -> None:
    rule = "time: {weekdays: [fri-mon]}"
    assert holds(tmp_path, rule, now=at("2026-11-22T12:00:00+00:00"))  # Sunday
    assert not holds(tmp_path, rule, now=at("2026-11-25T12:00:00+00:00"))  # Wednesday


def test_mfa_from_amr_or_acr(tmp_path: Path) -> None:
    assert holds(tmp_path, "mfa: true", caller(claims={"amr": ["pwd", "mfa"]}))
    assert not holds(tmp_path, "mfa: true", caller(claims={"amr": ["pwd"]}))
    assert not holds(tmp_path, "mfa: true", caller(claims={"amr": "mfa"}))
    rule = "mfa: {amr: [hwk, otp], acr: [urn:example:loa:2]}"
    assert holds(tmp_path, rule, caller(claims={"amr": ["otp"]}))
    assert holds(tmp_path, rule, caller(claims={"acr": "urn:example:loa:2"}))
    assert not holds(tmp_path, rule, caller(claims={"acr": "urn:example:loa:1"}))
