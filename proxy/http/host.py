"""The Host header: checked against its grammar, then normalised for routing.

RFC 9110 §7.2 and RFC 3986 §3.2.2: ``Host = uri-host [ ":" port ]`` with
``uri-host = IP-literal / IPv4address / reg-name``. Upstreams build links
(password resets, redirects) from the Host they are given, so a value like
``evil.com/admin``, ``user@evil.com`` or ``a b`` must never travel on, in
``Host``, ``X-Forwarded-Host`` or ``Forwarded``. Gatehouse accepts a stricter
reg-name than RFC 3986 (which also admits sub-delimiters such as ``'`` ``,``
``;`` and percent-encoding, none of which a DNS or service name uses):
letters, digits, ``-``, ``.`` and ``_``. IP literals are IPv6 addresses in
brackets (no zone identifier). The port is digits up to 65535.

Pure functions; :func:`parse_host` answers ``None`` for a Host that breaks
the grammar (the gateway turns that into 400 ``bad_host``).
"""

from __future__ import annotations

import functools
import ipaddress
import re

# A DNS name is at most 253 characters (255 with a trailing dot and slack);
# the whole header at most that plus a bracketed IPv6 literal's worth and a port.
_MAX_NAME = 255
_MAX_HOST_HEADER = 300
_REG_NAME = re.compile(r"[A-Za-z0-9._-]{1,255}")
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOST_NAME = re.compile(rf"{_LABEL}(\.{_LABEL})*")
_PORT = re.compile(r"[0-9]{0,5}")


def parse_host(value: str) -> str | None:
    """The normalised host of a Host header value, or None when it breaks the grammar.

    Normalised: lower-case, without port or trailing dot; IPv6 literals keep
    their brackets in compressed form. An empty value stays empty (HTTP/1.0
    requests may omit Host; such requests match only routes without a host).
    Remembered for values of plausible length: a deployment sees a handful of
    Host values, and made-up ones cannot fill the memory with big keys.
    """
    if len(value) > _MAX_HOST_HEADER:
        return None
    return _parse_remembered(value)


def normalise_host(host: str) -> str:
    """A host name as routes are keyed: lower-case, no port, no trailing dot.

    For values already known to be well formed (configuration, the policy
    tools' ``--url``); requests go through :func:`parse_host`.
    """
    parsed = parse_host(host)
    return parsed if parsed is not None else host.lower()


def _parse(value: str) -> str | None:
    if not value:
        return ""
    if value.startswith("["):
        end = value.find("]")
        if end == -1 or "%" in value or not _port_ok(value[end + 1 :]):
            return None  # unclosed, or a zone identifier (meaningless beyond this host)
        try:
            address = ipaddress.IPv6Address(value[1:end])
        except ValueError:
            return None
        return f"[{address.compressed}]"
    host, colon, port = value.partition(":")
    if colon and not _port_ok(":" + port):
        return None
    if not _REG_NAME.fullmatch(host) or host.startswith(".") or ".." in host:
        return None
    host = host.lower().rstrip(".")
    return host if len(host) <= _MAX_NAME else None


def _port_ok(rest: str) -> bool:
    """``rest`` is empty or ``:`` followed by a port number (RFC 3986 allows it empty)."""
    if not rest:
        return True
    if rest[0] != ":" or not _PORT.fullmatch(rest[1:]):
        return False
    return not rest[1:] or int(rest[1:]) <= 65535


_parse_remembered = functools.lru_cache(maxsize=1024)(_parse)


def valid_forwarded_host(value: str) -> bool:
    """A trusted proxy's ``X-Forwarded-Host`` obeys the same grammar as Host."""
    return bool(value) and parse_host(value) is not None


def is_host_name(text: str) -> bool:
    """A DNS name as configured: lower-case labels of letters, digits and ``-``.

    Stricter than a Host header's reg-name: for policy hosts and email domains.
    """
    return _HOST_NAME.fullmatch(text) is not None
