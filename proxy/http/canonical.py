"""Request-target canonicalisation: one path for matching, the same path upstream.

Every path-confusion bypass in REFERENCE.md comes from the matcher and the
upstream reading a path differently (``/public/../admin``, ``%2F``, ``//``,
``;param``, ``#``). The rule here: decode only what is unambiguous
(unreserved characters), resolve dot segments, merge slashes, and *reject*
what different servers interpret differently. The result is what policy
matches on and, byte for byte, what the upstream receives.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.errors import BadPath

_HEX = "0123456789ABCDEFabcdef"
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# RFC 3986 pchar minus '%' (handled separately): characters allowed literally in a segment.
_PCHAR = _UNRESERVED | frozenset("!$&'()*+,;=:@")
# Fast path: a path made only of these has nothing to decode or reject; dot
# segments and empty segments always contain "/." or "//" and are checked apart.
_PLAIN = _UNRESERVED | frozenset("!$&'()*+,=:@/")


@dataclass(frozen=True, slots=True)
class PathOptions:
    """Opt-ins for paths some upstreams need; both are refused by default."""

    allow_encoded_slash: bool = False  # keep %2F (encoded) instead of rejecting it
    allow_semicolon: bool = False  # accept ';' (path parameters) literally


DEFAULT_OPTIONS = PathOptions()


def split_target(target: str) -> tuple[str, str]:
    """Split an origin- or absolute-form request target into raw path and query.

    Absolute-form (``http://host/p?q``) is matched on its path like any other
    request; the authority it names is never trusted for routing beyond Host.
    """
    if "#" in target:
        raise BadPath(detail="fragment in request target")
    if not target.startswith("/"):
        lower = target[:8].lower()
        if lower.startswith(("http://", "https://")):
            rest = target[target.index("//") + 2 :]
            slash = rest.find("/")
            qmark = rest.find("?")
            if slash == -1 or (qmark != -1 and qmark < slash):
                target = "/" + (rest[qmark:] if qmark != -1 else "")
            else:
                target = rest[slash:]
        else:
            raise BadPath(detail="request target is not a path")
    path, _, query = target.partition("?")
    return path, query


def canonical_path(raw: str, options: PathOptions = DEFAULT_OPTIONS) -> str:
    """Return the canonical form of a raw (still percent-encoded) path.

    Raises :class:`BadPath` (400 ``bad_path``) for anything whose
    meaning differs between servers: encoded ``/`` ``\\`` or NUL, literal
    ``\\``, control characters, malformed escapes, ``;`` (unless allowed) and
    dot segments that climb above the root.
    """
    if not raw.startswith("/"):
        raise BadPath(detail="path must start with '/'")
    # Fast path for the common case: nothing encoded, no dots, no empty segments.
    if "//" not in raw and "/." not in raw and _PLAIN.issuperset(raw):
        return raw
    decoded = _normalise_escapes(raw, options)
    return _resolve_segments(decoded)


def _normalise_escapes(raw: str, options: PathOptions) -> str:
    out: list[str] = []
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if c == "%":
            if i + 2 >= n:
                raise BadPath(detail="truncated percent-escape")
            h1, h2 = raw[i + 1], raw[i + 2]
            if h1 not in _HEX or h2 not in _HEX:
                raise BadPath(detail="malformed percent-escape")
            byte = int(h1 + h2, 16)
            ch = chr(byte)
            if byte == 0x2F:  # '/'
                if not options.allow_encoded_slash:
                    raise BadPath(detail="encoded slash")
                out.append("%2F")
            elif byte in (0x5C, 0x00):  # '\' and NUL
                raise BadPath(detail="encoded backslash or NUL")
            elif ch in _UNRESERVED:
                out.append(ch)
            else:
                out.append("%" + (h1 + h2).upper())
            i += 3
            continue
        if c == "/" or c in _PCHAR:
            if c == ";" and not options.allow_semicolon:
                raise BadPath(detail="path parameter ';'")
            out.append(c)
        elif c == "\\":
            raise BadPath(detail="backslash in path")
        elif ord(c) < 0x20 or ord(c) == 0x7F or c in ' "<>^`{|}':
            raise BadPath(detail="control or unsafe character in path")
        else:
            # Non-ASCII (or other) characters travel percent-encoded as UTF-8.
            out.extend(f"%{b:02X}" for b in c.encode("utf-8", "surrogateescape"))
        i += 1
    return "".join(out)


def _resolve_segments(path: str) -> str:
    """Merge empty segments and resolve ``.``/``..`` (RFC 3986 §5.2.4).

    Climbing above the root is rejected rather than clamped: such a request
    is an attack or a bug, and rejecting it keeps the rule simple to audit.
    """
    segments = path.split("/")
    trailing = segments[-1] in ("", ".", "..")
    stack: list[str] = []
    for seg in segments[1:]:
        if seg == "" or seg == ".":
            continue
        if seg == "..":
            if not stack:
                raise BadPath(detail="dot segment above root")
            stack.pop()
            continue
        stack.append(seg)
    if not stack:
        return "/"
    result = "/" + "/".join(stack)
    return result + "/" if trailing else result


def canonicalise_target(target: str, options: PathOptions = DEFAULT_OPTIONS) -> tuple[str, str]:
    """Canonical path and raw query for a request target (the stage's entry point)."""
    path, query = split_target(target)
    return canonical_path(path, options), query
