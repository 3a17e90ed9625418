"""``gatehouse policy check|explain|test``: policy tooling for operators' own CI.

Exit codes: 0 fine, 1 a test expectation failed (or, with ``check --strict``,
there are warnings), 2 the policy (or a fixture file) has errors, printed as
``file:line: message``.

Fixture files (``gatehouse policy test``) are YAML lists of cases::

    - name: airflow may post a batch
      request:
        method: POST
        url: https://orders-api.example.com/v1/batches?dry_run=1
        source_ip: 10.20.0.7            # the trusted client address (default 127.0.0.1)
        headers: {Content-Type: application/json}
        time: "2026-11-23T10:00:00+01:00"   # optional; default: now
        client_cert: {san_uris: [...], san_dns: [...], fingerprint: HEX}  # optional
      identity:                         # or null for an anonymous caller
        subject: airflow-prod
        issuer: https://login.example.com
        method: jwt                     # jwt | opaque | session | apikey | mtls
        email: ...
        email_verified: true            # default: from the claims' email_verified
        groups: [...]
        scopes: [orders:write]
        claims: {azp: airflow-prod}
        unknown_claims: [groups]        # optional: claims not received (criteria on them: unknown)
        grants: [prod-writers]          # optional: approved grants held for these rules
      expect:
        decision: allow                 # allow | deny
        reason: allowed:airflow-writes  # optional
        route: airflow-batches          # optional; null expects no route
        audit: []                       # optional: reasons of audit-mode rules that fired

The URL goes through the proxy's own canonicalisation, so a case can pin
that ``/public/../admin`` is judged as ``/admin`` (or rejected).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit
from xml.etree import ElementTree

import yaml

from proxy.config.reader import (
    ConfigError,
    Doc,
    Mapping,
    Problems,
    each_mapping,
    load_document,
)
from proxy.errors import GatehouseError, RequestRejected
from proxy.http.canonical import canonicalise_target
from proxy.http.host import normalise_host
from proxy.identity.config import IdentityConfig, IssuerConfig
from proxy.identity.jwt_verify import email_verified
from proxy.identity.jwt_verify import identity_from_claims as mapped_identity
from proxy.model import AuthMethod, ClientCertificate, HeldGrant, Identity, RequestFacts
from proxy.policy.check import check_policies
from proxy.policy.criteria.auth_method import AUTH_METHODS
from proxy.policy.criteria.base import describe_tree
from proxy.policy.criteria.operand import plain_value
from proxy.policy.evaluate import Explanation, PolicySet
from proxy.policy.load import load_policies

DEFAULT_POLICIES = Path("policies")


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    policy = subparsers.add_parser("policy", help="check, explain and test policy files")
    sub = policy.add_subparsers(dest="policy_command", required=True)

    check = sub.add_parser("check", help="validate policy files and warn about risky rules")
    check.add_argument("files", nargs="*", type=Path, help="files or directories")
    check.add_argument("--config", type=Path, help="gatehouse config: backends and policy dir")
    check.add_argument("--backends", help="comma-separated backend names that must exist")
    check.add_argument("--strict", action="store_true", help="exit 1 when there are warnings")
    check.add_argument("--json", action="store_true", help="print the result as JSON")
    check.set_defaults(func=cmd_check)

    explain = sub.add_parser("explain", help="show how one request would be decided")
    explain.add_argument("--method", default="GET", help="HTTP method (default GET)")
    explain.add_argument("--url", required=True, help="https://host/path?query or /path")
    who = explain.add_mutually_exclusive_group(required=True)
    who.add_argument("--claims", type=Path, help="JSON or YAML file with the caller's claims")
    who.add_argument("--token", help="a JWT; its payload is decoded WITHOUT verification")
    who.add_argument("--anonymous", action="store_true", help="a caller without identity")
    explain.add_argument(
        "--auth-method",
        default="jwt",
        choices=AUTH_METHODS,
        help="how the caller authenticated (default jwt)",
    )
    explain.add_argument(
        "--source-ip", default="127.0.0.1", help="the trusted client address (default 127.0.0.1)"
    )
    explain.add_argument(
        "--config",
        type=Path,
        help="gatehouse config: its policy directory, and its issuers' claim mappings "
        "for --token/--claims (as the proxy would map them)",
    )
    explain.add_argument(
        "--policies",
        type=Path,
        help=f"policy directory (default: the one --config names, else ./{DEFAULT_POLICIES})",
    )
    explain.add_argument("--time", help="ISO 8601 instant to evaluate time rules at")
    explain.add_argument("--json", action="store_true", help="print the explanation as JSON")
    explain.add_argument(
        "--grant",
        action="append",
        default=[],
        metavar="RULE",
        help="the caller holds an approved grant for RULE on the matched route (repeatable)",
    )
    explain.set_defaults(func=cmd_explain)

    test = sub.add_parser("test", help="run policy fixture files")
    test.add_argument("files", nargs="+", type=Path, help="fixture files (YAML lists of cases)")
    test.add_argument(
        "--policies",
        type=Path,
        help="policy directory (default: the parent of a fixture's tests/ directory, "
        "else ./policies)",
    )
    test.add_argument("--json", action="store_true", help="print the results as JSON")
    test.add_argument(
        "--junit", type=Path, metavar="FILE", help="also write the results as JUnit XML to FILE"
    )
    test.set_defaults(func=cmd_test)


def _print_problems(exc: ConfigError, as_json: bool = False) -> int:
    if as_json:
        _print_json({"ok": False, "problems": _problems_json(exc)})
        return 2
    for problem in exc.problems:
        print(problem)
    return 2


def _problems_json(exc: ConfigError) -> list[dict[str, object]]:
    return [{"file": p.file, "line": p.line, "message": p.message} for p in exc.problems]


def _print_json(value: object) -> None:
    print(json.dumps(value, indent=2))


# -- check ----------------------------------------------------------------------
def cmd_check(args: argparse.Namespace) -> int:
    files: list[Path] = list(args.files)
    backends: set[str] | None = None
    sources: list[str] = []
    if args.config is not None:
        try:
            config_paths, backends, sources = config_context(args.config)
        except ConfigError as exc:
            return _print_problems(exc, args.json)
        files = files or config_paths
    if args.backends:
        backends = {b.strip() for b in args.backends.split(",") if b.strip()}
    try:
        policy = load_policies(files or [DEFAULT_POLICIES], backends)
    except ConfigError as exc:
        return _print_problems(exc, args.json)
    findings = check_policies(policy, sources)
    if args.json:
        _print_json(
            {
                "ok": True,
                "routes": len(policy.routes),
                "files": list(policy.files),
                "policy_version": policy.version,
                "warnings": [
                    {"source": f.source, "level": f.level, "message": f.message} for f in findings
                ],
            }
        )
        return 1 if findings and args.strict else 0
    for finding in findings:
        print(finding)
    print(
        f"ok: {len(policy.routes)} routes in {len(policy.files)} files, "
        f"policy version {policy.version}, {len(findings)} warnings"
    )
    return 1 if findings and args.strict else 0


def config_context(path: Path) -> tuple[list[Path], set[str], list[str]]:
    """Policy directory, backend names and identity sources from a gatehouse config."""
    from proxy.config.load import load_config  # the core's loader; imported on demand

    config = load_config(path)
    return [config.policy_dir], set(config.backends), identity_sources(config.identity)


def identity_sources(identity: IdentityConfig) -> list[str]:
    """Every configured way to become a caller, named for a warning."""
    issuers = {cfg.issuer for cfg in identity.issuers}
    sources = [
        f"issuer {cfg.issuer}" + (" (HS* shared secret)" if cfg.hs256_secret else "")
        for cfg in identity.issuers
    ]
    if identity.browser is not None and identity.browser.issuer not in issuers:
        sources.append(f"browser login at {identity.browser.issuer}")
    if identity.api_keys is not None:
        sources.append("API keys")
    if identity.mtls.enabled:
        sources.append("client certificates")
    return sources


# -- explain ----------------------------------------------------------------------
def cmd_explain(args: argparse.Namespace) -> int:
    issuers: dict[str, IssuerConfig] = {}
    policy_dir = args.policies or DEFAULT_POLICIES
    if args.config is not None:
        try:
            config = _load_config(args.config)
        except ConfigError as exc:
            return _print_problems(exc, args.json)
        issuers = {i.issuer: i for i in config.identity.issuers}
        policy_dir = args.policies or config.policy_dir
    try:
        policy = load_policies(policy_dir)
    except ConfigError as exc:
        return _print_problems(exc, args.json)
    notes: list[str] = []
    identity: Identity | None = None
    try:
        if args.claims is not None:
            claims = _load_claims(args.claims)
            identity = caller_identity(claims, args.auth_method, issuers, notes)
        elif args.token is not None:
            notes.append(
                "token signature NOT verified; its payload is decoded for explanation only"
            )
            claims = decode_unverified(args.token)
            identity = caller_identity(claims, args.auth_method, issuers, notes)
    except ValueError as exc:
        print(f"error: {exc}")
        return 2
    now = _instant(args.time) if args.time else time.time()
    if identity is not None and args.grant:
        identity = with_grants(identity, args.grant, now)
    try:
        facts = request_facts(args.method, args.url, args.source_ip, {})
    except RequestRejected as exc:
        if args.json:
            _print_json(
                {"rejected": {"status": exc.status, "reason": exc.reason, "detail": exc.detail}}
            )
            return 0
        print(f"request rejected before matching: {exc.status} {exc.reason} ({exc.detail})")
        return 0
    explanation = policy.explain(facts, identity, now)
    if args.json:
        document = explanation_json(explanation, facts, identity, notes)
        document["grants"] = grant_lines(explanation, identity, now)
        _print_json(document)
        return 0
    for note in notes:
        print(f"note: {note}")
    if identity is None:
        print("caller: anonymous")
    else:
        print(f"caller: {identity.subject} (issuer {identity.issuer}, {identity.method})")
    print(
        f"request: {facts.method} host={facts.host} path={facts.path} source_ip={facts.client_ip}"
    )
    for line in explanation.lines():
        print(line)
    for line in grant_lines(explanation, identity, now):
        print(line)
    return 0


def _load_config(path: Path) -> Any:
    from proxy.config.load import load_config  # the core's loader; imported on demand

    return load_config(path)


def caller_identity(
    claims: dict[str, Any], method: str, issuers: dict[str, IssuerConfig], notes: list[str]
) -> Identity:
    """The identity the proxy would build: with the issuer's claim mappings when known."""
    issuer = issuers.get(str(claims.get("iss", "")))
    if issuer is None:
        if issuers:
            notes.append(
                f"issuer {claims.get('iss')!r} is not in the configuration: the proxy would "
                "refuse this token (401); standard claims are used below"
            )
        return identity_from_claims(claims, method)
    try:
        return mapped_identity(claims, issuer, auth_method(method), None)
    except GatehouseError as exc:
        raise ValueError(
            f"the proxy would refuse this caller: {exc.detail or exc.reason}"
        ) from None


