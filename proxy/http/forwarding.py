"""Who the client is, and the forwarding headers that say so upstream.

Client-supplied ``X-Forwarded-*``/``Forwarded``/``X-Request-Id`` are honoured
only when the TCP peer is in ``trusted_proxies``; otherwise they are discarded
and the proxy writes its own (Oathkeeper 26.2.0, oauth2-proxy default).
"""

from __future__ import annotations

import functools
import ipaddress
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from proxy.http.host import valid_forwarded_host

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


def plain_address(ip: str) -> str:
    """``ip`` with an IPv4-mapped IPv6 address written as the IPv4 address it maps.

    A dual-stack listener (``[::]``) sees IPv4 peers as ``::ffff:10.1.2.3``;
    compared as IPv6 they match no IPv4 range, so trusted proxies went
    unrecognised and ``source_ip`` rules never fired. Every address the proxy
    compares, keys or records goes through here first. Anything that is not
    an IP address comes back unchanged.
    """
    if ":" not in ip:
        return ip  # IPv4 (or "unknown"): the common case, no parsing
    try:
        addr = ipaddress.IPv6Address(ip)
    except ValueError:
        return ip
    mapped = addr.ipv4_mapped
    return str(mapped) if mapped is not None else ip


def _parse(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


# Parsing an address costs microseconds and the same few (the trusted proxies'
# own, returning clients) recur on every request; the cache is bounded, so made-up
# X-Forwarded-For hops only evict each other.
_parsed = functools.lru_cache(maxsize=4096)(_parse)


def address_key(ip: str, ipv6_prefix: int = 64) -> str:
    """The address a per-client limit counts against: IPv6 by its ``/ipv6_prefix``.

    One IPv6 subscriber usually holds a whole /64: keyed by full address, it
    could rotate through unlimited buckets (and evict everyone else's).
    """
    addr = _parsed(ip)
    if not isinstance(addr, ipaddress.IPv6Address):
        return str(addr) if addr is not None else ip
    network = ipaddress.IPv6Network((addr, ipv6_prefix), strict=False)
    return f"{network.network_address}/{ipv6_prefix}"


_MAX_REMEMBERED = 4096


@dataclass(frozen=True, slots=True)
class TrustedProxies:
    networks: tuple[Network, ...] = ()
    # Address -> verdict: the same few peers ask on every request (bounded).
    _verdicts: dict[str, bool] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    def contains(self, ip: str) -> bool:
        if not self.networks:
            return False
        verdict = self._verdicts.get(ip)
        if verdict is None:
            addr = _parsed(ip)
            verdict = addr is not None and any(addr in net for net in self.networks)
            if len(self._verdicts) < _MAX_REMEMBERED:
                self._verdicts[ip] = verdict
        return verdict


def client_address(peer_ip: str, xff: str | None, trusted: TrustedProxies) -> tuple[str, list[str]]:
    """The trusted client address and the X-Forwarded-For chain to send on.

    Walk the chain right to left from the peer, skipping trusted proxies; the
    first untrusted hop is the client. An untrusted peer's chain is dropped.
    ``peer_ip`` is expected in :func:`plain_address` form; hops are put in it.
    """
    if not xff or not trusted.contains(peer_ip):
        return peer_ip, [peer_ip]
    chain = [h.strip() for h in xff.split(",") if h.strip()]
    client = peer_ip
    for hop in reversed(chain):
        addr = _parsed(hop)
        if addr is None:
            break  # garbage ends the trustworthy part of the chain
        client = str(addr)
        if not trusted.contains(client):
            break
    return client, [*chain, peer_ip]


def _forwarded_node(ip: str) -> str:
    return f'"[{ip}]"' if ":" in ip else ip


_PLAIN_HOST_ASCII = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-:[]")


def _forwarded_host(host: str) -> str:
    if host.isascii():
        # For ASCII, isalnum() is exactly the letters and digits of the set.
        plain = _PLAIN_HOST_ASCII.issuperset(host)
    else:
        plain = all(c.isalnum() or c in ".-:[]" for c in host)
    return host if plain else f'"{host}"'


def forwarding_headers(
    *,
    peer_ip: str,
    peer_trusted: bool,
    chain: Sequence[str],
    client_headers: Mapping[str, str],
    scheme: str,
    host: str,
) -> list[tuple[str, str]]:
    """``X-Forwarded-For/Proto/Host`` and ``Forwarded`` as this hop writes them."""
    proto = scheme
    fwd_host = host
    prior_forwarded = None
    if peer_trusted:
        # Even a trusted proxy's values must be well formed before they travel on.
        claimed_proto = client_headers.get("x-forwarded-proto", "").strip().lower()
        proto = claimed_proto if claimed_proto in ("http", "https") else scheme
        claimed_host = client_headers.get("x-forwarded-host", "").strip()
        fwd_host = claimed_host if valid_forwarded_host(claimed_host) else host
        prior_forwarded = client_headers.get("forwarded")
    element = f"for={_forwarded_node(peer_ip)};proto={scheme};host={_forwarded_host(host)}"
    forwarded = f"{prior_forwarded}, {element}" if prior_forwarded else element
    return [
        ("X-Forwarded-For", ", ".join(chain)),
        ("X-Forwarded-Proto", proto),
        ("X-Forwarded-Host", fwd_host),
        ("Forwarded", forwarded),
    ]


def new_request_id() -> str:
    return _random_hex(128)


def _random_hex(bits: int) -> str:
    """Unique ids, not secrets: request and trace ids are shown to clients and in logs.

    The ``random`` module's generator is seeded from the OS at start and
    reseeded in every forked worker, and costs no system call per request.
    """
    return "%0*x" % (bits // 4, random.getrandbits(bits))  # noqa: UP031 - twice as fast


def request_id(client_value: str | None, peer_trusted: bool) -> str:
    """Keep a trusted proxy's well-formed request id, otherwise start a new one."""
    if peer_trusted and client_value and _REQUEST_ID.match(client_value):
        return client_value
    return new_request_id()


class TraceContext(NamedTuple):
    """Immutable like a frozen dataclass, built in half the time (one per request)."""

    trace_id: str
    parent_id: str  # this hop's span id, sent upstream as the parent
    flags: str
    tracestate: str | None

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.parent_id}-{self.flags}"


def trace_context(traceparent: str | None, tracestate: str | None) -> TraceContext:
    """Continue the caller's W3C trace, or start one; every hop gets a new span id."""
    if traceparent:
        m = _TRACEPARENT.match(traceparent.strip())
        if m and m.group(1) != _ZERO_TRACE and m.group(2) != _ZERO_SPAN:
            state = tracestate if tracestate and len(tracestate) <= 512 else None
            return TraceContext(m.group(1), _random_hex(64), m.group(3), state)
    ids = _random_hex(192)  # trace id and span id from one draw
    return TraceContext(ids[:32], ids[32:], "01", None)
