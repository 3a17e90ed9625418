"""The Host grammar (RFC 9110 §7.2, RFC 3986 §3.2.2) and its normal form."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.http.host import is_host_name, normalise_host, parse_host, valid_forwarded_host


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("api.example.com", "api.example.com"),
        ("API.Example.COM", "api.example.com"),
        ("api.example.com.", "api.example.com"),
        ("api.example.com:8443", "api.example.com"),
        ("api.example.com:", "api.example.com"),  # RFC 3986: the port may be empty
        ("10.0.0.7:80", "10.0.0.7"),
        ("[::1]", "[::1]"),
        ("[::1]:8443", "[::1]"),
        ("[0:0:0:0:0:0:0:1]", "[::1]"),
        ("[FD00::2]", "[fd00::2]"),
        ("my_service", "my_service"),
        ("localhost:65535", "localhost"),
        ("", ""),
    ],
)
def test_a_well_formed_host_is_normalised(value: str, expected: str) -> None:
    assert parse_host(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "evil.com/admin",  # path
        "evil.com\\admin",
        "a b",  # space
        "user@evil.com",  # userinfo
        "user:pw@evil.com",
        "evil.com:99999",  # port out of range
        "evil.com:123456",
        "evil.com:-1",
        "evil.com:80:80",
        "evil.com:8o",
        "evil.com\x00",  # control characters
        "evil.com\t",
        "evil.com\r\nX: 1",
        "évil.com",  # not ASCII (IDNs travel as punycode)
        "evil.com?x",
        "evil.com#x",
        "ev'il.com",  # sub-delimiters: legal in RFC 3986 reg-name, used by no host name
        "evil.com;x",
        "evil,com",
        "evil%2ecom",  # percent-encoding
        "[::1",  # unclosed literal
        "[::1]x",
        "[::1]:99999",
        "[fe80::1%25eth0]",  # zone identifiers
        "[not-an-address]",
        "::1",  # an IPv6 address must be bracketed
        ".evil.com",
        "evil..com",
        "a" * 256,
        "x" * 400,
    ],
)
def test_a_host_breaking_the_grammar_is_refused(value: str) -> None:
    assert parse_host(value) is None


@given(
    st.lists(
        st.text(alphabet=string.ascii_letters + string.digits + "-_", min_size=1, max_size=20),
        min_size=1,
        max_size=5,
    ),
    st.one_of(st.none(), st.integers(min_value=0, max_value=65535)),
)
def test_every_dns_style_name_with_any_valid_port_is_accepted(
    labels: list[str], port: int | None
) -> None:
    name = ".".join(labels)
    value = name if port is None else f"{name}:{port}"
    assert parse_host(value) == name.lower()


@given(st.text(min_size=1, max_size=40))
def test_no_accepted_host_can_carry_a_path_userinfo_space_or_control_character(
    value: str,
) -> None:
    parsed = parse_host(value)
    if parsed is not None:
        assert not set(parsed) & set("/\\@ ?#\"'<>%,;") and parsed.isprintable()
        assert parsed.isascii()


def test_forwarded_host_from_a_trusted_proxy_obeys_the_same_grammar() -> None:
    assert valid_forwarded_host("app.example.com:443")
    assert not valid_forwarded_host("evil.com/admin")
    assert not valid_forwarded_host("")


def test_normalise_host_keeps_working_for_configured_names() -> None:
    assert normalise_host("API.example.com:443") == "api.example.com"
    assert normalise_host("[::1]:8443") == "[::1]"


def test_host_names_are_lower_case_dns_labels() -> None:
    assert is_host_name("api.example.com")
    assert is_host_name("a-b.c0")
    for bad in ("API.example.com", "*.example.com", "-a.com", "a..com", "a_b.com", "", "a.com\n"):
        assert not is_host_name(bad), bad