def explanation_json(
    explanation: Explanation, facts: RequestFacts, identity: Identity | None, notes: list[str]
) -> dict[str, Any]:
    decision = explanation.decision
    route = explanation.route
    return {
        "notes": notes,
        "caller": None
        if identity is None
        else {
            "subject": identity.subject,
            "issuer": identity.issuer,
            "method": identity.method,
            "email": identity.email,
            "groups": sorted(identity.groups),
            "scopes": sorted(identity.scopes),
        },
        "request": {
            "method": facts.method,
            "host": facts.host,
            "path": facts.path,
            "source_ip": facts.client_ip,
        },
        "route": None if route is None else {"name": route.name, "backend": route.backend},
        "rules": [
            {
                "effect": item.rule.effect,
                "name": item.rule.name,
                "mode": item.rule.mode,
                "source": item.rule.source,
                "outcome": explanation.text(item.outcome),
            }
            for item in explanation.rules
        ],
        "decision": {
            "decision": "allow" if decision.allowed else "deny",
            "reason": decision.reason,
            "route": decision.route,
            "audit": list(decision.audit),
            "policy_version": decision.policy_version,
        },
        "lines": explanation.lines(),
    }


def with_grants(identity: Identity, rules: list[str], now: float) -> Identity:
    """The caller holding an approved grant for each rule, in force from ``now``."""
    held = tuple(HeldGrant(f"stated:{rule}", rule, now, math.inf) for rule in rules)
    return dataclasses.replace(identity, grants=held)


