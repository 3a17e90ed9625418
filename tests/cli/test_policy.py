"""`gatehouse policy check|explain|test`, run in-process through the argparse wiring."""

from __future__ import annotations

import argparse
import base64
import json
import subprocess
from pathlib import Path

import pytest

from proxy.cli.policy import add_commands
from proxy.policy.load import load_policies
from tests.policy.support import write
from tests.support.cli import gatehouse_command
from tests.support.gatehouse import write_config

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "policies"
FIXTURES = sorted((POLICIES / "tests").glob("*.yaml"))
BACKENDS = "demo,airflow-api,beam-trigger,appservice-reports,gcf-ingest,admin-ui,legacy-cron"


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="gatehouse")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["policy", *argv])
    code: int = args.func(args)
    return code


def gatehouse(*argv: str) -> subprocess.CompletedProcess[str]:
    """The real command line: ``gatehouse policy ...`` in a child process."""
    return gatehouse_command("policy", *argv, cwd=ROOT, timeout=120)


def fake_jwt(claims: dict[str, object]) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "none"}).encode())
    return f"{header}.{b64(json.dumps(claims).encode())}.c2lnbmF0dXJl"


def test_every_example_has_a_fixture_file() -> None:
    examples = {p.stem for p in POLICIES.glob("*.yaml")}
    assert examples == {p.stem for p in FIXTURES}
    assert len(examples) == 7


def test_the_demo_policy_has_exactly_its_two_routes() -> None:
    ps = load_policies(POLICIES / "demo.yaml", {"demo"})
    assert [(r.name, r.path_prefix, r.methods) for r in ps.routes] == [
        ("public-hello", "/public/", frozenset({"GET", "HEAD"})),
        ("whoami", "/api/", None),
    ]


