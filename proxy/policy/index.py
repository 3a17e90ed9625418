"""The compiled route index: a host map, then per host an exact-path map,
a prefix map probed at segment boundaries, and regexes.

Matching order is deterministic and is the documented contract:

1. host: exact host, then ``*.suffix`` wildcards (longest suffix first), then
   routes without a host. The host is compared as given: the edge normalised
   it once (:func:`proxy.http.host.parse_host`: lower case, no port, no
   trailing dot), and route hosts are stored that way;
2. within a host: exact path, then prefixes longest first, then regexes;
3. then file order (files sorted by name, routes in file order).

A route whose ``methods`` exclude the request method is skipped and the next
candidate is tried; if none is left the result is ``None`` (404). The result
is always the first matching route in that total order, which is what the
property tests compare against a linear scan.

Prefixes are looked up by probing the path's own prefixes at ``/``
boundaries in a dict, so cost grows with the number of path segments, not
with the number of routes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from proxy.policy.model import Route

# Patterns that refer to groups by number cannot be wrapped in a combined regex.
_NUMBERED_GROUP_REFERENCE = re.compile(r"\\[0-9]|\(\?\([0-9]")


def combine(patterns: Sequence[str]) -> re.Pattern[str] | None:
    """One alternation of all patterns, each in a named group, tried in order.

    ``fullmatch`` on the alternation finds the first pattern (in file order)
    that matches the whole path, and ``lastgroup`` names it: the wrapping
    group always closes last. ``None`` when the patterns cannot be combined
    (numbered back-references, global inline flags): then they are tried
    one by one.
    """
    if len(patterns) < 2 or any(_NUMBERED_GROUP_REFERENCE.search(p) for p in patterns):
        return None
    try:
        return re.compile("|".join(f"(?P<_gh{i}>{p})" for i, p in enumerate(patterns)))
    except re.error:
        return None


@dataclass(slots=True)
class _Bucket:
    exact: dict[str, list[Route]] = field(default_factory=dict)
    prefix: dict[str, list[Route]] = field(default_factory=dict)
    # Lengths of the prefixes present: probing skips lengths no prefix has.
    prefix_lengths: set[int] = field(default_factory=set)
    regex: list[tuple[re.Pattern[str], Route]] = field(default_factory=list)
    combined: re.Pattern[str] | None = None

    def add(self, route: Route) -> None:
        if route.path_exact is not None:
            self.exact.setdefault(route.path_exact, []).append(route)
        elif route.path_prefix is not None:
            self.prefix.setdefault(route.path_prefix, []).append(route)
            self.prefix_lengths.add(len(route.path_prefix))
        elif route.path_regex is not None:
            self.regex.append((re.compile(route.path_regex), route))

    def seal(self) -> None:
        self.combined = combine([p.pattern for p, _ in self.regex])

    def match(self, path: str, method: str) -> Route | None:
        routes = self.exact.get(path)
        if routes is not None:
            for route in routes:
                if route.methods is None or method in route.methods:
                    return route
        prefixes = self.prefix
        if prefixes:
            # Candidates longest first: the whole path, then at each '/' from the
            # right the prefix with its slash ("/a/") and without it ("/a").
            lengths = self.prefix_lengths
            size = len(path)
            if size in lengths:
                routes = prefixes.get(path)
                if routes is not None:
                    for route in routes:
                        if route.methods is None or method in route.methods:
                            return route
            end = size
            while True:
                i = path.rfind("/", 0, end)
                if i < 0:
                    break
                if i + 1 < size and i + 1 in lengths:
                    routes = prefixes.get(path[: i + 1])
                    if routes is not None:
                        for route in routes:
                            if route.methods is None or method in route.methods:
                                return route
                if i > 0 and i in lengths:
                    routes = prefixes.get(path[:i])
                    if routes is not None:
                        for route in routes:
                            if route.methods is None or method in route.methods:
                                return route
                end = i
        regexes = self.regex
        if not regexes:
            return None
        start = 0
        combined = self.combined
        if combined is not None:
            found = combined.fullmatch(path)
            if found is None:
                return None
            start = int(str(found.lastgroup)[3:])
            route = regexes[start][1]
            if route.methods is None or method in route.methods:
                return route
            start += 1  # rare: the first regex match wants another method
        for pattern, route in regexes[start:]:
            if (route.methods is None or method in route.methods) and pattern.fullmatch(path):
                return route
        return None


class RouteIndex:
    """Routes compiled for lookup by (host, canonical path, method)."""

    __slots__ = ("_any", "_exact", "_wildcard")

    def __init__(self, routes: Sequence[Route]) -> None:
        self._exact: dict[str, _Bucket] = {}
        self._wildcard: dict[str, _Bucket] = {}  # "*.example.com" stored as "example.com"
        self._any = _Bucket()
        for route in sorted(routes, key=lambda r: r.order):
            host = route.host
            if host is None:
                self._any.add(route)
            elif host.startswith("*."):
                self._wildcard.setdefault(host[2:], _Bucket()).add(route)
            else:
                self._exact.setdefault(host, _Bucket()).add(route)
        for bucket in (*self._exact.values(), *self._wildcard.values(), self._any):
            bucket.seal()

    def match(self, host: str, path: str, method: str) -> Route | None:
        if self._exact:
            bucket = self._exact.get(host)
            if bucket is not None:
                route = bucket.match(path, method)
                if route is not None:
                    return route
        if self._wildcard:
            # "a.b.example.com" probes "b.example.com", "example.com", "com".
            dot = host.find(".")
            while dot != -1:
                bucket = self._wildcard.get(host[dot + 1 :])
                if bucket is not None:
                    route = bucket.match(path, method)
                    if route is not None:
                        return route
                dot = host.find(".", dot + 1)
        return self._any.match(path, method)