def grant_lines(explanation: Explanation, identity: Identity | None, now: float) -> list[str]:
    """Whether the matched route's rules require a grant, and whether the caller holds one."""
    from proxy.grants.catalogue import route_grants

    route = explanation.route
    if route is None:
        return []
    out = []
    for spec in route_grants(route).values():
        held = None
        if identity is not None:
            held = next((g for g in identity.grants if g.rule == spec.rule and g.covers(now)), None)
        holding = f"held ({held.id})" if held is not None else "not held"
        out.append(
            f"grant: rule {spec.rule} requires an approved grant "
            f"(approvers: {describe_tree(spec.approvers)}); the caller's: {holding}"
        )
        if held is None:
            out.append(
                f"  request one: gatehouse access request {route.name} --rule {spec.rule} "
                f"--justification ..."
            )
    return out


def decode_unverified(token: str) -> dict[str, Any]:
    """A JWT's payload, NOT verified: for explaining a decision offline only."""
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise ValueError("not a JWT (expected three dot-separated parts)")
    try:
        raw = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        payload = json.loads(raw)
    except (binascii.Error, ValueError) as exc:
        # Never echo the token: it may be a live credential.
        raise ValueError("the token payload is not base64url-encoded JSON") from exc
    if not isinstance(payload, dict):
        raise ValueError("the token payload is not a JSON object")
    return payload


