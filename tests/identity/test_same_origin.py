"""Which cookie-carrying requests come from a page of this origin (pure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from proxy.identity.same_origin import changes_state, from_this_origin, is_unsafe

HOST = {"host": "app.example.com"}


def test_fetch_metadata_decides_when_the_browser_sends_it() -> None:
    assert from_this_origin({**HOST, "sec-fetch-site": "same-origin"})
    assert from_this_origin({**HOST, "sec-fetch-site": "none"})  # typed URL, bookmark
    for site in ("same-site", "cross-site", "", "SAME-SITE"):
        # Even with a matching Origin: the browser's own account wins.
        headers = {**HOST, "sec-fetch-site": site, "origin": "https://app.example.com"}
        assert not from_this_origin(headers)


def test_origin_must_be_exactly_this_scheme_host_and_port() -> None:
    for origin in (
        "https://app.example.com",
        "https://app.example.com:443",
        "HTTPS://APP.example.com",
    ):
        assert from_this_origin({**HOST, "origin": origin}), origin
    for origin in (
        "https://evil.example.com",
        "https://app.example.com.evil.com",
        "https://sub.app.example.com",
        "http://app.example.com",  # the plain-http site of the same host
        "https://app.example.com:8443",
        "null",
        "https://app.example.com/path",
        "https://user@app.example.com",
        "",
    ):
        assert not from_this_origin({**HOST, "origin": origin}), origin


def test_ports_and_the_listeners_own_scheme_count() -> None:
    headers = {"host": "localhost:8443", "origin": "https://localhost:8443"}
    assert from_this_origin(headers)
    assert not from_this_origin({**headers, "origin": "https://localhost:9443"})
    plain = {"host": "127.0.0.1:8080", "origin": "http://127.0.0.1:8080"}
    assert from_this_origin(plain, "http")
    assert not from_this_origin(plain, "https")


def test_without_either_header_no_request_is_from_this_origin() -> None:
    assert not from_this_origin(HOST)
    assert not from_this_origin({"origin": "https://app.example.com"})  # and no Host


LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)


@given(LABEL, LABEL, st.sampled_from(["", ":443", ":8443"]))
def test_an_origin_passes_exactly_when_it_is_the_host_the_browser_used(
    ours: str, theirs: str, port: str
) -> None:
    host = {"host": f"{ours}.example.com{port}"}
    same = from_this_origin({**host, "origin": f"https://{theirs}.example.com{port}"})
    assert same is (ours == theirs)


def test_unsafe_methods() -> None:
    assert [
        m for m in ("GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE") if is_unsafe(m)
    ] == [
        "POST",
        "PUT",
        "PATCH",
        "DELETE",
    ]
    assert is_unsafe("PROPFIND")


def test_a_websocket_handshake_changes_state_like_an_unsafe_method() -> None:
    assert changes_state("GET", {"upgrade": "WebSocket"})
    assert changes_state("POST", {})
    assert not changes_state("GET", {"upgrade": "h2c"})
    assert not changes_state("GET", {})
