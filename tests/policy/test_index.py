"""Route matching order: exact host, wildcard, any host; exact path, longer prefix,
shorter prefix, regex; then file order. Checked by example and against a linear scan."""

from __future__ import annotations

import re
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.cli.policy import request_facts
from proxy.http.host import normalise_host, parse_host
from proxy.policy.index import RouteIndex, combine
from proxy.policy.model import Route
from tests.policy.support import policy


def names(tmp_path: Path, text: str, requests: list[tuple[str, str, str]]) -> list[str | None]:
    ps = policy(tmp_path, text)
    out: list[str | None] = []
    for host, path, method in requests:
        route = ps.match(host, path, method)
        out.append(route.name if route else None)
    return out


ALLOW = "    allow: [{name: a, public: true}]\n"


def routes_yaml(*specs: str) -> str:
    body = "".join(
        f"  - name: r{i}\n    backend: b\n"
        + "".join(f"    {line}\n" for line in spec.split(";"))
        + ALLOW
        for i, spec in enumerate(specs)
    )
    return "routes:\n" + body


def test_exact_host_wins_over_wildcard_which_wins_over_any_host(tmp_path: Path) -> None:
    text = routes_yaml("path: /", "host: '*.example.com';path: /", "host: a.example.com;path: /")
    got = names(
        tmp_path,
        text,
        [("a.example.com", "/x", "GET"), ("b.example.com", "/x", "GET"), ("other.org", "/", "GET")],
    )
    assert got == ["r2", "r1", "r0"]


def test_longer_wildcard_suffix_wins(tmp_path: Path) -> None:
    text = routes_yaml("host: '*.example.com';path: /", "host: '*.eu.example.com';path: /")
    got = names(
        tmp_path, text, [("x.eu.example.com", "/", "GET"), ("x.us.example.com", "/", "GET")]
    )
    assert got == ["r1", "r0"]


def test_wildcard_does_not_match_the_apex_domain(tmp_path: Path) -> None:
    text = routes_yaml("host: '*.example.com';path: /")
    assert names(tmp_path, text, [("example.com", "/", "GET")]) == [None]


def test_a_host_in_any_case_with_a_port_or_trailing_dot_routes_as_the_edge_normalised_it(
    tmp_path: Path,
) -> None:
    text = routes_yaml("host: api.example.com;path: /")
    sent = ["API.Example.COM:8443", "api.example.com.", "api.example.com"]
    got = names(tmp_path, text, [(parse_host(h) or "", "/", "GET") for h in sent])
    assert got == ["r0", "r0", "r0"]
    assert request_facts("GET", "https://API.example.com:8443/", "192.0.2.1", {}).host == (
        "api.example.com"
    )


def test_ipv6_literal_hosts_keep_their_brackets() -> None:
    assert normalise_host("[::1]:8443") == "[::1]"
    assert normalise_host("[::1]") == "[::1]"


def test_exact_path_beats_prefix_beats_regex(tmp_path: Path) -> None:
    text = routes_yaml("path_regex: ^/api/.*$", "path: /api", "path_exact: /api/items")
    got = names(tmp_path, text, [("h", "/api/items", "GET"), ("h", "/api/other", "GET")])
    assert got == ["r2", "r1"]


def test_longer_prefix_beats_shorter_regardless_of_file_order(tmp_path: Path) -> None:
    text = routes_yaml("path: /", "path: /api", "path: /api/v1/")
    got = names(
        tmp_path,
        text,
        [
            ("h", "/api/v1/x", "GET"),
            ("h", "/api/v2", "GET"),
            ("h", "/api/v1", "GET"),
            ("h", "/x", "GET"),
        ],
    )
    assert got == ["r2", "r1", "r1", "r0"]


def test_file_order_breaks_ties(tmp_path: Path) -> None:
    text = routes_yaml("path: /a", "path: /a")
    assert names(tmp_path, text, [("h", "/a", "GET")]) == ["r0"]


def test_a_method_mismatch_falls_through_to_the_next_candidate(tmp_path: Path) -> None:
    text = routes_yaml("path: /", "path: /api;methods: [POST]", "path_exact: /api/x;methods: [PUT]")
    got = names(
        tmp_path,
        text,
        [("h", "/api/x", "PUT"), ("h", "/api/x", "POST"), ("h", "/api/x", "GET")],
    )
    assert got == ["r2", "r1", "r0"]


def test_no_candidate_left_means_no_route(tmp_path: Path) -> None:
    text = routes_yaml("path: /api;methods: [GET]")
    assert names(tmp_path, text, [("h", "/api", "POST"), ("h", "/other", "GET")]) == [None, None]


def test_prefix_respects_segment_boundaries(tmp_path: Path) -> None:
    text = routes_yaml("path: /api", "path: /docs/")
    got = names(
        tmp_path,
        text,
        [
            ("h", "/api", "GET"),
            ("h", "/api/", "GET"),
            ("h", "/api/x", "GET"),
            ("h", "/apifoo", "GET"),
            ("h", "/docs/", "GET"),
            ("h", "/docs/x", "GET"),
            ("h", "/docs", "GET"),
            ("h", "/docsx", "GET"),
        ],
    )
    assert got == ["r0", "r0", "r0", None, "r1", "r1", None, None]


