"""Rules for the calls Gatehouse makes to other services (IdPs, token endpoints,
cloud metadata servers, upstreams), shared by the identity, credentials and
upstream layers so that none of them imports another.

* Which URLs may be called: HTTPS, or plain HTTP to a loopback address only.
* How much of an answer is read: at most :data:`MAX_RESPONSE_BYTES`, refused
  as soon as it is exceeded, never read whole first.
* How long to wait before trying a failed peer again: full-jitter exponential
  backoff, so many callers spread their retries instead of synchronising them.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

import aiohttp

MAX_RESPONSE_BYTES = 1 << 20


class FetchError(Exception):
    """An endpoint could not be used; the message never carries secrets."""


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def url_problem(url: str) -> str | None:
    """Why ``url`` is not acceptable to call (HTTPS, or HTTP on loopback only)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        return "is not a valid URL"
    if not parts.hostname or parts.scheme not in ("https", "http"):
        return "must be an absolute https:// URL"
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        return "must use https:// (plain http is only allowed for loopback addresses)"
    if parts.fragment or parts.username or parts.password:
        return "must not carry credentials or a fragment"
    return None


async def read_bounded(response: aiohttp.ClientResponse) -> bytes:
    """The body, or FetchError once it exceeds MAX_RESPONSE_BYTES (never read whole)."""
    if response.content_length is not None and response.content_length > MAX_RESPONSE_BYTES:
        raise FetchError("response too large")
    body = bytearray()
    async for chunk in response.content.iter_any():
        body += chunk
        if len(body) > MAX_RESPONSE_BYTES:
            raise FetchError("response too large")
    return bytes(body)


def backoff_delay(retry: int, base: float, maximum: float, rand: float) -> float:
    """Full-jitter exponential backoff before retry number ``retry`` (1-based).

    ``rand`` is uniform in [0, 1): the delay is uniform in
    [0, min(maximum, base × 2^(retry-1))), which spreads retries from many
    callers instead of synchronising them.
    """
    ceiling = min(maximum, base * float(2 ** max(0, retry - 1)))
    return max(0.0, min(rand, 1.0)) * ceiling
