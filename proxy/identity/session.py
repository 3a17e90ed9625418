"""Encrypted, authenticated cookies for browser sessions (pure: no I/O), and the
interface of the optional server-side session store.

A cookie value is ``v1.<key id>.<base64url(nonce || AES-GCM ciphertext)>``; the
plaintext is zlib-compressed JSON (group lists compress well, and servers stop
reading Cookie headers around 8 KB). Only IdP-issued data is in it, so there is
no attacker-chosen text for a compression side channel to probe.
The cookie's base name is the associated data, so a login-transaction cookie
can never be replayed as a session cookie. The first key in the key file
encrypts; every key decrypts, so keys rotate by prepending a new one. Values
above ~4 KB are split into numbered chunks (``<name>-0``, ``<name>-1``, ...)
because browsers drop larger cookies.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

CHUNK_SIZE = 3800  # value bytes per cookie; leaves room for name and attributes
MAX_CHUNKS = 8
# Room left in the browser's Cookie header for the site's other cookies (and our
# login cookie during a new login) beyond the session's own.
COOKIE_HEADROOM = 1024
MAX_PLAINTEXT = 256 * 1024
_VERSION = "v1"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_cookie_keys(path: Path) -> list[bytes]:
    """One base64 key (16, 24 or 32 bytes) per line; ``#`` comments; first line encrypts."""
    return parse_cookie_keys(path.read_text(encoding="utf-8"))


def parse_cookie_keys(text: str) -> list[bytes]:
    """Keys from a file's text or an environment variable (comma or whitespace separated)."""
    keys: list[bytes] = []
    for line in text.splitlines():
        for item in re.split(r"[\s,]+", line.split("#", 1)[0]):
            if not item:
                continue
            try:
                key = base64.urlsafe_b64decode(item + "=" * (-len(item) % 4))
            except (binascii.Error, ValueError):
                key = base64.b64decode(item + "=" * (-len(item) % 4))
            if len(key) not in (16, 24, 32):
                raise ValueError("cookie keys must be 16, 24 or 32 bytes (base64 encoded)")
            keys.append(key)
    if not keys:
        raise ValueError("cookie key file holds no key")
    return keys


def new_cookie_key() -> str:
    return _b64(os.urandom(32))


class CookieCodec:
    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise ValueError("at least one cookie key is required")
        self._keys = [(hashlib.sha256(k).hexdigest()[:8], AESGCM(k)) for k in keys]
        self._by_id = dict(self._keys)

    def seal(self, name: str, payload: Mapping[str, Any]) -> str:
        key_id, aead = self._keys[0]
        nonce = os.urandom(12)
        plain = zlib.compress(orjson.dumps(dict(payload)), 6)
        sealed = aead.encrypt(nonce, plain, name.encode())
        return f"{_VERSION}.{key_id}.{_b64(nonce + sealed)}"

    def open(self, name: str, value: str, *, now: float | None = None) -> dict[str, Any] | None:
        """The payload, or None if the value is forged, from an unknown key, or expired."""
        parts = value.split(".")
        if len(parts) != 3 or parts[0] != _VERSION:
            return None
        aead = self._by_id.get(parts[1])
        if aead is None:
            return None
        try:
            raw = _unb64(parts[2])
            plain = aead.decrypt(raw[:12], raw[12:], name.encode())
            inflater = zlib.decompressobj()
            payload = orjson.loads(inflater.decompress(plain, MAX_PLAINTEXT))
            if inflater.unconsumed_tail:
                return None
        except (binascii.Error, ValueError, InvalidTag, zlib.error, orjson.JSONDecodeError):
            return None
        if not isinstance(payload, dict):
            return None
        exp = payload.get("exp")
        moment = time.time() if now is None else now
        if not isinstance(exp, int | float) or moment >= exp:
            return None
        return payload


def parse_cookie_header(header: str | None) -> dict[str, str]:
    """Cookie name -> value; the first occurrence of a name wins."""
    cookies: dict[str, str] = {}
    if not header:
        return cookies
    for part in header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name and name not in cookies:
            cookies[name] = value.strip().strip('"')
    return cookies


@dataclass(frozen=True, slots=True)
class CookieAttrs:
    max_age: int | None = None
    same_site: str = "Lax"


def render_set_cookie(name: str, value: str, attrs: CookieAttrs = CookieAttrs()) -> str:
    """A ``__Host-``-compatible Set-Cookie value: Secure, HttpOnly, Path=/, no Domain."""
    parts = [f"{name}={value}", "Path=/", "Secure", "HttpOnly", f"SameSite={attrs.same_site}"]
    if attrs.max_age is not None:
        parts.append(f"Max-Age={max(attrs.max_age, 0)}")
    return "; ".join(parts)


