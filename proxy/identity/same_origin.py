"""Is a cookie-carrying request from a page of this very origin? (pure)

``SameSite=Lax`` keeps the session cookie off cross-*site* POSTs, but a
sibling host of the same site (``evil.example.com`` next to
``app.example.com``) is same-site: its pages can still make the browser send
our cookie with a state-changing request. So a session may authenticate an
unsafe method (and the logout POST) only when the browser says the request
comes from this origin. A WebSocket handshake is a GET, but opens a channel
for both directions (cross-site WebSocket hijacking): it is checked the same
way. The browser's account of where a request comes from:

* ``Sec-Fetch-Site`` (every current browser sends it): ``same-origin``, or
  ``none`` (the user's own action: address bar, bookmark);
* otherwise ``Origin`` (sent with every cross-origin request and every
  POST): exactly ``https://<the Host the browser used>``;
* neither: refused. A browser that sends neither is not one this protects,
  and a script that is not a browser should send a bearer token instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_TRUSTED_FETCH_SITES = frozenset({"same-origin", "none"})
_DEFAULT_PORTS = {"https": 443, "http": 80}


def is_unsafe(method: str) -> bool:
    return method.upper() not in SAFE_METHODS


def changes_state(method: str, headers: Mapping[str, str]) -> bool:
    """An unsafe method, or a WebSocket handshake (``headers``: lower-case names)."""
    return is_unsafe(method) or headers.get("upgrade", "").strip().lower() == "websocket"


def from_this_origin(headers: Mapping[str, str], scheme: str = "https") -> bool:
    """``headers`` (lower-case names) show a request made by a page of this origin.

    ``scheme`` is the listener's; ``https`` is always accepted too, for a
    listener behind a TLS-terminating load balancer.
    """
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None:
        return fetch_site.strip().lower() in _TRUSTED_FETCH_SITES
    origin = headers.get("origin")
    host = headers.get("host")
    if not origin or not host:
        return False
    claimed = _origin_of(origin)  # "null" (sandboxed frames, redirects) is no origin
    ours = {_origin_of(f"{s}://{host}") for s in ("https", scheme)}
    return claimed is not None and claimed in ours


def _origin_of(url: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/"):
        return None
    if parts.username is not None or parts.query or parts.fragment:
        return None
    return scheme, parts.hostname.lower(), port if port is not None else _DEFAULT_PORTS[scheme]