def _load_claims(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))  # JSON is YAML
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read claims file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"claims file {path} must hold a JSON/YAML object")
    return data


def identity_from_claims(claims: dict[str, Any], method: str = "jwt") -> Identity:
    """An identity from standard claims (sub, iss, email, groups, scope/scp).

    Offline approximation: a deployed issuer may map subject, email or groups
    from other claim paths.
    """
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise ValueError("claims have no 'sub'")
    groups = claims.get("groups", [])
    scope = claims.get("scope", claims.get("scp", ""))
    scopes = scope.split() if isinstance(scope, str) else list(scope)
    email = claims.get("email")
    return Identity(
        subject=subject,
        issuer=str(claims.get("iss", "")),
        method=auth_method(method),
        email=email if isinstance(email, str) else None,
        groups=frozenset(str(g) for g in groups) if isinstance(groups, list) else frozenset(),
        scopes=frozenset(str(s) for s in scopes),
        claims=claims,
        email_verified=claimed_email_verified(claims),
    )


def claimed_email_verified(claims: dict[str, Any]) -> bool | None:
    """What the identity carries from an issuer's ``email_verified`` claim."""
    return email_verified(claims.get("email_verified"))


def auth_method(value: str) -> AuthMethod:
    if value not in AUTH_METHODS:
        raise ValueError(f"unknown auth method {value!r}")
    return cast(AuthMethod, value)