def test_example_fixtures_pass(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("test", *map(str, FIXTURES)) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out
    assert " 0 failed" in out


def test_a_wrong_expectation_fails_with_the_case_cited(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fixture = write(
        tmp_path,
        "wrong.yaml",
        """\
        - name: right
          request: {method: GET, url: "https://h/public/x"}
          identity: null
          expect: {decision: allow, reason: "allowed:anyone"}
        - name: wrong
          request: {method: GET, url: "https://h/api/whoami"}
          identity: null
          expect: {decision: allow}
        """,
    )
    assert run("test", str(fixture), "--policies", str(POLICIES)) == 1
    out = capsys.readouterr().out
    assert "PASS right" in out
    assert f"FAIL wrong ({fixture}:5): expected decision=allow; got decision=deny" in out
    assert "decision: deny (unauthenticated)" in out  # the explanation follows a failure
    assert "1 passed, 1 failed" in out


def test_a_wrong_route_or_audit_expectation_fails(tmp_path: Path) -> None:
    fixture = write(
        tmp_path,
        "wrong.yaml",
        """\
        - name: wrong route
          request: {url: "https://h/public/x"}
          identity: null
          expect: {decision: allow, route: whoami}
        - name: wrong audit
          request: {url: "https://h/public/x"}
          identity: null
          expect: {decision: allow, audit: ["denied:x"]}
        """,
    )
    assert run("test", str(fixture), "--policies", str(POLICIES)) == 1


def test_a_malformed_fixture_file_exits_2_with_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fixture = write(
        tmp_path,
        "bad.yaml",
        """\
        - name: x
          request: {url: /}
          expect: {decision: maybe}
          extra: 1
        """,
    )
    assert run("test", str(fixture), "--policies", str(POLICIES)) == 2
    out = capsys.readouterr().out
    assert f"{fixture}:1: case 'x': missing 'identity'" in out
    assert f"{fixture}:3: case 'x'.expect.decision: must be one of allow, deny" in out
    assert f"{fixture}:4: " in out and "unknown key 'extra'" in out


def test_check_passes_the_examples_with_warnings(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("check", str(POLICIES), "--backends", BACKENDS) == 0
    out = capsys.readouterr().out
    assert "demo.yaml:11: warning: rule 'anyone' admits everyone on broad prefix '/public/'" in out
    assert "ok: 10 routes in 7 files" in out
    assert run("check", str(POLICIES), "--backends", BACKENDS, "--strict") == 1
    assert run("check", str(POLICIES / "legacy-cron.yaml"), "--strict") == 0


def test_check_exits_2_listing_every_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(
        tmp_path,
        "a.yaml",
        "routes:\n  - name: r\n    path: /\n    backend: nope\n    allow: [{name: a}]\n",
    )
    assert run("check", str(tmp_path), "--backends", "demo") == 2
    out = capsys.readouterr().out.splitlines()
    assert f"{tmp_path / 'a.yaml'}:4: route 'r'.backend: undefined backend 'nope'" in out
    assert any(line.startswith(f"{tmp_path / 'a.yaml'}:5: ") for line in out)


def test_explain_with_claims_prints_route_rules_and_decision(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    claims = write(
        tmp_path,
        "claims.json",
        json.dumps(
            {
                "sub": "pat",
                "iss": "https://login.example.com/realms/staff",
                "groups": ["platform-admins"],
                "amr": ["pwd", "mfa"],
            }
        ),
    )
    code = run(
        "explain",
        "--method", "GET",
        "--url", "https://admin.example.com/clusters?x=1",
        "--claims", str(claims),
        "--auth-method", "session",
        "--source-ip", "198.51.100.7",
        "--policies", str(POLICIES),
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "route: admin-ui (backend admin-ui" in out
    assert "deny no-interns" in out and "no match" in out
    assert "deny outside-office [audit: not enforced]" in out
    assert "allow platform-admin-with-mfa" in out
    assert "decision: allow (allowed:platform-admin-with-mfa)" in out
    assert "audit-mode rules that fired: denied:outside-office" in out


def test_explain_with_a_token_says_it_is_unverified_and_never_echoes_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    token = fake_jwt({"sub": "alice", "iss": "http://127.0.0.1:9902", "groups": ["eng"]})
    assert (
        run(
            "explain",
            "--url",
            "https://127.0.0.1:8443/api/whoami",
            "--token",
            token,
            "--policies",
            str(POLICIES),
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "NOT verified" in out
    assert "decision: allow (allowed:signed-in)" in out
    assert token not in out and token.split(".")[1] not in out


def test_explain_rejects_a_malformed_token_without_echoing_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert (
        run(
            "explain",
            "--url",
            "/api/x",
            "--token",
            "abc.%%%secret.def",
            "--policies",
            str(POLICIES),
        )
        == 2
    )
    assert "secret" not in capsys.readouterr().out


def test_explain_anonymous_and_unrouted_and_rejected_paths(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert (
        run("explain", "--url", "https://h/api/whoami", "--anonymous", "--policies", str(POLICIES))
        == 0
    )
    assert "decision: deny (unauthenticated)" in capsys.readouterr().out
    assert (
        run("explain", "--url", "https://h/nothing", "--anonymous", "--policies", str(POLICIES))
        == 0
    )
    out = capsys.readouterr().out
    assert "route: none matched" in out and "route_not_found" in out
    assert (
        run("explain", "--url", "https://h/a%2F..%2Fb", "--anonymous", "--policies", str(POLICIES))
        == 0
    )
    assert "request rejected before matching: 400 bad_path" in capsys.readouterr().out


def test_check_with_a_gatehouse_config_uses_its_policy_dir_and_backends(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    route = {"name": "r", "path": "/", "backend": "up", "allow": [{"name": "a", "groups": ["g"]}]}
    config, *_ = write_config(
        tmp_path / "ok", backends={"up": {"urls": ["http://127.0.0.1:1"]}}, routes=[route]
    )
    assert run("check", "--config", str(config)) == 0
    assert "ok: 1 routes in 1 files" in capsys.readouterr().out
    config, *_ = write_config(
        tmp_path / "bad", backends={"other": {"urls": ["http://127.0.0.1:1"]}}, routes=[route]
    )
    assert run("check", "--config", str(config)) == 2
    assert "undefined backend 'up'" in capsys.readouterr().out


def test_the_gatehouse_command_runs_the_example_fixtures() -> None:
    # The console entry point discovers `policy` through proxy.cli's add_commands hook.
    done = gatehouse("test", *map(str, FIXTURES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert " 0 failed" in done.stdout


def test_fixtures_can_state_claims_that_were_not_received(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    write(
        policies,
        "p.yaml",
        """\
        routes:
          - name: app
            path: /
            backend: b
            deny: [{name: no-interns, groups: [interns]}]
            allow: [{name: signed-in, authenticated: true}]
        """,
    )
    fixture = write(
        tmp_path,
        "cases.yaml",
        """\
        - name: a session that dropped its groups fails closed
          request: {url: "https://h/x"}
          identity: {subject: pat, method: session, unknown_claims: [groups]}
          expect: {decision: deny, reason: "unknown_claims:no-interns"}
        - name: with its groups it is let in
          request: {url: "https://h/x"}
          identity: {subject: pat, method: session, groups: [staff]}
          expect: {decision: allow, reason: "allowed:signed-in"}
        """,
    )
    done = gatehouse("test", str(fixture), "--policies", str(policies))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed, 0 failed" in done.stdout


def test_check_strict_fails_on_an_audit_rule_cited_inside_an_enforced_rule(tmp_path: Path) -> None:
    write(
        tmp_path,
        "p.yaml",
        """\
        rules:
          guests-dry: {mode: audit, groups: [guests]}
        routes:
          - name: app
            path: /app/reports
            backend: b
            allow: [{name: staff, any: [{groups: [staff]}, guests-dry]}]
        """,
    )
    done = gatehouse("check", str(tmp_path), "--strict")
    assert done.returncode == 1, done.stdout + done.stderr
    assert (
        f"{tmp_path / 'p.yaml'}:7: warning: allow rule 'staff' of route 'app' cites" in done.stdout
    )
    assert gatehouse("check", str(tmp_path)).returncode == 0  # a warning, not an error


def test_check_with_a_config_of_several_identity_sources_warns_about_unpinned_rules(
    tmp_path: Path,
) -> None:
    routes = [
        {"name": "r", "path": "/r", "backend": "up", "allow": [{"name": "eng", "groups": ["eng"]}]}
    ]
    backends = {"up": {"urls": ["http://127.0.0.1:1"]}}
    one = {"issuers": [{"issuer": "https://idp.example.com", "audiences": ["gatehouse"]}]}
    two = {**one, "api_keys": {"file": str(tmp_path / "keys.yaml")}}
    config, *_ = write_config(
        tmp_path / "one", backends=backends, routes=routes, extra={"identity": one}
    )
    assert gatehouse("check", "--config", str(config), "--strict").returncode == 0
    config, *_ = write_config(
        tmp_path / "two", backends=backends, routes=routes, extra={"identity": two}
    )
    done = gatehouse("check", "--config", str(config), "--strict")
    assert done.returncode == 1, done.stdout + done.stderr
    assert (
        "warning: allow rule 'eng' of route 'r' matches who the caller is but pins neither "
        "'issuer' nor 'auth_method', while 2 identity sources are configured "
        "(issuer https://idp.example.com, API keys)" in done.stdout
    )


def test_explain_shows_an_unverified_email_matching_nothing(tmp_path: Path) -> None:
    write(
        tmp_path,
        "p.yaml",
        """\
        routes:
          - name: reports
            path: /
            backend: b
            allow: [{name: employees, email_domain: [example.com]}]
        """,
    )
    verdicts = {}
    for verified in (True, False):
        claims = write(
            tmp_path,
            f"claims-{verified}.json",
            json.dumps({"sub": "dana", "email": "dana@example.com", "email_verified": verified}),
        )
        done = gatehouse(
            "explain", "--url", "https://h/q3", "--claims", str(claims), "--policies", str(tmp_path)
        )
        assert done.returncode == 0, done.stdout + done.stderr
        verdicts[verified] = [line for line in done.stdout.splitlines() if "email_domain" in line]
        verdicts[verified].append(done.stdout.splitlines()[-2])
    assert verdicts[True] == [
        "    email_domain in [example.com]: match",
        "decision: allow (allowed:employees)",
    ]
    assert verdicts[False] == [
        "    email_domain in [example.com]: no match",
        "decision: deny (no_rule_matched)",
    ]
