"""Compiled rule criteria: small objects with a ``test`` over plain request data.

Outcomes are three-valued. A criterion about the caller (subject, groups,
claims, ...) is *unknown* (``None``) when there is no identity, and ``not``
of unknown stays unknown. A rule fires only when its outcome is ``True``.

Access for anonymous callers is never implied: an allow rule admits a caller
without identity only through ``public: true`` (see :func:`admits_anonymous`),
so neither ``method: [GET]`` alone nor ``not: {source_ip: [...]}`` opens a
route to the world; they restrict callers who have an identity.

Everything that can be prepared (sets, regexes, networks, time zones) is
prepared at load time; ``test`` does no compilation and no parsing beyond the
client address.
"""

from __future__ import annotations

import ipaddress
import operator
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from proxy.http.facts import RequestFacts
from proxy.identity.model import Identity

Outcome = bool | None
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_MISSING: Any = object()


class Criterion(Protocol):
    # True when the outcome depends on who the caller is (unknown without one).
    needs_identity: bool

    def test(self, facts: RequestFacts, identity: Identity | None, now: float) -> Outcome: ...

    def describe(self) -> str: ...


def _fmt(values: Sequence[object] | frozenset[str]) -> str:
    items = sorted(values) if isinstance(values, frozenset) else list(values)
    return "[" + ", ".join(str(v) for v in items) + "]"


# -- about the request --------------------------------------------------------
class Public:
    __slots__ = ()
    needs_identity = False

    def test(self, facts: RequestFacts, identity: Identity | None, now: float) -> Outcome:
        return True

    def describe(self) -> str:
        return "public"


class Authenticated:
    __slots__ = ("expect",)
    needs_identity = False

    def __init__(self, expect: bool) -> None:
        self.expect = expect

    def test(self, facts: RequestFacts, identity: Identity | None, now: float) -> Outcome:
        return (identity is not None) is self.expect

    def describe(self) -> str:
        return f"authenticated is {str(self.expect).lower()}"


class MethodIn:
    __slots__ = ("methods",)
    needs_identity = False

    def __init__(self, methods: frozenset[str]) -> None:
        self.methods = methods

    def test(self, facts: RequestFacts, identity: Identity | None, now: float) -> Outcome:
        return facts.method in self.methods

    def describe(self) -> str:
        return f"method in {_fmt(self.methods)}"


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


class SourceIp:
    __slots__ = ("masks", "networks")
    needs_identity = False

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
        return f"source_ip in {_fmt(self.networks)}"


class ClientCert:
    """A verified client certificate (from the TLS layer) with a listed SAN or fingerprint."""

    __slots__ = ("fingerprints", "sans")
    needs_identity = False

    def __init__(self, sans: frozenset[str], fingerprints: frozenset[str]) -> None:
        self.sans = sans
        self.fingerprints = fingerprints

    def test(self, facts: RequestFacts, identity: Identity | None, now: float) -> Outcome:
        cert = facts.client_cert
        if cert is None and identity is not None:
            cert = identity.client_cert
        if cert is None:
            return False
        if cert.fingerprint_sha256 in self.fingerprints:
            return True
        return any(s in self.sans for s in cert.san_uris) or any(
            s in self.sans for s in cert.san_dns
        )

    def describe(self) -> str:
        parts = []
        if self.sans:
            parts.append(f"san in {_fmt(self.sans)}")
        if self.fingerprints:
            parts.append(f"fingerprint in {_fmt(self.fingerprints)}")
        return "client_cert " + " or ".join(parts)


class TimeWindow:
    """Weekdays and an hour range in a named zone; ``end < start`` wraps past midnight."""

    __slots__ = ("end", "start", "text", "weekdays", "zone")
    needs_identity = False

    def __init__(
        self, weekdays: frozenset[int], start: int, end: int, zone: ZoneInfo, text: str
    ) -> None:
        self.weekdays = weekdays  # 0 = Monday
        self.start = start  # minutes after local midnight, inclusive
        self.end = end  # exclusive
        self.zone = zone
        self.text = text

    def test(self, facts: RequestFacts, identity: Identity | None, now: float) -> Outcome:
        local = datetime.fromtimestamp(now, self.zone)
        minute = local.hour * 60 + local.minute
        weekday = local.weekday()
        if self.start <= self.end:
            return weekday in self.weekdays and self.start <= minute < self.end
        # Past midnight the window still belongs to the day it started on.
        if minute >= self.start:
            return weekday in self.weekdays
        return minute < self.end and (weekday - 1) % 7 in self.weekdays

    def describe(self) -> str:
        return f"time {self.text}"


