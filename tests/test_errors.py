"""Failures as data: one vocabulary of reason codes with their statuses, the headers
an error answer carries, and the README's reason tables held to that vocabulary."""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from pathlib import Path

import orjson
from prometheus_client import CollectorRegistry, generate_latest

from proxy import errors
from proxy.errors import (
    AuditReason,
    AuthenticationError,
    CredentialsRequired,
    GatehouseError,
    HeadersTooLarge,
    IdentityTooLarge,
    LoginFailed,
    MethodNotAllowed,
    Reason,
    RouteNotFound,
    UpstreamTimeout,
)
from proxy.http.responses import error_body, failure_response, rejection_response
from proxy.observability.audit import AuditRecord
from proxy.observability.metrics import LoopCounter

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
PACKAGE = REPO / "proxy"
# Being moved into proxy/stages/ by its owner, who takes its reasons from errors.py there.
NOT_YET: set[Path] = set()

_TICKED = re.compile(r"`([^`]+)`")
_CHAIN = re.compile(r"\b([1-5]\d\d) (`[^`]+`(?:\s*[/,]\s*`[^`]+`)*)")
_CODE = re.compile(r"[a-z][a-z0-9_]*")
NO_STATUS = "—"


def error_classes() -> Iterator[type[GatehouseError]]:
    todo: list[type[GatehouseError]] = [GatehouseError]
    while todo:
        cls = todo.pop()
        yield cls
        todo.extend(cls.__subclasses__())


def vocabulary() -> set[tuple[str, str]]:
    """(status, reason) for every code errors.py defines; a record's own reasons have none."""
    return {(str(r.status), r.value) for r in Reason} | {(NO_STATUS, a.value) for a in AuditReason}


def table(header: str) -> list[list[str]]:
    """The cells of each row of the README table whose header row is ``header``."""
    lines = README.splitlines()
    start = lines.index(header) + 2  # past the header and its rule
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in lines[start:end]]


def paired(text: str) -> list[tuple[str, str]]:
    """(status, code) for each code written right after a status: ``404 `x```,
    ``400 `x`, `y```, ``401 `x`/`y```."""
    return [
        (chain[1], code)
        for chain in _CHAIN.finditer(text)
        for code in _TICKED.findall(chain[2])
        if ":" not in code  # the policy's own, named after a rule
    ]


def reference() -> set[tuple[str, str]]:
    """What the README's table of reason codes says (the policy's rule-named reasons left out)."""
    out = set()
    for status, codes, _ in table("| status | reason | when |"):
        for tick in _TICKED.finditer(codes):
            if ":" not in tick.group(1):
                out.add((status, tick.group(1)))
    return out


# -- the vocabulary ------------------------------------------------------------
def test_no_two_reason_names_share_a_code() -> None:
    # A second member with a value already taken would silently become an alias.
    assert len(Reason.__members__) == len(list(Reason))
    assert len(AuditReason.__members__) == len(list(AuditReason))
    for code in [*Reason, *AuditReason]:
        assert _CODE.fullmatch(code.value), code


def test_each_error_class_answers_with_the_status_its_own_reason_is_listed_with() -> None:
    for cls in error_classes():
        if isinstance(cls.reason, Reason):
            assert cls.status == cls.reason.status, cls.__name__


def test_a_reason_is_the_plain_string_to_bodies_audit_records_and_metric_labels() -> None:
    assert error_body(401, Reason.INVALID_TOKEN, "r1") == (
        b'{"error":"invalid_token","status":401,"request_id":"r1"}'
    )
    assert json.dumps({"reason": Reason.RATE_LIMITED}) == '{"reason": "rate_limited"}'
    assert f"{AuditReason.LOGIN}|{Reason.BAD_PATH}" == "login|bad_path"
    record = AuditRecord(ts_epoch=0.0, request_id="r1", reason=AuditReason.GRANT_LAPSED)
    assert b'"reason":"grant_lapsed"' in orjson.dumps(record)
    assert b'"reason":"internal_error"' in orjson.dumps(AuditRecord(ts_epoch=0.0, request_id="r"))
    counter = LoopCounter("t_failures", "test", ["reason"])
    counter.labels(Reason.UPSTREAM_TIMEOUT).inc()
    counter.labels("upstream_timeout").inc()  # the same child as the plain string
    registry = CollectorRegistry()
    registry.register(counter)
    assert 't_failures_total{reason="upstream_timeout"} 2.0' in generate_latest(registry).decode()


# -- the answer's headers -------------------------------------------------------
def test_an_authentication_failure_challenges_with_its_reason() -> None:
    challenge = 'Bearer realm="gatehouse", error="invalid_token"'
    assert AuthenticationError(Reason.INVALID_TOKEN).response_headers() == {
        "WWW-Authenticate": challenge
    }
    assert AuthenticationError().response_headers() == {
        "WWW-Authenticate": 'Bearer realm="gatehouse", error="unauthenticated"'
    }
    assert IdentityTooLarge().response_headers() == {
        "WWW-Authenticate": 'Bearer realm="gatehouse", error="identity_too_large"'
    }