def clear_cookie(name: str) -> str:
    return render_set_cookie(name, "", CookieAttrs(max_age=0))


def chunk_names(name: str) -> list[str]:
    return [f"{name}-{i}" for i in range(MAX_CHUNKS)]


def write_chunked(
    name: str, value: str, present: Mapping[str, str], attrs: CookieAttrs
) -> list[str]:
    """Set-Cookie values storing ``value`` under ``name`` (or its chunks), clearing leftovers."""
    if len(value) <= CHUNK_SIZE:
        out = [render_set_cookie(name, value, attrs)]
        out += [clear_cookie(n) for n in chunk_names(name) if n in present]
        return out
    pieces = [value[i : i + CHUNK_SIZE] for i in range(0, len(value), CHUNK_SIZE)]
    if len(pieces) > MAX_CHUNKS:
        raise ValueError("session too large for cookies")
    out = [render_set_cookie(f"{name}-{i}", piece, attrs) for i, piece in enumerate(pieces)]
    out += [clear_cookie(n) for n in chunk_names(name)[len(pieces) :] if n in present]
    if name in present:
        out.append(clear_cookie(name))
    return out


def cookie_header_bytes(name: str, value: str) -> int:
    """Bytes ``value`` stored under ``name`` (chunked as :func:`write_chunked` does)
    takes in a Cookie request header, separators included."""
    if len(value) <= CHUNK_SIZE:
        return len(name) + 1 + len(value) + 2
    pieces = range(0, len(value), CHUNK_SIZE)
    names = sum(len(f"{name}-{i}") + 1 + 2 for i, _ in enumerate(pieces))
    return names + len(value)


def cookie_budget(max_header_size: int) -> int:
    """Bytes a session's cookies may take so the whole Cookie header line stays within
    the listener's ``max_header_size`` (beyond it every request would get 431)."""
    return max_header_size - len("Cookie") - COOKIE_HEADROOM


def login_cookie_name(name: str) -> str:
    """The login transaction's cookie, beside the session cookie ``name``."""
    return f"{name}-login"


def clearing_cookies(name: str) -> list[str]:
    """Set-Cookie values that clear every cookie of ours: the session (whole or chunked)
    and the login transaction. Sent with a 431, whose request could not be read."""
    return [clear_cookie(n) for n in (name, *chunk_names(name), login_cookie_name(name))]


def read_chunked(name: str, cookies: Mapping[str, str]) -> str | None:
    if name in cookies:
        return cookies[name]
    pieces: list[str] = []
    for chunk in chunk_names(name):
        if chunk not in cookies:
            break
        pieces.append(cookies[chunk])
    return "".join(pieces) or None


def clear_all(name: str, present: Mapping[str, str]) -> list[str]:
    names = [name, *chunk_names(name)]
    return [clear_cookie(n) for n in names if n in present]


class SessionStore(Protocol):
    """Server-side sessions shared by replicas (``proxy.state.sessions`` over Redis).

    With a store, the session cookie carries only a sealed random id. Every
    method raises :class:`proxy.errors.StateUnavailable` when the store cannot
    be reached, so session-based requests fail closed.
    """

    @property
    def lock_ttl(self) -> float: ...

    async def load(self, sid: str) -> dict[str, Any] | None: ...

    async def save(self, sid: str, session: Mapping[str, Any]) -> None:
        """Store ``session`` until its ``exp``."""

    async def replace(
        self, sid: str, session: Mapping[str, Any], token: str
    ) -> Literal["written", "ended", "fenced"]:
        """Store a refreshed ``session`` only while it still exists (``ended``: a logout
        deleted it) and ``token`` still fences the refresh lock (``fenced``: another
        replica took the lock over)."""

    async def delete(self, sid: str, token: str | None = None) -> None:
        """Revoke; with a refresh lock ``token``, only while that token fences the lock."""

    async def consume_once(self, token: str, ttl: float) -> bool:
        """True the first time any replica consumes ``token`` (login ``state``)."""

    async def lock(self, sid: str, expires_at: float) -> str | None:
        """The refresh lock's holder token, or None while another replica holds it."""

    async def extend(self, sid: str, token: str) -> bool:
        """Renew the refresh lock; False when it is no longer ours."""

    async def unlock(self, sid: str, token: str) -> None: ...