# -- string matchers (claims and paths) -----------------------------------------
class Matcher:
    """One of ``is``, ``in``, ``starts_with``, ``ends_with``, ``contains``, ``regex``.

    YAML types are kept: ``is: 1`` does not match the string ``"1"`` nor ``true``.
    """

    __slots__ = ("kind", "operand", "pattern", "values")

    def __init__(self, kind: str, operand: object) -> None:
        self.kind = kind
        self.operand = operand
        self.values: tuple[object, ...] = (
            tuple(operand) if isinstance(operand, list | tuple) else (operand,)
        )
        self.pattern = re.compile(str(operand)) if kind == "regex" else None

    def matches(self, value: object) -> bool:
        kind = self.kind
        if kind == "is" or kind == "in":
            return any(_same(value, v) for v in self.values)
        if not isinstance(value, str):
            return False
        if kind == "starts_with":
            return value.startswith(str(self.operand))
        if kind == "ends_with":
            return value.endswith(str(self.operand))
        if kind == "contains":
            return str(self.operand) in value
        assert self.pattern is not None
        return self.pattern.fullmatch(value) is not None

    def describe(self) -> str:
        return f"{self.kind} {self.operand!r}"


def _same(a: object, b: object) -> bool:
    # bool is an int subclass: True must not equal 1 in a policy.
    return (type(a) is type(b) and a == b) or (
        isinstance(a, int | float)
        and isinstance(b, int | float)
        and not isinstance(a, bool)
        and not isinstance(b, bool)
        and a == b
    )


class PathMatch:
    __slots__ = ("matcher", "prefix")
    needs_identity = False

    def __init__(self, prefix: str | None, matcher: Matcher | None) -> None:
        self.prefix = prefix
        self.matcher = matcher

    def test(self, facts: RequestFacts, identity: Identity | None, now: float) -> Outcome:
        if self.prefix is not None:
            return prefix_matches(self.prefix, facts.path)
        assert self.matcher is not None
        return self.matcher.matches(facts.path)

    def describe(self) -> str:
        if self.prefix is not None:
            return f"path under {self.prefix}"
        assert self.matcher is not None
        return f"path {self.matcher.describe()}"


def prefix_matches(prefix: str, path: str) -> bool:
    """Segment-aware prefix: ``/api`` matches ``/api`` and ``/api/x``, never ``/apifoo``.

    A prefix ending in ``/`` is literal: ``/api/`` matches ``/api/`` and
    ``/api/x`` but not ``/api``.
    """
    if prefix.endswith("/"):
        return path.startswith(prefix)
    return path == prefix or path.startswith(prefix + "/")


# -- about the caller -------------------------------------------------------------
class IdentityFieldIn:
    """The caller's ``subject``, ``issuer`` or ``auth_method`` is one of ``values``."""

    __slots__ = ("get", "label", "values")
    needs_identity = True

    def __init__(self, label: str, attribute: str, values: frozenset[str]) -> None:
        self.label = label
        self.get = operator.attrgetter(attribute)
        self.values = values

    def test(self, facts: RequestFacts, identity: Identity | None, now: float) -> Outcome:
        if identity is None:
            return None
        return self.get(identity) in self.values

    def describe(self) -> str:
        return f"{self.label} in {_fmt(self.values)}"


class EmailIn:
    __slots__ = ("values",)
    needs_identity = True

    def __init__(self, values: frozenset[str]) -> None:
        self.values = values  # lower-cased at load

    def test(self, facts: RequestFacts, identity: Identity | None, now: float) -> Outcome:
        if identity is None:
            return None
        return identity.email is not None and identity.email.lower() in self.values

    def describe(self) -> str:
        return f"email in {_fmt(self.values)}"


class EmailDomain:
    """``example.com`` matches exactly that domain; ``*.example.com`` only its subdomains.

    The address must contain exactly one ``@`` (``a@evil.com@example.com``
    never matches), and comparison is on the whole domain, so
    ``badexample.com`` never matches ``example.com``.
    """

    __slots__ = ("exact", "suffixes")
    needs_identity = True

    def __init__(self, exact: frozenset[str], suffixes: tuple[str, ...]) -> None:
        self.exact = exact
        self.suffixes = suffixes  # each starts with "."

    def test(self, facts: RequestFacts, identity: Identity | None, now: float) -> Outcome:
        if identity is None:
            return None
        email = identity.email
        if email is None or email.count("@") != 1:
            return False
        local, domain = email.lower().split("@")
        if not local or not domain:
            return False
        return domain in self.exact or domain.endswith(self.suffixes)

    def describe(self) -> str:
        return f"email_domain in {_fmt(sorted(self.exact) + ['*' + s for s in self.suffixes])}"


class IdentitySetAny:
    """The caller has at least one of ``values`` among its ``groups`` or ``scopes``."""

    __slots__ = ("get", "label", "values")
    needs_identity = True

    def __init__(self, label: str, attribute: str, values: frozenset[str]) -> None:
        self.label = label
        self.get = operator.attrgetter(attribute)
        self.values = values

    def test(self, facts: RequestFacts, identity: Identity | None, now: float) -> Outcome:
        if identity is None:
            return None
        return not self.values.isdisjoint(self.get(identity))

    def describe(self) -> str:
        return f"{self.label} any of {_fmt(self.values)}"


