"""The rules for Gatehouse's own calls to other services: acceptable URLs, backoff.

Bounded reads are tested against real endpoints where they are used
(tests/credentials: a token endpoint's and a metadata server's oversized answers).
"""

from __future__ import annotations

import pytest

from proxy.outbound import backoff_delay, is_loopback_host, url_problem


def test_backoff_is_full_jitter_under_an_exponential_ceiling() -> None:
    base, maximum = 0.1, 1.0
    ceilings = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    for retry, ceiling in enumerate(ceilings, start=1):
        assert backoff_delay(retry, base, maximum, 0.0) == 0.0
        assert backoff_delay(retry, base, maximum, 0.5) == pytest.approx(ceiling / 2)
        assert backoff_delay(retry, base, maximum, 0.999999) < ceiling
        assert backoff_delay(retry, base, maximum, 0.999999) == pytest.approx(ceiling, rel=1e-5)
    assert backoff_delay(60, base, maximum, 0.999) <= maximum


@pytest.mark.parametrize(
    "url",
    [
        "https://idp.example.com/",
        "https://idp.example.com:8443/x",
        "http://127.0.0.1:9000/",
        "http://localhost/token",
        "http://[::1]:8080/",
    ],
)
def test_https_anywhere_and_plain_http_to_loopback_may_be_called(url: str) -> None:
    assert url_problem(url) is None


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://idp.example.com/", "must use https://"),
        ("http://10.0.0.1/", "must use https://"),
        ("ftp://idp.example.com/", "must be an absolute https:// URL"),
        ("/relative", "must be an absolute https:// URL"),
        ("https://user:pw@idp.example.com/", "must not carry credentials"),
        ("https://idp.example.com/#x", "must not carry credentials or a fragment"),
        ("https://idp.example.com:99999/", "is not a valid URL"),
    ],
)
def test_anything_else_is_refused_saying_why(url: str, problem: str) -> None:
    assert (url_problem(url) or "").startswith(problem)


def test_loopback_is_localhost_or_a_loopback_address() -> None:
    assert all(map(is_loopback_host, ["localhost", "127.0.0.1", "127.8.9.1", "::1", "[::1]"]))
    assert not any(map(is_loopback_host, ["example.com", "10.0.0.1", "", "localhost.evil"]))
