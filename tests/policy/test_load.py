"""Loading policy files: every problem reported as file:line, nothing loaded on error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from proxy.config.reader import ConfigError
from proxy.policy.load import load_policies
from tests.policy.support import write

GOOD = """\
routes:
  - name: hello
    path: /hello
    backend: demo
    allow:
      - name: anyone
        public: true
"""


def problems(tmp_path: Path, text: str, backends: set[str] | None = None) -> list[str]:
    write(tmp_path, "p.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_policies(tmp_path, backends)
    return [str(p) for p in info.value.problems]


def test_a_valid_file_loads_routes_with_their_options(tmp_path: Path) -> None:
    write(
        tmp_path,
        "p.yaml",
        """\
        routes:
          - name: full
            host: "*.Example.COM"
            path: /api
            methods: [get, post]
            backend: demo
            timeout: 30s
            max_body: 1MiB
            websocket: true
            preserve_host: true
            pass_authorization: true
            set_request_headers: {X-Env: prod}
            remove_request_headers: [X-Debug]
            pass_claims: {claims: [department], max_bytes: 2048}
            rate_limit: {requests: 10, per: 1m}
            allow:
              - {name: anyone, public: true}
        """,
    )
    route = load_policies(tmp_path, {"demo"}).routes[0]
    assert route.host == "*.example.com"
    assert route.path_prefix == "/api"
    assert route.methods == frozenset({"GET", "POST"})
    assert route.timeout == 30.0
    assert route.max_body == 2**20
    assert (route.websocket, route.preserve_host, route.pass_authorization) == (True, True, True)
    assert route.set_request_headers == (("X-Env", "prod"),)
    assert route.remove_request_headers == frozenset({"x-debug"})
    assert route.pass_claims == ("department",)
    assert route.pass_claims_max_bytes == 2048
    assert route.rate_limit is not None
    assert (route.rate_limit.requests, route.rate_limit.per, route.rate_limit.burst) == (
        10,
        60.0,
        10,
    )
    assert route.source == f"{tmp_path / 'p.yaml'}:2"


def test_unknown_keys_are_reported_with_their_line(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """\
        routes:
          - name: r
            path: /x
            backend: demo
            bakend: oops
            allow:
              - name: a
                publc: true
        """,
    )
    f = tmp_path / "p.yaml"
    assert any(p.startswith(f"{f}:5:") and "unknown key 'bakend'" in p for p in found)
    assert any(p.startswith(f"{f}:8:") and "unknown key 'publc'" in p for p in found)


def test_wrong_types_are_reported(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """\
        routes:
          - name: r
            path: /x
            backend: demo
            websocket: "yes"
            timeout: soon
            methods: {GET: 1}
            allow: [{name: a, public: true}]
        """,
    )
    text = "\n".join(found)
    assert ":5: route 'r'.websocket: expected true or false" in text
    assert ":6: route 'r'.timeout: expected a duration" in text
    assert ":7: route 'r'.methods: expected a list of strings" in text


def test_undefined_backend_is_an_error_only_when_backends_are_known(tmp_path: Path) -> None:
    found = problems(tmp_path, GOOD, {"other"})
    assert found == [f"{tmp_path / 'p.yaml'}:4: route 'hello'.backend: undefined backend 'demo'"]
    assert load_policies(tmp_path, None).routes[0].backend == "demo"


def test_duplicate_route_names_across_files_are_errors(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", GOOD)
    write(tmp_path, "b.yaml", GOOD)
    with pytest.raises(ConfigError) as info:
        load_policies(tmp_path)
    (problem,) = info.value.problems
    assert problem.file == str(tmp_path / "b.yaml")
    assert f"already defined at {tmp_path / 'a.yaml'}:2" in problem.message


def test_bad_regex_cidr_and_timezone_are_errors(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """\
        routes:
          - name: r
            path_regex: ^/v[0-9+$
            backend: demo
            allow:
              - name: a
                source_ip: [10.0.0.0/33]
              - name: b
                time: {hours: "09:00-17:00", tz: Mars/Olympus}
        """,
    )
    text = "\n".join(found)
    assert ":3: route 'r'.path_regex: invalid regular expression" in text
    assert ":7: " in text and "not an IP network: '10.0.0.0/33'" in text
    assert ":9: " in text and "unknown time zone 'Mars/Olympus'" in text


def test_every_problem_of_every_file_is_reported_at_once(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "routes:\n  - name: a\n    path: x\n    backend: demo\n")
    write(tmp_path, "b.yaml", "routes: [\n")
    with pytest.raises(ConfigError) as info:
        load_policies(tmp_path)
    files = {p.file for p in info.value.problems}
    assert files == {str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml")}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{name: empty}", "a rule needs at least one criterion"),
        ("{name: x, any: []}", "must be a non-empty list"),
        ("{name: x, public: false}", "only 'true' has a meaning"),
        ("{name: x, groups: []}", "must not be empty"),
        ("{name: x, email_domain: ['*.*.example.com']}", "expected a domain or '*.domain'"),
        ("{name: x, auth_method: [password]}", "must be one of jwt"),
        ("{name: x, claim: {path: a, is: 1, in: [1]}}", "give exactly one of is"),
        ("{name: x, claim: {path: a, starts_with: 1}}", "expected a string"),
        ("{name: x, not: [{public: true}]}", "expected a mapping of criteria"),
        ("{name: x, mode: dry, public: true}", "must be one of enforce, audit"),
        ("{name: x, client_cert: {fingerprint: [abc]}}", "expected a SHA-256 hex digest"),
        ("{name: x, time: {hours: '18:00-18:00'}}", "not a valid time range"),
        ("undefined-rule", "unknown rule 'undefined-rule'"),
    ],
)
def test_invalid_rules_are_refused(tmp_path: Path, body: str, message: str) -> None:
    found = problems(
        tmp_path,
        f"routes:\n  - name: r\n    path: /x\n    backend: demo\n    allow:\n      - {body}\n",
    )
    assert any(":6: " in p and message in p for p in found), found


@pytest.mark.parametrize(
    "spec",
    [
        "path: api",
        "path: /a//b",
        "path: /a/../b",
        "path: /a;x",
        "path_exact: /a?b",
        "path: /a%2Fb",
        "host: example.com:8443\n    path: /",
        "host: 'exa mple.com'\n    path: /",
    ],
)
def test_routes_that_could_never_match_are_refused(tmp_path: Path, spec: str) -> None:
    found = problems(
        tmp_path,
        f"routes:\n  - name: r\n    {spec}\n    backend: demo\n    allow: [{{name: a, public: true}}]\n",
    )
    assert found and all(":3: " in p for p in found), found


def test_route_needs_exactly_one_path_kind(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        "routes:\n  - name: r\n    path: /a\n    path_exact: /a\n    backend: demo\n",
    )
    assert any("give exactly one of path, path_exact, path_regex" in p for p in found)


def test_duplicate_rule_names_in_one_route_are_refused(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """\
        routes:
          - name: r
            path: /a
            backend: demo
            allow:
              - {name: a, public: true}
              - {name: a, authenticated: true}
        """,
    )
    assert any(":7: " in p and "rule 'a' appears twice" in p for p in found)


def test_named_rules_that_refer_to_themselves_are_refused(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """\
        rules:
          loop-a: {any: [loop-b]}
          loop-b: {any: [loop-a]}
        routes:
          - name: r
            path: /a
            backend: demo
            allow: [loop-a]
        """,
    )
    assert any("refers to itself" in p for p in found)


def test_an_empty_file_is_an_error_so_truncation_never_drops_routes(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", GOOD)
    write(tmp_path, "b.yaml", "")
    with pytest.raises(ConfigError, match="policy file is empty"):
        load_policies(tmp_path)


def test_an_explicit_empty_route_list_is_allowed(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "routes: []\n")
    assert load_policies(tmp_path).routes == ()


def test_a_missing_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_policies(tmp_path / "nope")


def test_directory_loading_skips_hidden_entries_subdirectories_and_other_files(
    tmp_path: Path,
) -> None:
    write(tmp_path, "b.yml", GOOD.replace("hello", "second"))
    write(tmp_path, "a.yaml", GOOD)
    write(tmp_path, ".hidden.yaml", "not: [valid")
    write(tmp_path, "notes.txt", "not yaml: [")
    (tmp_path / "tests").mkdir()
    write(tmp_path / "tests", "fixture.yaml", "- not a policy")
    loaded = load_policies(tmp_path)
    assert [r.name for r in loaded.routes] == ["hello", "second"]
    assert [r.order for r in loaded.routes] == [0, 1]


def test_configmap_style_symlinks_are_followed(tmp_path: Path) -> None:
    data = tmp_path / "..2026_11_21_10_00_00.1"
    data.mkdir()
    write(data, "demo.yaml", GOOD)
    os.symlink(data.name, tmp_path / "..data")
    os.symlink("..data/demo.yaml", tmp_path / "demo.yaml")
    assert [r.name for r in load_policies(tmp_path).routes] == ["hello"]


def test_a_broken_symlink_is_an_error(tmp_path: Path) -> None:
    os.symlink("missing.yaml", tmp_path / "demo.yaml")
    with pytest.raises(ConfigError, match="broken symlink"):
        load_policies(tmp_path)


def test_policy_version_is_a_hash_of_the_contents(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", GOOD)
    first = load_policies(tmp_path).version
    assert load_policies(tmp_path).version == first
    write(tmp_path, "a.yaml", GOOD + "# a comment changes the version\n")
    assert load_policies(tmp_path).version != first
    assert len(first) == 12


def test_named_rules_are_shared_across_files(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "rules:\n  staff: {groups: [staff]}\nroutes: []\n")
    write(
        tmp_path,
        "b.yaml",
        "routes:\n  - name: r\n    path: /\n    backend: d\n    allow: [staff]\n",
    )
    (route,) = load_policies(tmp_path).routes
    assert [(r.name, r.source) for r in route.allow] == [("staff", f"{tmp_path / 'a.yaml'}:2")]


@pytest.mark.parametrize(
    ("options", "uses_identity"),
    [
        ("allow: [{name: a, public: true}]", False),
        ("allow: [{name: a, any: [{public: true}, {method: [GET]}]}]", False),
        ("allow: [{name: a, public: true}]\n    deny: [{name: d, source_ip: [10.0.0.0/8]}]", False),
        ("allow: [{name: a, public: true}, {name: dry, mode: audit, groups: [g]}]", False),
        ("allow: [{name: a, public: true}]\n    identify: true", True),
        ("allow: [{name: a, public: true}]\n    pass_claims: {claims: [dept]}", True),
        ("allow: [{name: a, public: true}]\n    deny: [{name: d, groups: [interns]}]", True),
        ("allow: [{name: a, public: true, source_ip: [10.0.0.0/8]}]", True),
        ("allow: [{name: g, method: [GET]}, {name: a, public: true}]", True),
        ("allow: [{name: a, authenticated: true}]", True),
        ("allow: [{name: a, groups: [g]}]", True),
        ("allow: []", True),
    ],
)
def test_a_route_asks_for_identity_unless_who_calls_cannot_matter(
    tmp_path: Path, options: str, uses_identity: bool
) -> None:
    write(tmp_path, "p.yaml", f"routes:\n  - name: r\n    path: /\n    backend: b\n    {options}\n")
    assert load_policies(tmp_path).routes[0].uses_identity is uses_identity


@pytest.mark.parametrize("mode", [0o666, 0o646, 0o602])
def test_a_policy_file_every_user_may_write_is_refused_at_its_first_line(
    tmp_path: Path, mode: int
) -> None:
    path = write(tmp_path, "p.yaml", GOOD)
    path.chmod(mode)
    with pytest.raises(ConfigError) as info:
        load_policies(tmp_path)
    assert [str(p) for p in info.value.problems] == [
        f"{path}:1: policy file can be written by every user (mode {mode:04o}): chmod o-w it"
    ]


@pytest.mark.parametrize("mode", [0o777, 0o1777])
def test_a_policy_directory_every_user_may_write_is_refused(tmp_path: Path, mode: int) -> None:
    # Sticky or not: anyone could add a file that the next load reads.
    write(tmp_path, "p.yaml", GOOD)
    tmp_path.chmod(mode)
    with pytest.raises(ConfigError) as info:
        load_policies(tmp_path)
    assert any(
        "policy directory can be written by every user" in str(p) for p in info.value.problems
    )


def test_a_policy_file_its_group_may_write_loads(tmp_path: Path) -> None:
    # A shared group is the operator's deliberate choice (and umask 002's default).
    path = write(tmp_path, "p.yaml", GOOD)
    path.chmod(0o664)
    assert load_policies(tmp_path).routes[0].name == "hello"