def test_regex_is_anchored_to_the_whole_path(tmp_path: Path) -> None:
    text = routes_yaml("path_regex: /v[0-9]+/items")
    got = names(
        tmp_path,
        text,
        [("h", "/v1/items", "GET"), ("h", "/v1/items/x", "GET"), ("h", "/x/v1/items", "GET")],
    )
    assert got == ["r0", None, None]


def test_regex_never_sees_the_query(tmp_path: Path) -> None:
    # oauth2-proxy GHSA-7rh7-c77v-6434: "/private?x=/status" matched "^/.*/status".
    ps = policy(tmp_path, routes_yaml("path_regex: ^/.*/status$"))
    facts = request_facts("GET", "https://h/private?x=/status", "192.0.2.1", {})
    assert (facts.path, facts.query) == ("/private", "x=/status")
    assert ps.match(facts.host, facts.path, facts.method) is None
    facts = request_facts("GET", "https://h/svc/status?x=1", "192.0.2.1", {})
    assert ps.match(facts.host, facts.path, facts.method) is not None


# -- property: the index returns what a linear scan over the documented order returns --
def naive(routes: list[Route], h: str, path: str, method: str) -> Route | None:
    best: tuple[tuple[int, int], tuple[int, int], int] | None = None
    found: Route | None = None
    for r in routes:
        if r.methods is not None and method not in r.methods:
            continue
        if r.host is None:
            host_rank = (2, 0)
        elif r.host.startswith("*."):
            if not h.endswith(r.host[1:]):
                continue
            host_rank = (1, -len(r.host))
        elif r.host == h:
            host_rank = (0, 0)
        else:
            continue
        if r.path_exact is not None:
            if path != r.path_exact:
                continue
            path_rank = (0, 0)
        elif r.path_prefix is not None:
            p = r.path_prefix
            if not (path == p or path.startswith(p if p.endswith("/") else p + "/")):
                continue
            path_rank = (1, -len(p))
        else:
            assert r.path_regex is not None
            if not re.fullmatch(r.path_regex, path):
                continue
            path_rank = (2, 0)
        key = (host_rank, path_rank, r.order)
        if best is None or key < best:
            best, found = key, r
    return found


HOSTS = st.sampled_from(
    [None, "a.example.com", "*.example.com", "*.a.example.com", "b.example.com"]
)
SEGMENTS = st.lists(st.sampled_from(["a", "b", "ab", "c"]), max_size=4)
PATHS = st.builds(
    lambda segs, slash: "/" + "/".join(segs) + ("/" if slash and segs else ""),
    SEGMENTS,
    st.booleans(),
)
METHODS = st.one_of(st.none(), st.sets(st.sampled_from(["GET", "POST"]), min_size=1).map(frozenset))
REGEXES = st.sampled_from(
    [r"/a/.*", r"/[ab]+", r"/(a|b)/c/?", r".*/c", r"/(?P<x>a|b)/(?P=x)", r"/(a)/\1"]
)


@st.composite
def route_lists(draw: st.DrawFn) -> list[Route]:
    out = []
    for i in range(draw(st.integers(0, 12))):
        kind = draw(st.sampled_from(["prefix", "exact", "regex"]))
        path = draw(PATHS)
        out.append(
            Route(
                name=f"r{i}",
                backend="b",
                source="t:1",
                host=draw(HOSTS),
                path_prefix=path if kind == "prefix" else None,
                path_exact=path if kind == "exact" else None,
                path_regex=draw(REGEXES) if kind == "regex" else None,
                methods=draw(METHODS),
                order=i,
            )
        )
    return out


REQUEST_HOSTS = st.sampled_from(
    [
        "a.example.com",
        "x.a.example.com",
        "example.com",
        "B.example.com:8443",
        "a.example.com.",
        "z.org",
    ]
)


@settings(max_examples=400, deadline=None)
@given(route_lists(), REQUEST_HOSTS, PATHS, st.sampled_from(["GET", "POST", "PUT"]))
def test_index_agrees_with_a_linear_scan_in_documented_order(
    routes: list[Route], sent: str, path: str, method: str
) -> None:
    host = parse_host(sent)  # as the edge hands it over
    assert host is not None
    assert RouteIndex(routes).match(host, path, method) is naive(routes, host, path, method)


def test_regexes_are_combined_unless_they_use_numbered_references() -> None:
    combined = combine([r"/a/[0-9]+", r"/a/.*", r"/(?P<x>b)/(?P=x)"])
    assert combined is not None
    found = combined.fullmatch("/a/12")
    assert found is not None and found.lastgroup == "_gh0"
    found = combined.fullmatch("/b/b")
    assert found is not None and found.lastgroup == "_gh2"
    assert combine([r"/(a)/\1", r"/b"]) is None
    assert combine([r"(?i)/a", r"/b"]) is None  # global flags only work alone


def test_a_method_mismatch_on_the_first_regex_falls_through_to_later_regexes(
    tmp_path: Path,
) -> None:
    text = routes_yaml(
        "path_regex: /v[0-9]/.*;methods: [POST]",
        "path_regex: /v1/x;methods: [GET]",
        "path_regex: /v1/.*",
    )
    got = names(
        tmp_path, text, [("h", "/v1/x", "POST"), ("h", "/v1/x", "GET"), ("h", "/v1/x", "PUT")]
    )
    assert got == ["r0", "r1", "r2"]
