"""The canonical path is the one policy matches and the one the upstream receives."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.errors import RequestRejected
from proxy.http.canonical import PathOptions, canonical_path, canonicalise_target

# Every path-confusion case from REFERENCE.md, with the only acceptable outcome.
BYPASSES = [
    ("/public/../admin", "/admin"),  # Envoy CVE-2019-9901: resolved, then matched as /admin
    ("/public/%2e%2e/admin", "/admin"),
    ("/public/%2E%2E/admin", "/admin"),
    ("/public/.%2e/admin", "/admin"),
    ("/public/./admin", "/public/admin"),
    ("//admin", "/admin"),  # Istio CVE-2021-31920: merged, then matched as /admin
    ("/public//..//admin", "/admin"),
    ("/a/b/../../admin/", "/admin/"),
    ("/%61dmin", "/admin"),  # unreserved decoded, so a rule on /admin sees it
]

REJECTED = [
    "/public%2F..%2Fadmin",  # Envoy CVE-2021-29492: encoded slash
    "/public%2f..%2fadmin",
    "/admin;jsessionid=x",  # istio#27409: path parameters
    "/public;/../admin",
    "/public/..;/admin",
    "/admin#frag",  # Envoy CVE-2021-32779
    "/public/%5c../admin",  # encoded backslash
    "/public\\..\\admin",
    "/a%00b",
    "/../etc/passwd",
    "/%2e%2e/etc",
    "/a%zz",
    "/a%4",
    "*",
    "example.com:443",
]


@pytest.mark.parametrize(("raw", "expected"), BYPASSES)
def test_path_bypass_attempts_resolve_to_the_path_the_upstream_would_serve(
    raw: str, expected: str
) -> None:
    assert canonicalise_target(raw)[0] == expected


@pytest.mark.parametrize("raw", REJECTED)
def test_ambiguous_paths_are_rejected_with_bad_path(raw: str) -> None:
    with pytest.raises(RequestRejected) as info:
        canonicalise_target(raw)
    assert info.value.status == 400
    assert info.value.reason == "bad_path"


def test_query_is_split_off_and_never_canonicalised() -> None:
    # oauth2-proxy GHSA-7rh7-c77v-6434: the query must not take part in matching.
    assert canonicalise_target("/private?x=/status/../a") == ("/private", "x=/status/../a")


def test_absolute_form_target_is_matched_on_its_path() -> None:
    assert canonicalise_target("http://evil.example/public/../admin?q=1") == ("/admin", "q=1")
    assert canonicalise_target("https://h") == ("/", "")
    assert canonicalise_target("http://h?x") == ("/", "x")


def test_reserved_escapes_stay_encoded_with_uppercase_hex() -> None:
    assert canonical_path("/a%3bb%2cc%20d") == "/a%3Bb%2Cc%20d"


def test_non_ascii_is_sent_percent_encoded_as_utf8() -> None:
    assert canonical_path("/caf\u00e9") == "/caf%C3%A9"


def test_encoded_slash_and_semicolon_can_be_allowed_explicitly() -> None:
    options = PathOptions(allow_encoded_slash=True, allow_semicolon=True)
    assert canonical_path("/a%2fb;c", options) == "/a%2Fb;c"


def test_trailing_slash_is_preserved() -> None:
    assert canonical_path("/a/b/") == "/a/b/"
    assert canonical_path("/a/b/.") == "/a/b/"
    assert canonical_path("/") == "/"


segment = st.one_of(
    st.sampled_from(
        ["", ".", "..", "%2e", "%2E%2e", "a", "b", "%41", "%2F", "%5C", ";x", "%3B", "~"]
    ),
    st.text(alphabet="abcXYZ09-._~!$&'()*+,=:@%", min_size=1, max_size=6),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(segment, min_size=0, max_size=8), st.booleans())
def test_canonicalisation_is_idempotent_and_yields_a_clean_path(
    segments: list[str], trailing: bool
) -> None:
    raw = "/" + "/".join(segments) + ("/" if trailing else "")
    try:
        path = canonical_path(raw)
    except RequestRejected:
        return
    # The canonical form is stable: canonicalising it again changes nothing,
    # so the matcher and the upstream can never disagree about it.
    assert canonical_path(path) == path
    assert path.startswith("/")
    assert "//" not in path
    parts = path.split("/")
    assert "." not in parts and ".." not in parts
    assert "%2F" not in path.upper() and "\\" not in path and ";" not in path
