"""Post-login redirect targets and the API-call test (pure).

A target is accepted only as a relative path on this site, or as an absolute
https URL whose host equals a configured host exactly. The open-redirect bugs
this refuses: ``//evil.com`` and ``/\\evil.com`` (browsers treat both as
scheme-relative), encoded whitespace/control characters that browsers strip
(``/%09/evil.com``), userinfo tricks (``https://ok.com@evil.com``) and
suffix matches (``.example.com`` matching ``badexample.com``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit

MAX_TARGET_CHARS = 2048
# Raw targets carry no whitespace at all; once decoded, control characters and
# backslashes are still refused (browsers strip tabs/newlines, map \ to /).
_FORBIDDEN_RAW = re.compile(r"[\x00-\x20\x7f\\]")
_FORBIDDEN_DECODED = re.compile(r"[\x00-\x1f\x7f\\]")
_HOST = re.compile(r"^[a-z0-9.-]+$")


def safe_redirect_target(target: str, allowed_hosts: tuple[str, ...] = ()) -> str | None:
    """``target`` if it is safe to redirect to after login, else None."""
    if not target or len(target) > MAX_TARGET_CHARS:
        return None
    decoded = unquote(target)
    if _FORBIDDEN_RAW.search(target):
        return None
    for text in (decoded, unquote(decoded)):
        if _FORBIDDEN_DECODED.search(text) or text.startswith("//"):
            return None
    if target.startswith("/"):
        if decoded.startswith("//") or target.startswith("//"):
            return None
        parts = urlsplit(target)
        if parts.scheme or parts.netloc:
            return None
        return target
    try:
        parts = urlsplit(target)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme != "https" or parts.username is not None or parts.password is not None:
        return None
    host = (parts.hostname or "").lower()
    if not host or not _HOST.match(host) or "@" in parts.netloc:
        return None
    candidates = {host} if port is None else {f"{host}:{port}"}
    if port in (None, 443):
        candidates.add(host)
    if candidates & set(allowed_hosts):
        return target
    return None


def is_api_request(method: str, headers: Mapping[str, str]) -> bool:
    """True when a login redirect would be wrong: XHR/fetch calls and non-HTML clients."""
    if headers.get("x-requested-with", "").lower() == "xmlhttprequest":
        return True
    if method.upper() not in ("GET", "HEAD"):
        return True
    return "text/html" not in headers.get("accept", "").lower()
