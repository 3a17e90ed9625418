"""Hop-by-hop, Connection tokens and namespace stripping before the proxy adds its own."""

from __future__ import annotations

from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.errors import AmbiguousRequest, IdentityTooLarge, RequestRejected
from proxy.http.headers import (
    SINGLE_VALUED,
    RequestHeaderPolicy,
    filter_request_headers,
    filter_response_headers,
    identity_headers,
    method_override,
    request_view,
    serialise_head,
    upstream_cookie,
)


def names(headers: list[tuple[str, str]]) -> list[str]:
    return [n.lower() for n, _ in headers]


def test_hop_by_hop_headers_are_removed() -> None:
    out = filter_request_headers(
        [
            ("Connection", "keep-alive"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Trailer", "X"),
            ("Transfer-Encoding", "chunked"),
            ("Upgrade", "h2c"),
            ("Proxy-Authorization", "Basic x"),
            ("Proxy-Connection", "keep-alive"),
            ("Accept", "*/*"),
        ]
    )
    assert names(out) == ["accept"]


def test_every_header_named_in_connection_is_removed() -> None:
    out = filter_request_headers(
        [
            ("Connection", "close, X-Secret ,x-other"),
            ("X-Secret", "1"),
            ("X-Other", "2"),
            ("X-Kept", "3"),
        ]
    )
    assert names(out) == ["x-kept"]


def test_connection_tokens_cannot_remove_headers_the_proxy_adds_afterwards() -> None:
    # Traefik CVE-2024-45410: the client names our header in Connection; since
    # tokens apply to the client's headers only, what we add later survives.
    policy = RequestHeaderPolicy(set=(("X-Env", "prod"),))
    out = filter_request_headers([("Connection", "X-Env, X-Forwarded-For")], policy)
    assert out == [("X-Env", "prod")]


def test_namespace_headers_are_removed_whatever_their_case_or_underscores() -> None:
    # oauth2-proxy CVE-2025-64484: X_Forwarded-Email and friends.
    out = filter_request_headers(
        [
            ("X-Gatehouse-Subject", "admin"),
            ("x_gatehouse_groups", "admins"),
            ("X_Forwarded-Email", "a@b"),
            ("X-FORWARDED-USER", "root"),
            ("x-auth-request-email", "a@b"),
            ("X_Forwarded_For", "1.2.3.4"),
            ("X-Forwarded-Uri", "/public"),
            ("X-Envoy-Original-Path", "/public"),
            ("X-Ok", "1"),
        ]
    )
    assert names(out) == ["x-ok"]


def test_authorization_and_gatehouse_cookies_are_dropped_unless_the_route_passes_them() -> None:
    headers = [
        ("Authorization", "Bearer t"),
        ("Cookie", "__Host-gatehouse=s; app=1; gatehouse_csrf=2"),
    ]
    assert filter_request_headers(headers) == [("Cookie", "app=1")]
    passed = filter_request_headers(
        headers, RequestHeaderPolicy(pass_authorization=True, pass_cookies=True)
    )
    assert passed == headers


def test_route_removals_and_additions_apply() -> None:
    policy = RequestHeaderPolicy(remove=frozenset({"x-debug"}), set=(("X-Env", "prod"),))
    assert filter_request_headers([("X_Debug", "1"), ("A", "b")], policy) == [
        ("A", "b"),
        ("X-Env", "prod"),
    ]


def test_client_forwarding_and_request_id_headers_are_never_passed_through() -> None:
    out = filter_request_headers(
        [
            ("Host", "a"),
            ("Forwarded", "for=1.1.1.1"),
            ("X-Real-IP", "1.1.1.1"),
            ("X-Request-Id", "r"),
            ("traceparent", "t"),
            ("Expect", "100-continue"),
            ("Content-Length", "5"),
        ]
    )
    assert out == []


def test_response_hop_by_hop_and_connection_tokens_are_removed() -> None:
    out = filter_response_headers(
        [
            (b"Connection", b"X-Upstream-Private"),
            (b"X-Upstream-Private", b"s"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Content-Length", b"3"),
            (b"Set-Cookie", b"a=b"),
            (b"Content-Encoding", b"gzip"),
        ]
    )
    assert out.lines == [b"Set-Cookie: a=b", b"Content-Encoding: gzip"]


def test_a_connection_token_named_ahead_of_its_header_still_removes_it() -> None:
    out = filter_response_headers(
        [
            (b"x-upstream-private", b"s"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Connection", b"keep-alive, X-Upstream-PRIVATE"),
        ]
    )
    assert out.lines == []


def test_the_upstreams_request_id_is_dropped_and_its_server_and_date_are_noted() -> None:
    out = filter_response_headers(
        [
            (b"Server", b"nginx"),
            (b"date", b"Sat, 21 Nov 2026 20:00:00 GMT"),
            (b"X-Request-Id", b"theirs"),
            (b"Content-Type", b"application/json"),
        ]
    )
    assert out.lines == [
        b"Server: nginx",
        b"date: Sat, 21 Nov 2026 20:00:00 GMT",
        b"Content-Type: application/json",
    ]
    assert out.has_server and out.has_date
    bare = filter_response_headers([(b"Content-Type", b"text/plain")])
    assert not bare.has_server and not bare.has_date


def test_identity_headers_encode_what_cannot_travel_and_say_when_groups_are_cut() -> None:
    out = dict(
        identity_headers("alice\r\nX-Evil: 1", "a@example.com", ["eng", "ops,x"], groups_budget=8)
    )
    assert out["X-Gatehouse-Subject"] == "alice%0D%0AX-Evil: 1"
    assert out["X-Gatehouse-Email"] == "a@example.com"
    assert out["X-Gatehouse-Groups"] == "eng"
    assert out["X-Gatehouse-Groups-Truncated"] == "true"
    whole = dict(identity_headers("alice", None, ["eng", "ops,x"]))
    assert whole["X-Gatehouse-Groups"] == "eng,ops%2Cx"
    assert "X-Gatehouse-Groups-Truncated" not in whole


def test_a_configured_session_cookie_name_is_stripped_too() -> None:
    policy = RequestHeaderPolicy(cookie_prefixes=("__Host-gatehouse", "gatehouse", "__Host-sso"))
    out = filter_request_headers([("Cookie", "__Host-sso=s; __Host-sso-1=c; app=1")], policy)
    assert out == [("Cookie", "app=1")]


def test_the_upstream_cookie_a_decision_hands_back_is_the_clients_without_ours() -> None:
    prefixes = ("__Host-gatehouse", "gatehouse")
    lines = [("Cookie", "__Host-gatehouse=s; app=1"), ("cookie", "gatehouse-login=x; b=2")]
    assert upstream_cookie(lines, prefixes) == "app=1; b=2"
    # All ours: an empty value, so a data plane copying it removes the client's.
    assert (
        upstream_cookie([("Cookie", "__Host-gatehouse-0=a; __Host-gatehouse-1=b")], prefixes) == ""
    )
    assert upstream_cookie([("Accept", "*/*")], prefixes) is None


def test_a_header_name_seen_under_one_policy_is_judged_afresh_under_another() -> None:
    # Verdicts are remembered per policy: a route passing Authorization must not
    # teach a route that strips it (or the other way round).
    passing = RequestHeaderPolicy(pass_authorization=True)
    stripping = RequestHeaderPolicy()
    request = [("Authorization", "Bearer t"), ("Accept", "*/*")]
    for _ in range(2):
        assert names(filter_request_headers(request, passing)) == ["authorization", "accept"]
        assert names(filter_request_headers(request, stripping)) == ["accept"]


def test_connection_tokens_apply_per_request_even_for_names_seen_before() -> None:
    policy = RequestHeaderPolicy()
    kept = filter_request_headers([("X-Secret", "1"), ("Connection", "keep-alive")], policy)
    dropped = filter_request_headers([("X-Secret", "1"), ("Connection", "x-secret")], policy)
    assert names(kept) == ["x-secret"] and dropped == []
    response = [(b"X-Private", b"1"), (b"Connection", b"X-Private")]
    assert filter_response_headers(response).lines == []
    assert filter_response_headers([(b"X-Private", b"1")]).lines == [b"X-Private: 1"]


def test_a_flood_of_distinct_header_names_is_still_filtered_once_the_memory_is_full() -> None:
    policy = RequestHeaderPolicy()
    flood = [(f"X-Junk-{i}", "1") for i in range(3000)]
    assert len(filter_request_headers(flood, policy)) == 3000
    late = [("X-Gatehouse-Subject", "admin"), ("Authorization", "Bearer t"), ("X-Ok", "1")]
    assert filter_request_headers(late, policy) == [("X-Ok", "1")]
    long_names = [("X-Gatehouse-" + "a" * 5000, "v"), ("X-" + "b" * 5000, "w")]
    assert filter_request_headers(long_names, policy) == [("X-" + "b" * 5000, "w")]
    assert len(policy._verdicts) <= 128  # what a flood leaves behind stays small


def test_identity_headers_encode_tab_and_delete_characters_and_return_a_fresh_list() -> None:
    groups = frozenset({"eng"})
    first = identity_headers("al\tice\x7f", None, groups)
    first.append(("X-Mine", "1"))
    assert identity_headers("al\tice\x7f", None, groups) == [
        ("X-Gatehouse-Subject", "al%09ice%7F"),
        ("X-Gatehouse-Groups", "eng"),
    ]


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("adm,in", "admin"),
        ("alice\u200b", "alice"),
        ("alice\x00", "alice"),
        ("al%69ce", "alice"),  # a literal percent sign never reads as an escape
        ("ALICE", "alice"),
        ("contractors ", "contractors"),
    ],
)
def test_distinct_identity_values_never_reach_the_upstream_as_one(one: str, other: str) -> None:
    assert identity_headers(one, None, [one]) != identity_headers(other, None, [other])


@given(st.text(max_size=60), st.lists(st.text(max_size=20), max_size=6))
def test_identity_headers_are_header_safe_and_decode_back_to_the_claims(
    subject: str, groups: list[str]
) -> None:
    out = dict(identity_headers(subject, None, frozenset(groups)))
    for value in out.values():
        assert value.isascii() and value.isprintable()
    assert unquote(out["X-Gatehouse-Subject"], errors="surrogatepass") == subject
    sent = out.get("X-Gatehouse-Groups")
    decoded = [unquote(g, errors="surrogatepass") for g in sent.split(",")] if sent else []
    assert decoded == sorted(g for g in set(groups) if g)


def test_a_subject_too_long_to_pass_whole_is_refused_not_cut() -> None:
    with pytest.raises(IdentityTooLarge):
        identity_headers("a" * 5000, None, [])
    with pytest.raises(IdentityTooLarge):
        identity_headers("alice", "\u00e9" * 1500 + "@example.com", [])


# -- the request view: single-valued fields and our cookies ----------------------
@pytest.mark.parametrize(
    "headers",
    [
        [("Authorization", "Bearer a"), ("Authorization", "Bearer b")],
        [("Authorization", "Bearer a"), ("authorization", "Bearer a")],  # same value, case
        [("AUTHORIZATION", "Bearer a"), ("Authorization", "Bearer b")],
        [("X-Api-Key", "gh_a.b"), ("X-Api-Key", "gh_c.d")],
        [("X-Api-Key", "gh_a.b"), ("X_Api_Key", "gh_c.d")],  # "_" spelling of the same name
        [("x_api_key", "gh_a.b"), ("X-API-KEY", "gh_a.b")],
        [("Host", "a"), ("Host", "b")],
        [("Host", "a"), ("host", "a")],
        [("Content-Length", "5"), ("Content-Length", "5")],
        [("Content-Length", "5"), ("Content_Length", "7")],
        [("Cookie", "__Host-gatehouse-session=a; __Host-gatehouse-session=b")],
        [("Cookie", "__Host-gatehouse-session=a"), ("Cookie", "__Host-gatehouse-session=b")],
        [("Cookie", "__Host-gatehouse-session=a; __HOST-gatehouse-session=b")],
        [("Cookie", "app=1; gatehouse-login=a"), ("cookie", "gatehouse-login=b")],
    ],
)
def test_a_single_valued_field_sent_twice_in_any_spelling_is_ambiguous(
    headers: list[tuple[str, str]],
) -> None:
    with pytest.raises(AmbiguousRequest):
        request_view(headers, SINGLE_VALUED | {"x-api-key"}, ("__host-gatehouse", "gatehouse"))


def test_lists_and_other_cookies_may_repeat_and_forwarding_lines_are_joined() -> None:
    view = request_view(
        [
            ("Accept", "a"),
            ("accept", "b"),
            ("Cookie", "app=1; app=2"),
            ("Cookie", "theme=dark"),
            ("X-Forwarded-For", "1.1.1.1"),
            ("X-Forwarded-For", "203.0.113.9"),
            ("Authorization", "Bearer a"),
        ],
        SINGLE_VALUED,
        ("__host-gatehouse", "gatehouse"),
    )
    assert view["accept"] == "a"
    assert view["cookie"] == "app=1; app=2"
    assert view["x-forwarded-for"] == "1.1.1.1, 203.0.113.9"
    assert view["authorization"] == "Bearer a"


@pytest.mark.parametrize(
    "name",
    ["X-HTTP-Method-Override", "x-http-method", "X-Method-Override", "X_HTTP_Method_Override"],
)
def test_method_override_headers_are_never_forwarded_unless_the_route_opts_in(name: str) -> None:
    request = [(name, "DELETE"), ("Accept", "*/*")]
    assert names(filter_request_headers(request, RequestHeaderPolicy())) == ["accept"]
    passing = RequestHeaderPolicy(pass_method_override=True)
    assert names(filter_request_headers(request, passing)) == [name.lower(), "accept"]


def test_a_head_is_its_lines_joined_by_crlf_and_ended_by_an_empty_line() -> None:
    expected = b"HTTP/1.1 200 OK\r\nX-A: 1\r\nX-B: \xe9\r\n\r\n"
    assert serialise_head(["HTTP/1.1 200 OK", "X-A: 1", "X-B: \xe9"]) == expected
    assert serialise_head([b"HTTP/1.1 200 OK", b"X-A: 1", b"X-B: \xe9"]) == expected


@pytest.mark.parametrize("value", ["a\rInjected: 1", "a\nInjected: 1", "a\r\nInjected: 1"])
def test_a_line_break_inside_a_header_line_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="line break"):
        serialise_head(["GET / HTTP/1.1", f"X-A: {value}"])
    with pytest.raises(ValueError, match="line break"):
        serialise_head([b"HTTP/1.1 200 OK", f"X-A: {value}".encode()])


@pytest.mark.parametrize(
    ("view", "expected"),
    [
        ({}, None),
        ({"accept": "*/*"}, None),
        ({"x-http-method-override": "DELETE"}, "DELETE"),
        ({"x_http_method": " PUT "}, "PUT"),
        ({"x-http-method-override": "PUT", "x-method-override": "PUT"}, "PUT"),
    ],
)
def test_the_method_a_request_asks_to_run_as(view: dict[str, str], expected: str | None) -> None:
    assert method_override(view) == expected


def test_method_overrides_that_disagree_are_ambiguous_and_odd_ones_refused() -> None:
    with pytest.raises(AmbiguousRequest):
        method_override({"x-http-method-override": "PUT", "x-http-method": "DELETE"})
    for odd in ("delete", "DEL ETE", "", "X" * 30):
        with pytest.raises(RequestRejected):
            method_override({"x-http-method-override": odd})
