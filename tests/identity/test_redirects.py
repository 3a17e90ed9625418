"""Post-login redirect targets (open-redirect cases) and API-call detection."""

from __future__ import annotations

import pytest

from proxy.identity.redirects import is_api_request, safe_redirect_target

ALLOWED = ("app.example.test", "ops.example.test:8443")


@pytest.mark.parametrize(
    "target",
    ["/", "/private", "/a/b?x=1&y=%2F", "/search?q=hello%20world", "/p#frag"],
)
def test_relative_paths_are_accepted(target: str) -> None:
    assert safe_redirect_target(target, ALLOWED) == target


@pytest.mark.parametrize(
    "target",
    [
        "//evil.com",
        "//evil.com/path",
        "/\\evil.com",
        "\\\\evil.com",
        "/%5Cevil.com",
        "/%2F/evil.com",
        "/%2f%2fevil.com",
        "/\t/evil.com",
        "/%09/evil.com",
        "/%0d%0a/evil.com",
        "/%250d/evil.com",
        " /evil",
        "/ /evil.com",
        "https://evil.com",
        "http://app.example.test/",
        "https://app.example.test.evil.com/",
        "https://badapp.example.test/",
        "https://app.example.test@evil.com/",
        "https://evil.com@app.example.test/",
        "https://evil.com\\@app.example.test/",
        "https://ops.example.test/",
        "javascript:alert(1)",
        "data:text/html,x",
        "evil.com",
        "",
        "/" + "a" * 5000,
    ],
)
def test_open_redirect_targets_are_refused(target: str) -> None:
    assert safe_redirect_target(target, ALLOWED) is None


def test_configured_hosts_match_exactly_after_parsing() -> None:
    assert safe_redirect_target("https://app.example.test/x?y=1", ALLOWED)
    assert safe_redirect_target("https://APP.example.test/x", ALLOWED)
    assert safe_redirect_target("https://app.example.test:443/x", ALLOWED)
    assert safe_redirect_target("https://ops.example.test:8443/x", ALLOWED)
    assert safe_redirect_target("https://app.example.test:8443/x", ALLOWED) is None


def test_api_calls_are_recognised() -> None:
    html = "text/html,application/xhtml+xml,*/*;q=0.8"
    assert not is_api_request("GET", {"accept": html})
    assert is_api_request("GET", {"accept": "application/json"})
    assert is_api_request("GET", {})
    assert is_api_request("GET", {"accept": html, "x-requested-with": "XMLHttpRequest"})
    assert is_api_request("POST", {"accept": html})
