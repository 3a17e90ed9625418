"""``source_ip``: the trusted client address is in one of the listed networks.

The trusted client address is the peer, or the ``X-Forwarded-For`` entry
added by the last trusted proxy. IPv4-mapped IPv6 addresses count as IPv4.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from proxy.model import Identity, RequestFacts
from proxy.policy.criteria.base import Leaf, Outcome, Rules, fmt, register
from proxy.policy.criteria.operand import Operand

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=65536)
def parse_ip(text: str) -> tuple[int, int]:
    """(IP version, address as an integer), IPv4-mapped IPv6 as IPv4; (0, 0) if invalid.

    Cached: parsing costs more than the rest of a decision, and busy clients repeat.
    """
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return 0, 0
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.version, int(addr)


class SourceIp(Leaf):
    __slots__ = ("masks", "networks")

    def __init__(self, networks: tuple[IPNetwork, ...]) -> None:
        self.networks = networks
        self.masks = tuple(
            (net.version, int(net.network_address), int(net.netmask)) for net in networks
        )

    def test(self, facts: RequestFacts, identity: Identity | None, now: float) -> Outcome:
        version, value = parse_ip(facts.client_ip)
        for net_version, network, mask in self.masks:
            if version == net_version and value & mask == network:
                return True
        return False

    def describe(self) -> str:
        return f"source_ip in {fmt(self.networks)}"


def parse(operand: Operand, rules: Rules) -> SourceIp | None:
    texts = operand.strings()
    if texts is None:
        return None
    networks: list[IPNetwork] = []
    for text in texts:
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            operand.fail(f"not an IP network: {text!r}")
            return None
    return SourceIp(tuple(networks))


register(
    "source_ip",
    parse,
    about="request",
    syntax="source_ip: [10.0.0.0/8, '2001:db8::/32']",
    holds="the trusted client address is in a listed network",
)