def claim_value(claims: Mapping[str, Any], path: str, parts: tuple[str, ...]) -> Any:
    """The claim at a dotted path; a key that itself contains dots is found whole first."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in parts:
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


class Claim:
    """A claim at a dotted path; on a list-valued claim a matcher holds for any element."""

    __slots__ = ("exists", "matcher", "parts", "path")
    needs_identity = True

    def __init__(self, path: str, matcher: Matcher | None, exists: bool | None) -> None:
        self.path = path
        self.parts = tuple(path.split("."))
        self.matcher = matcher
        self.exists = exists

    def test(self, facts: RequestFacts, identity: Identity | None, now: float) -> Outcome:
        if identity is None:
            return None
        value = claim_value(identity.claims, self.path, self.parts)
        if self.exists is not None:
            return (value is not _MISSING) is self.exists
        if value is _MISSING:
            return False
        matcher = self.matcher
        assert matcher is not None
        if isinstance(value, list):
            if matcher.kind == "contains":
                return any(_same(item, matcher.operand) for item in value)
            return any(matcher.matches(item) for item in value)
        return matcher.matches(value)

    def describe(self) -> str:
        if self.exists is not None:
            return f"claim {self.path} {'exists' if self.exists else 'is absent'}"
        assert self.matcher is not None
        return f"claim {self.path} {self.matcher.describe()}"


class Mfa:
    """Multi-factor login shown by ``amr`` (RFC 8176 values) or ``acr`` claims."""

    __slots__ = ("acr", "amr")
    needs_identity = True

    def __init__(self, amr: frozenset[str], acr: frozenset[str]) -> None:
        self.amr = amr
        self.acr = acr

    def test(self, facts: RequestFacts, identity: Identity | None, now: float) -> Outcome:
        if identity is None:
            return None
        claims = identity.claims
        amr = claims.get("amr")
        if isinstance(amr, list) and any(isinstance(a, str) and a in self.amr for a in amr):
            return True
        acr = claims.get("acr")
        return isinstance(acr, str) and acr in self.acr

    def describe(self) -> str:
        parts = []
        if self.amr:
            parts.append(f"amr any of {_fmt(self.amr)}")
        if self.acr:
            parts.append(f"acr in {_fmt(self.acr)}")
        return "mfa (" + " or ".join(parts) + ")"


# -- composition ----------------------------------------------------------------------
class All:
    __slots__ = ("children", "label", "needs_identity")

    def __init__(self, children: tuple[Criterion, ...], label: str = "all") -> None:
        self.children = children
        self.label = label
        self.needs_identity = any(c.needs_identity for c in children)

    def test(self, facts: RequestFacts, identity: Identity | None, now: float) -> Outcome:
        result: Outcome = True
        for child in self.children:
            outcome = child.test(facts, identity, now)
            if outcome is False:
                return False
            if outcome is None:
                result = None
        return result

    def describe(self) -> str:
        return self.label


class AnyOf:
    __slots__ = ("children", "needs_identity")

    def __init__(self, children: tuple[Criterion, ...]) -> None:
        self.children = children
        self.needs_identity = any(c.needs_identity for c in children)

    def test(self, facts: RequestFacts, identity: Identity | None, now: float) -> Outcome:
        result: Outcome = False
        for child in self.children:
            outcome = child.test(facts, identity, now)
            if outcome is True:
                return True
            if outcome is None:
                result = None
        return result

    def describe(self) -> str:
        return "any"


class Not:
    __slots__ = ("child", "needs_identity")

    def __init__(self, child: Criterion) -> None:
        self.child = child
        self.needs_identity = child.needs_identity

    def test(self, facts: RequestFacts, identity: Identity | None, now: float) -> Outcome:
        outcome = self.child.test(facts, identity, now)
        return None if outcome is None else not outcome

    def describe(self) -> str:
        return "not"


def admits_anonymous(criterion: Criterion, facts: RequestFacts, now: float) -> bool:
    """Whether a criterion holds for a caller without identity *because of* ``public``.

    The holding derivation must include ``public: true`` positively: in
    ``all`` every child holds and one of them admits anonymously; in ``any``
    one branch admits anonymously; ``not`` never proves public access.
    """
    if isinstance(criterion, Public):
        return True
    if isinstance(criterion, All):
        return all(c.test(facts, None, now) is True for c in criterion.children) and any(
            admits_anonymous(c, facts, now) for c in criterion.children
        )
    if isinstance(criterion, AnyOf):
        return any(admits_anonymous(c, facts, now) for c in criterion.children)
    return False


def children_of(criterion: Criterion) -> tuple[Criterion, ...]:
    if isinstance(criterion, All | AnyOf):
        return criterion.children
    if isinstance(criterion, Not):
        return (criterion.child,)
    return ()


def trace(
    criterion: Criterion,
    facts: RequestFacts,
    identity: Identity | None,
    now: float,
    depth: int = 0,
) -> list[tuple[int, str, Outcome]]:
    """Every criterion of a tree with its outcome, for explanations (not the hot path)."""
    lines = [(depth, criterion.describe(), criterion.test(facts, identity, now))]
    for child in children_of(criterion):
        lines.extend(trace(child, facts, identity, now, depth + 1))
    return lines


def outcome_text(outcome: Outcome) -> str:
    return {True: "match", False: "no match", None: "unknown (no identity)"}[outcome]
