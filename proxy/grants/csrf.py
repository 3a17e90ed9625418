"""CSRF tokens for the access page's forms (pure).

Double submit, bound to the person: the browser holds a random nonce in a
``__Host-`` cookie (``SameSite=Strict``, ``HttpOnly``); every form carries
``<issued-at>.<HMAC(key, nonce, issuer, subject, issued-at)>``. Another site
can make the browser send the cookie but can neither read it nor compute the
token, a token taken from one person's page is worthless in another's
session, and tokens age out. The key is derived from the browser cookie
keys, so every replica checks every other's tokens, and rotating those keys
rotates this one (every listed key verifies, the first signs).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

COOKIE = "__Host-gatehouse-csrf"
FIELD = "csrf"
MAX_AGE = 12 * 3600
_LABEL = b"gatehouse access page csrf v1"


def derive_keys(cookie_keys: list[bytes]) -> list[bytes]:
    """One CSRF key per cookie key: never the cookie key itself (it encrypts sessions)."""
    return [hmac.new(key, _LABEL, hashlib.sha256).digest() for key in cookie_keys]


def new_nonce() -> str:
    return secrets.token_urlsafe(32)


def _mac(key: bytes, nonce: str, issuer: str, subject: str, issued_at: int) -> str:
    message = "\x1f".join((nonce, issuer, subject, str(issued_at))).encode()
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def token(keys: list[bytes], nonce: str, issuer: str, subject: str, now: float) -> str:
    issued_at = int(now)
    return f"{issued_at}.{_mac(keys[0], nonce, issuer, subject, issued_at)}"


def valid(
    keys: list[bytes], sent: str, nonce: str | None, issuer: str, subject: str, now: float
) -> bool:
    """The form's token matches this browser's nonce and this person, and is recent."""
    if not nonce or not sent or len(sent) > 128:
        return False
    stamp, _, mac = sent.partition(".")
    if not stamp.isdigit() or not mac:
        return False
    issued_at = int(stamp)
    if not issued_at - 60 <= now <= issued_at + MAX_AGE:
        return False
    return any(
        hmac.compare_digest(mac.encode(), _mac(key, nonce, issuer, subject, issued_at).encode())
        for key in keys
    )