def test_a_call_without_any_credential_gets_the_challenge_without_an_error_code() -> None:
    # RFC 6750 §3.1: no error code when the request carried no authentication at all.
    assert CredentialsRequired().response_headers() == {
        "WWW-Authenticate": 'Bearer realm="gatehouse"'
    }
    assert CredentialsRequired().reason == "unauthenticated"


def test_a_method_not_allowed_names_the_methods_served_when_it_knows_them() -> None:
    assert MethodNotAllowed(allow=("GET", "POST")).response_headers() == {"Allow": "GET, POST"}
    assert MethodNotAllowed(detail="use POST").response_headers() == {}


def test_other_failures_add_no_header_of_their_own() -> None:
    for error in (GatehouseError(), RouteNotFound(), UpstreamTimeout(), LoginFailed()):
        assert error.response_headers() == {}


def test_a_failure_response_is_the_errors_status_reason_and_headers() -> None:
    response = failure_response(AuthenticationError(Reason.EXPIRED_TOKEN), "r2")
    assert response.status == 401
    assert response.body == b'{"error":"expired_token","status":401,"request_id":"r2"}'
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="gatehouse", error="expired_token"'
    assert response.headers["X-Request-Id"] == "r2"


def test_only_a_head_too_large_clears_the_session_cookies_in_its_answer() -> None:
    clear = ("_gh=; Max-Age=0",)
    too_large = rejection_response(HeadersTooLarge(), "r3", clear)
    assert (too_large.status, too_large.headers.getall("Set-Cookie")) == (431, list(clear))
    malformed = rejection_response(errors.MalformedRequest(), "r4", clear)
    assert malformed.status == 400 and "Set-Cookie" not in malformed.headers


def test_a_failed_login_is_answered_400_with_the_reason_of_what_failed() -> None:
    wrapped = LoginFailed(Reason.IDP_UNAVAILABLE)
    assert (wrapped.status, wrapped.reason) == (400, "idp_unavailable")


# -- every reason in the code comes from errors.py -----------------------------------
def _sources() -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        if path not in NOT_YET and path != PACKAGE / "errors.py":
            yield path, ast.parse(path.read_text(encoding="utf-8"))


def _literal(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def _named_reason(node: ast.expr) -> Reason | None:
    if (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "Reason"
    ):
        return Reason[node.attr]
    return None


def test_no_reason_in_the_package_is_written_as_a_string_literal() -> None:
    classes = {cls.__name__ for cls in error_classes()} | {"EndpointOutcome", "Outcome"}
    found = []
    for path, tree in _sources():
        where = path.relative_to(REPO)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = node.func.id if isinstance(node.func, ast.Name) else None
                if name in classes and node.args and _literal(node.args[0]):
                    found.append(f"{where}:{node.lineno}: {name}({ast.unparse(node.args[0])})")
                found += [
                    f"{where}:{node.lineno}: reason={ast.unparse(k.value)}"
                    for k in node.keywords
                    if k.arg == "reason" and _literal(k.value)
                ]
            elif isinstance(node, ast.Assign) and _literal(node.value):
                found += [
                    f"{where}:{node.lineno}: .reason = {ast.unparse(node.value)}"
                    for target in node.targets
                    if isinstance(target, ast.Attribute) and target.attr == "reason"
                ]
    assert found == []


def test_every_error_raised_with_a_named_reason_has_that_reasons_status() -> None:
    statuses = {cls.__name__: cls.status for cls in error_classes()}
    wrong = []
    for path, tree in _sources():
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in statuses
                and node.args
            ):
                reason = _named_reason(node.args[0])
                if reason is not None and reason.status != statuses[node.func.id]:
                    wrong.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)}")
    assert wrong == []


# -- the README --------------------------------------------------------------------
def test_the_readme_table_of_reason_codes_is_exactly_the_vocabulary_with_its_statuses() -> None:
    documented, defined = reference(), vocabulary()
    assert sorted(defined - documented) == [], "in proxy/errors.py, missing from the README"
    assert sorted(documented - defined) == [], "in the README, not in proxy/errors.py"


def test_the_stage_table_and_troubleshooting_name_reasons_with_their_statuses() -> None:
    statuses = {r.value: str(r.status) for r in Reason}
    said = [
        pair
        for *_, fails in table("| stage | module | rules it applies | fails with |")
        for pair in paired(fails)
    ]
    said += [
        pair for symptom, _ in table("| symptom | cause and fix |") for pair in paired(symptom)
    ]
    assert [(s, r) for s, r in said if statuses.get(r) != s] == []


def test_wherever_the_readme_writes_a_status_before_a_reason_they_agree() -> None:
    statuses = {r.value: str(r.status) for r in Reason}
    pairs = paired(README)
    assert len(pairs) > 50
    assert [(s, r) for s, r in pairs if r in statuses and statuses[r] != s] == []