def request_facts(
    method: str,
    url: str,
    source_ip: str,
    headers: dict[str, str],
    client_cert: ClientCertificate | None = None,
) -> RequestFacts:
    """Facts for a URL as the proxy would see them (canonical path, no query in matching)."""
    parts = urlsplit(url)
    target = (
        url
        if not parts.scheme
        else (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    )
    if parts.fragment or "#" in url:
        target += "#"  # let the canonicaliser reject it as the proxy would
    path, query = canonicalise_target(target)
    return RequestFacts(
        method=method.upper(),
        scheme=parts.scheme or "https",
        host=normalise_host(parts.netloc or "localhost"),
        path=path,
        query=query,
        client_ip=source_ip,
        headers={k.lower(): v for k, v in headers.items()},
        client_cert=client_cert,
    )


def _instant(value: object) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except ValueError as exc:
        raise ValueError(f"not an ISO 8601 time: {value!r}") from exc


# -- test -------------------------------------------------------------------------
class _Case:
    __slots__ = ("expect", "facts_error", "identity", "name", "now", "request", "source")

    def __init__(self) -> None:
        self.name = ""
        self.source = ""
        self.request: Callable[[], RequestFacts] = lambda: request_facts("GET", "/", "", {})
        self.identity: Identity | None = None
        self.now = 0.0
        self.expect: dict[str, Any] = {}


@dataclass(frozen=True, slots=True)
class CaseResult:
    name: str
    source: str
    file: Path
    problem: str | None  # None: passed
    explanation: tuple[str, ...]
    seconds: float


def cmd_test(args: argparse.Namespace) -> int:
    problems = Problems()
    suites: list[tuple[Path, list[_Case]]] = []
    for path in args.files:
        suites.append((path, parse_fixtures(path, problems)))
    try:
        problems.raise_if_any()
    except ConfigError as exc:
        return _print_problems(exc, args.json)
    loaded: dict[Path, PolicySet] = {}
    results: list[CaseResult] = []
    for path, cases in suites:
        policy_dir = args.policies or (
            path.parent.parent if path.parent.name == "tests" else DEFAULT_POLICIES
        )
        if policy_dir not in loaded:
            try:
                loaded[policy_dir] = load_policies(policy_dir)
            except ConfigError as exc:
                return _print_problems(exc, args.json)
        policy = loaded[policy_dir]
        for case in cases:
            started = time.perf_counter()
            problem, explanation = run_case(policy, case)
            lines = tuple(explanation.lines()) if explanation and problem else ()
            elapsed = time.perf_counter() - started
            results.append(CaseResult(case.name, case.source, path, problem, lines, elapsed))
    failures = sum(r.problem is not None for r in results)
    if args.junit is not None:
        write_junit(args.junit, results)
    if args.json:
        _print_json(
            {
                "passed": len(results) - failures,
                "failed": failures,
                "cases": [
                    {
                        "name": r.name,
                        "source": r.source,
                        "passed": r.problem is None,
                        "problem": r.problem,
                        "explanation": list(r.explanation),
                    }
                    for r in results
                ],
            }
        )
        return 1 if failures else 0
    for r in results:
        if r.problem is None:
            print(f"PASS {r.name}")
            continue
        print(f"FAIL {r.name} ({r.source}): {r.problem}")
        for line in r.explanation:
            print(f"    {line}")
    print(f"{len(results) - failures} passed, {failures} failed")
    return 1 if failures else 0


def write_junit(path: Path, results: list[CaseResult]) -> None:
    """JUnit XML as CI systems read it: one testsuite per fixture file."""
    root = ElementTree.Element("testsuites", name="gatehouse policy test")
    by_file: dict[Path, list[CaseResult]] = {}
    for r in results:
        by_file.setdefault(r.file, []).append(r)
    for file, cases in by_file.items():
        suite = ElementTree.SubElement(
            root,
            "testsuite",
            name=str(file),
            tests=str(len(cases)),
            failures=str(sum(c.problem is not None for c in cases)),
            errors="0",
            time=f"{sum(c.seconds for c in cases):.6f}",
        )
        for case in cases:
            element = ElementTree.SubElement(
                suite,
                "testcase",
                classname=str(file),
                name=case.name,
                file=case.source.rsplit(":", 1)[0],
                line=case.source.rsplit(":", 1)[-1],
                time=f"{case.seconds:.6f}",
            )
            if case.problem is not None:
                failure = ElementTree.SubElement(element, "failure", message=case.problem)
                failure.text = "\n".join(case.explanation)
    root.set("tests", str(len(results)))
    root.set("failures", str(sum(r.problem is not None for r in results)))
    ElementTree.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def run_case(policy: PolicySet, case: _Case) -> tuple[str | None, Explanation | None]:
    explanation: Explanation | None = None
    reason: str
    try:
        facts = case.request()
    except RequestRejected as exc:
        audit: tuple[str, ...] = ()
        allowed, reason, route = False, exc.reason, None
    else:
        explanation = policy.explain(facts, case.identity, case.now)
        decision = explanation.decision
        allowed, reason, route = decision.allowed, decision.reason, decision.route
        audit = decision.audit
    got: dict[str, object] = {
        "decision": "allow" if allowed else "deny",
        "reason": reason,
        "route": route,
        "audit": audit,
    }
    wrong = [k for k, v in case.expect.items() if got[k] != v]
    if not wrong:
        return None, explanation
    expected = ", ".join(f"{k}={case.expect[k]}" for k in wrong)
    actual = ", ".join(f"{k}={got[k]}" for k in wrong)
    return f"expected {expected}; got {actual}", explanation


def parse_fixtures(path: Path, problems: Problems) -> list[_Case]:
    doc, node = load_document(path, problems)
    if node is None:
        return []
    if not isinstance(node, yaml.SequenceNode):
        doc.error(node, "fixture file: expected a list of cases")
        return []
    return each_mapping(doc, list(node.value), "cases", lambda m, _: _case(doc, m))


def _case(doc: Doc, m: Mapping) -> _Case | None:
    case = _Case()
    case.name = m.text("name", "", required=True)
    case.source = f"{doc.path}:{m.line}"
    where = f"case '{case.name}'"
    req = m.mapping("request", required=True)
    if req is not None:
        req.where = f"{where}.request"
        _request(doc, req, case)
    id_node = m.node_of("identity")
    if id_node is not None and not (
        isinstance(id_node, yaml.ScalarNode) and plain_value(id_node) is None
    ):
        im = m.mapping("identity")
        case.identity = _identity(im) if im is not None else None
        if case.identity is not None and im is not None:
            rules = im.str_list("grants")
            if rules:
                case.identity = with_grants(case.identity, rules, case.now)
    elif not m.has("identity"):
        m.error(None, f"{where}: missing 'identity' (use 'identity: null' for an anonymous caller)")
    ex = m.mapping("expect", required=True)
    if ex is not None:
        ex.where = f"{where}.expect"
        case.expect = _expectations(ex)
    m.close(("identity",))
    return case


def _request(doc: Doc, req: Mapping, case: _Case) -> None:
    method = req.text("method", "GET")
    url = req.text("url", "/", required=True)
    source_ip = req.text("source_ip", "127.0.0.1")
    headers: dict[str, str] = {}
    hm = req.mapping("headers")
    if hm is not None:
        for key in list(hm.keys()):
            headers[key] = hm.text(key, "", required=True)
        hm.close()
    time_node = req.node_of("time")
    case.now = time.time()
    if time_node is not None:
        try:
            case.now = _instant(plain_value(time_node))
        except ValueError as exc:
            doc.error(time_node, f"{req.where}.time: {exc}")
    cert = _client_cert(req)
    req.close(("time",))
    case.request = lambda: request_facts(method, url, source_ip, headers, cert)


def _expectations(ex: Mapping) -> dict[str, Any]:
    expect: dict[str, Any] = {"decision": ex.choice("decision", ("allow", "deny"), "deny")}
    if not ex.has("decision"):
        ex.error(None, f"{ex.where}: missing required key 'decision'")
    if ex.has("reason"):
        expect["reason"] = ex.text("reason")
    if ex.has("route"):
        route_node = ex.node_of("route")
        expect["route"] = (
            None if route_node is not None and plain_value(route_node) is None else ex.text("route")
        )
    if ex.has("audit"):
        expect["audit"] = tuple(ex.str_list("audit"))
    ex.close(("route",))
    return expect


def _client_cert(req: Mapping) -> ClientCertificate | None:
    cm = req.mapping("client_cert")
    if cm is None:
        return None
    uris = cm.str_list("san_uris")
    dns = cm.str_list("san_dns")
    fingerprint = cm.text("fingerprint", "0" * 64)
    cm.close()
    return ClientCertificate(
        subject_cn=None,
        san_uris=tuple(uris),
        san_dns=tuple(dns),
        fingerprint_sha256=fingerprint.replace(":", "").lower(),
        der=b"",
    )


def _identity(im: Mapping) -> Identity | None:
    subject = im.text("subject", "", required=True)
    issuer = im.text("issuer", "https://issuer.example")
    method = im.choice("method", AUTH_METHODS, "jwt")
    email = im.text("email")
    groups = im.str_list("groups")
    scopes = im.str_list("scopes")
    unknown = im.str_list("unknown_claims")
    claims_node = im.node_of("claims")
    claims: dict[str, Any] = {}
    if claims_node is not None:
        value = plain_value(claims_node)
        if isinstance(value, dict):
            claims = value
        else:
            im.error("claims", f"{im.where}.claims: expected a mapping")
    verified = (
        im.flag("email_verified") if im.has("email_verified") else claimed_email_verified(claims)
    )
    im.close(("claims", "grants"))
    return Identity(
        subject=subject,
        issuer=issuer,
        method=auth_method(method),
        email=email,
        groups=frozenset(groups),
        scopes=frozenset(scopes),
        claims=claims,
        unknown_claims=frozenset(unknown),
        email_verified=verified,
    )
