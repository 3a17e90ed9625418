"""Client address, forwarding headers, request ids and trace context."""

from __future__ import annotations

import ipaddress

import pytest

from proxy.http.forwarding import (
    TrustedProxies,
    address_key,
    client_address,
    forwarding_headers,
    plain_address,
    request_id,
    trace_context,
)

TRUSTED = TrustedProxies((ipaddress.ip_network("10.0.0.0/8"),))


def test_untrusted_peer_cannot_claim_another_client_address() -> None:
    assert client_address("203.0.113.5", "1.2.3.4", TRUSTED) == ("203.0.113.5", ["203.0.113.5"])


def test_trusted_peer_chain_yields_first_untrusted_hop_from_the_right() -> None:
    ip, chain = client_address("10.0.0.2", "6.6.6.6, 198.51.100.7, 10.0.0.9", TRUSTED)
    assert ip == "198.51.100.7"
    assert chain == ["6.6.6.6", "198.51.100.7", "10.0.0.9", "10.0.0.2"]


def test_garbage_in_the_chain_stops_the_walk() -> None:
    ip, _ = client_address("10.0.0.2", "1.1.1.1, not-an-ip", TRUSTED)
    assert ip == "10.0.0.2"


def test_forwarded_headers_from_untrusted_peer_are_rewritten() -> None:
    out = dict(
        forwarding_headers(
            peer_ip="203.0.113.5",
            peer_trusted=False,
            chain=["203.0.113.5"],
            client_headers={"x-forwarded-proto": "http", "forwarded": "for=1.1.1.1"},
            scheme="https",
            host="app.example.com",
        )
    )
    assert out == {
        "X-Forwarded-For": "203.0.113.5",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "app.example.com",
        "Forwarded": "for=203.0.113.5;proto=https;host=app.example.com",
    }


def test_forwarded_headers_from_trusted_peer_are_extended() -> None:
    out = dict(
        forwarding_headers(
            peer_ip="10.0.0.2",
            peer_trusted=True,
            chain=["198.51.100.7", "10.0.0.2"],
            client_headers={"x-forwarded-proto": "https", "forwarded": "for=198.51.100.7"},
            scheme="http",
            host="app",
        )
    )
    assert out["X-Forwarded-Proto"] == "https"
    assert out["Forwarded"] == "for=198.51.100.7, for=10.0.0.2;proto=http;host=app"


def test_ipv6_forwarded_node_is_quoted_and_bracketed() -> None:
    out = dict(
        forwarding_headers(
            peer_ip="::1",
            peer_trusted=False,
            chain=["::1"],
            client_headers={},
            scheme="http",
            host="h",
        )
    )
    assert out["Forwarded"].startswith('for="[::1]"')


def test_request_id_is_kept_only_from_trusted_peers_and_only_when_well_formed() -> None:
    assert request_id("abc-123", True) == "abc-123"
    assert request_id("abc-123", False) != "abc-123"
    assert request_id("bad\nid", True) != "bad\nid"
    assert len(request_id(None, False)) == 32


def test_traceparent_is_continued_with_a_new_span() -> None:
    incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    ctx = trace_context(incoming, "vendor=1")
    assert ctx.trace_id == "0af7651916cd43dd8448eb211c80319c"
    assert ctx.parent_id != "b7ad6b7169203331"
    assert ctx.traceparent.startswith("00-0af7651916cd43dd8448eb211c80319c-")
    assert ctx.tracestate == "vendor=1"


def test_invalid_traceparent_starts_a_new_trace() -> None:
    for bad in ("garbage", "00-" + "0" * 32 + "-b7ad6b7169203331-01", None):
        ctx = trace_context(bad, "vendor=1")
        assert len(ctx.trace_id) == 32 and ctx.tracestate is None


def test_a_new_trace_has_distinct_well_formed_trace_and_span_ids() -> None:
    ctx = trace_context(None, None)
    assert len(ctx.trace_id) == 32 and len(ctx.parent_id) == 16
    assert int(ctx.trace_id, 16) >= 0 and int(ctx.parent_id, 16) >= 0
    assert ctx.traceparent == f"00-{ctx.trace_id}-{ctx.parent_id}-01"
    assert len({trace_context(None, None).trace_id for _ in range(100)}) == 100


def test_forwarded_host_is_quoted_unless_plain_letters_digits_and_separators() -> None:
    def host_of(host: str) -> str:
        forwarded = dict(
            forwarding_headers(
                peer_ip="192.0.2.1",
                peer_trusted=False,
                chain=["192.0.2.1"],
                client_headers={},
                scheme="http",
                host=host,
            )
        )["Forwarded"]
        return forwarded.partition(";host=")[2]

    assert host_of("App-1.example:8443") == "App-1.example:8443"
    assert host_of("[::1]:80") == "[::1]:80"
    assert host_of("a b") == '"a b"'
    assert host_of("a;for=evil") == '"a;for=evil"'
    assert host_of("bücher.example") == "bücher.example"


# -- IPv4-mapped peers (dual-stack listeners) and IPv6 keys --------------------------
@pytest.mark.parametrize(
    ("seen", "plain"),
    [
        ("::ffff:10.1.2.3", "10.1.2.3"),
        ("::FFFF:10.1.2.3", "10.1.2.3"),
        ("::ffff:a01:203", "10.1.2.3"),
        ("10.1.2.3", "10.1.2.3"),
        ("2001:db8::1", "2001:db8::1"),
        ("::1", "::1"),
        ("unknown", "unknown"),
    ],
)
def test_an_ipv4_mapped_address_is_the_ipv4_address_it_maps(seen: str, plain: str) -> None:
    assert plain_address(seen) == plain


def test_a_mapped_trusted_proxy_is_recognised_and_its_chain_honoured() -> None:
    assert TRUSTED.contains("::ffff:10.0.0.2")
    ip, chain = client_address(plain_address("::ffff:10.0.0.2"), "203.0.113.9", TRUSTED)
    assert ip == "203.0.113.9"
    assert chain == ["203.0.113.9", "10.0.0.2"]


def test_mapped_hops_in_the_chain_are_compared_and_reported_as_ipv4() -> None:
    ip, _ = client_address("10.0.0.2", "203.0.113.9, ::ffff:10.0.0.5", TRUSTED)
    assert ip == "203.0.113.9"
    ip, _ = client_address("10.0.0.2", "::ffff:203.0.113.9", TRUSTED)
    assert ip == "203.0.113.9"


@pytest.mark.parametrize(
    ("ip", "prefix", "key"),
    [
        ("2001:db8:1:2:aaaa::1", 64, "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", 64, "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", 64, "2001:db8:1:3::/64"),
        ("2001:db8:1:2:aaaa::1", 48, "2001:db8:1::/48"),
        ("2001:db8::1", 128, "2001:db8::1/128"),
        ("::ffff:10.1.2.3", 64, "10.1.2.3"),
        ("10.1.2.3", 64, "10.1.2.3"),
    ],
)
def test_ipv6_clients_are_keyed_by_their_network_prefix(ip: str, prefix: int, key: str) -> None:
    assert address_key(ip, prefix) == key


def test_a_trusted_proxys_malformed_forwarded_host_and_proto_are_not_passed_on() -> None:
    out = dict(
        forwarding_headers(
            peer_ip="10.0.0.2",
            peer_trusted=True,
            chain=["10.0.0.2"],
            client_headers={"x-forwarded-host": "evil.com/admin", "x-forwarded-proto": "gopher"},
            scheme="https",
            host="app.example.com",
        )
    )
    assert out["X-Forwarded-Host"] == "app.example.com"
    assert out["X-Forwarded-Proto"] == "https"
