"""Reading the original request a data plane asks about (decision mode), in memory."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.errors import BadDecisionRequest, BadHost, RequestRejected
from proxy.http.canonical import PathOptions, canonical_path, split_target
from proxy.http.decision import (
    CLIENT_HEADERS_REMOVED,
    HANDED_OVER,
    DecisionCall,
    OriginalRequest,
    decision_call,
    envoy_removals,
    forwarded_origin,
    login_location,
    original_request,
)
from tests.http.test_canonical import BYPASSES, REJECTED

DECIDE = DecisionCall("decide")


def nginx(uri: str = "/api/x?y=1", **extra: str) -> list[tuple[str, str]]:
    """The headers the shipped nginx configuration writes on its auth subrequest."""
    headers = [
        ("Host", "gatehouse:9000"),
        ("X-Forwarded-Method", "POST"),
        ("X-Forwarded-Uri", uri),
        ("X-Forwarded-Host", "app.example.com:8443"),
        ("X-Forwarded-Proto", "https"),
    ]
    return headers + [(k.replace("_", "-"), v) for k, v in extra.items()]


def read(headers: list[tuple[str, str]], call: DecisionCall = DECIDE) -> OriginalRequest:
    return original_request(call, "GET", headers, scheme="http")


# -- which endpoint -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/.gatehouse/decide", DecisionCall("decide")),
        ("/.gatehouse/decide?from=caddy", DecisionCall("decide")),
        ("/.gatehouse/auth", DecisionCall("auth")),
        ("/.gatehouse/ext_authz/api/x?y=1", DecisionCall("ext_authz", "/api/x?y=1")),
        ("/.gatehouse/ext_authz/", DecisionCall("ext_authz", "/")),
        # Envoy appends the original target as sent: it is never resolved against ours.
        ("/.gatehouse/ext_authz/../decide", DecisionCall("ext_authz", "/../decide")),
        ("/.gatehouse/ext_authz//admin", DecisionCall("ext_authz", "//admin")),
    ],
)
def test_a_decision_endpoint_is_named_exactly(target: str, expected: DecisionCall) -> None:
    assert decision_call(target) == expected


@pytest.mark.parametrize(
    "target",
    [
        "/.gatehouse/decide/",
        "/.gatehouse//decide",
        "/.gatehouse/%64ecide",
        "/.gatehouse/ext_authz",
        "/.gatehouse/ext_authz?x=/api",
        "/.gatehouse/ext_authzx/api",
        "/.gatehouse/login",
        "/api/.gatehouse/decide",
        "/",
    ],
)
def test_other_spellings_are_not_decision_endpoints(target: str) -> None:
    assert decision_call(target) is None


# -- forward-auth headers (decide, auth) -------------------------------------------------
def test_the_original_request_comes_from_the_forwarded_headers() -> None:
    original = read(nginx())
    assert original == OriginalRequest(
        method="POST",
        path="/api/x",
        query="y=1",
        authority="app.example.com:8443",
        host="app.example.com",
        proto="https",
        target="/api/x?y=1",
    )


def test_the_x_original_spellings_say_the_same() -> None:
    headers = [
        ("X-Original-Method", "DELETE"),
        ("X-Original-URI", "/api/x"),
        ("Host", "app.example.com"),
    ]
    original = read(headers)
    assert (original.method, original.path, original.host) == (
        "DELETE",
        "/api/x",
        "app.example.com",
    )


def test_both_spellings_with_one_value_are_one_value() -> None:
    original = read(nginx("/api/x", X_Original_URI="/api/x", X_Original_Method="POST"))
    assert (original.method, original.path) == ("POST", "/api/x")


@pytest.mark.parametrize(
    "conflict",
    [
        [("X-Original-URI", "/public")],  # a client's header the data plane passed on
        [("X-Forwarded-Uri", "/public")],  # a second line of the same field
        [("x-forwarded-uri", "/public")],
        [("X_Forwarded_Uri", "/public")],  # the spelling some servers fold into the same
        [("X-Original-Method", "GET")],
        [("X-Forwarded-Method", "GET")],
        [("X-Forwarded-Host", "evil.example")],
        [("X-Forwarded-Proto", "http")],
        [("X-Request-Id", "a"), ("X-Request-Id", "b")],
    ],
)
def test_two_different_values_for_one_aspect_are_refused(conflict: list[tuple[str, str]]) -> None:
    with pytest.raises(BadDecisionRequest) as err:
        read(nginx() + conflict)
    assert err.value.status == 400
    assert err.value.reason == "bad_decision_request"


def test_a_missing_uri_is_refused() -> None:
    headers = [h for h in nginx() if h[0] != "X-Forwarded-Uri"]
    with pytest.raises(BadDecisionRequest):
        read(headers)
    with pytest.raises(BadDecisionRequest):
        read([*headers, ("X-Forwarded-Uri", "")])


def test_a_missing_method_is_refused_rather_than_taken_from_the_subrequest() -> None:
    # nginx's auth subrequest is a GET whatever the original was: never decide a POST as a GET.
    headers = [h for h in nginx() if h[0] != "X-Forwarded-Method"]
    with pytest.raises(BadDecisionRequest):
        read(headers)


@pytest.mark.parametrize("method", ["GE T", "GET\r\nX: y", "", "G" * 40, "GET/"])
def test_a_method_that_is_not_a_token_is_refused(method: str) -> None:
    headers = [h for h in nginx() if h[0] != "X-Forwarded-Method"]
    with pytest.raises(BadDecisionRequest):
        read([*headers, ("X-Forwarded-Method", method)])


def test_the_proto_defaults_to_the_listener_and_must_be_http_or_https() -> None:
    headers = [h for h in nginx() if h[0] != "X-Forwarded-Proto"]
    assert original_request(DECIDE, "GET", headers, scheme="https").proto == "https"
    assert read([*headers, ("X-Forwarded-Proto", "HTTPS")]).proto == "https"
    with pytest.raises(BadDecisionRequest):
        read([*headers, ("X-Forwarded-Proto", "https, http")])


def test_the_host_falls_back_to_host_and_obeys_the_host_grammar() -> None:
    headers = [h for h in nginx() if h[0] != "X-Forwarded-Host"]
    assert read(headers).authority == "gatehouse:9000"
    for bad in ("evil.com/admin", "user@evil.com", "a b", "a.com, b.com"):
        with pytest.raises(BadHost):
            read([*headers, ("X-Forwarded-Host", bad)])


def test_an_absolute_form_target_is_matched_on_its_path() -> None:
    original = read(nginx("http://other.example/api/x?y=1"))
    assert (original.path, original.query, original.host) == ("/api/x", "y=1", "app.example.com")


@pytest.mark.parametrize(("sent", "_canonical"), BYPASSES)
def test_a_target_not_in_canonical_form_is_refused(sent: str, _canonical: str) -> None:
    # The data plane forwards the target as sent: deciding on its canonical form
    # would be deciding on a path the upstream never receives.
    with pytest.raises(RequestRejected) as err:
        read(nginx(sent))
    assert err.value.reason == "bad_path"


@pytest.mark.parametrize("sent", [t for t in REJECTED if t.startswith("/")])
def test_a_target_the_proxy_refuses_is_refused(sent: str) -> None:
    with pytest.raises(RequestRejected) as err:
        read(nginx(sent))
    assert err.value.reason == "bad_path"


def test_the_listener_path_options_apply() -> None:
    allow = PathOptions(allow_encoded_slash=True, allow_semicolon=True)
    original = original_request(
        DECIDE, "GET", nginx("/files/a%2Fb;v=1?x=/admin"), scheme="http", options=allow
    )
    assert (original.path, original.query) == ("/files/a%2Fb;v=1", "x=/admin")


# -- Envoy ext_authz --------------------------------------------------------------------
def test_ext_authz_takes_target_method_and_host_from_the_request_itself() -> None:
    headers = [
        ("Host", "app.example.com"),
        ("X-Forwarded-Proto", "https"),
        # A client's headers Envoy passed through: never the truth about the request.
        ("X-Forwarded-Uri", "/public"),
        ("X-Original-URI", "/other"),
        ("X-Forwarded-Method", "GET"),
        ("X-Forwarded-Host", "evil.example"),
    ]
    original = original_request(
        DecisionCall("ext_authz", "/api/x?y=1"), "DELETE", headers, scheme="http"
    )
    assert (original.method, original.path, original.query) == ("DELETE", "/api/x", "y=1")
    assert (original.authority, original.proto) == ("app.example.com", "https")


def test_ext_authz_refuses_a_target_that_is_not_canonical() -> None:
    with pytest.raises(RequestRejected):
        original_request(DecisionCall("ext_authz", "/../decide"), "GET", [], scheme="http")


# -- properties -----------------------------------------------------------------------
# Pieces of paths: plain characters, escapes that decode or are refused, dots, slashes.
_PIECES = [
    *"abcAZ09-._~;:@!$&'()*+,= \\#?/",
    "%2e",
    "%2E",
    "%41",
    "%2F",
    "%7e",
    "%C3%A9",
    "é",
    "..",
]
_segment = st.lists(st.sampled_from(_PIECES), max_size=6).map("".join)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(_segment, max_size=5)
    .map(lambda parts: "/" + "/".join(parts))
    .filter(lambda target: target == target.strip())  # header values carry no outer spaces
)
def test_a_decision_is_made_on_exactly_the_path_the_data_plane_forwards(target: str) -> None:
    raw_path = split_target(target)[0] if "#" not in target else None
    try:
        original = read(nginx(target))
    except RequestRejected:
        # Refused exactly when the proxy refuses it, or its canonical form differs.
        if raw_path is not None:
            with contextlib.suppress(RequestRejected):
                assert canonical_path(raw_path) != raw_path
        return
    assert raw_path is not None
    assert original.path == raw_path == canonical_path(raw_path)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["/api/x", "/public", "/"]),
    st.sampled_from(["/api/x", "/public", "/admin", "/"]),
    st.permutations(range(2)),
)
def test_two_uri_headers_decide_only_when_they_agree(
    first: str, second: str, order: list[int]
) -> None:
    both = [("X-Forwarded-Uri", first), ("X-Original-URI", second)]
    headers = [h for h in nginx() if h[0] != "X-Forwarded-Uri"] + [both[i] for i in order]
    if first == second:
        assert read(headers).path == first
    else:
        with pytest.raises(BadDecisionRequest):
            read(headers)


# -- Gatehouse's own paths and the login redirect ----------------------------------------
def test_a_trusted_data_plane_names_the_host_the_user_sees() -> None:
    view = {"host": "gatehouse:9000", "x-forwarded-host": "app.example.com:8443"}
    view["x-forwarded-proto"] = "https"
    assert forwarded_origin(view, True, "http") == ("app.example.com:8443", "https")
    assert forwarded_origin(view, False, "http") == ("gatehouse:9000", "http")
    assert forwarded_origin({"host": "h"}, True, "http") == ("h", "http")


def test_the_login_location_is_on_the_users_host_and_carries_the_original_target() -> None:
    original = read(nginx("/app/page?a=1&b=/x"))
    assert login_location(original) == (
        "https://app.example.com:8443/.gatehouse/login?rd=/app/page%3Fa%3D1%26b%3D/x"
    )
    hostless = original._replace(authority="")
    assert login_location(hostless) == "/.gatehouse/login?rd=/app/page%3Fa%3D1%26b%3D/x"


def test_envoy_is_told_to_remove_every_handed_over_header_the_answer_lacks() -> None:
    answer = [("X-Gatehouse-Subject", "alice"), ("x-serverless-authorization", "Bearer t")]
    removed = envoy_removals(answer, frozenset({"x-api-key"})).split(", ")
    assert "x-gatehouse-subject" not in removed and "x-serverless-authorization" not in removed
    assert {"authorization", "cookie", "x-gatehouse-assertion", "x-forwarded-user"} <= set(removed)
    assert removed == sorted(removed)
    everything = {n.lower() for n in HANDED_OVER} | set(CLIENT_HEADERS_REMOVED)
    assert set(envoy_removals([], frozenset()).split(", ")) == everything
