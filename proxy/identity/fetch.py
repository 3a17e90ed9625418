"""Bounded HTTP fetches from identity providers, and OIDC discovery.

Every URL is checked before use: HTTPS only (plain HTTP only for loopback),
no redirects followed (a redirect could leave the issuer's origin), bounded
response size and time. Discovered endpoints must stay on the issuer's origin,
so a compromised or confused discovery document cannot point key fetches or
token exchanges elsewhere; configure ``jwks_uri`` explicitly for IdPs that
serve keys from another host. Every answer is parsed as strict JSON (a repeated
member name anywhere refuses it): these documents decide who a caller is. The
client keeps no cookies (``identity_session``), so nothing one IdP answer sets
is ever sent along with another call.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp

from proxy.identity.strict_json import StrictJSONError, loads
from proxy.outbound import FetchError, read_bounded, url_problem

TIMEOUT = aiohttp.ClientTimeout(total=5, connect=3)
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)\"?\s*(?:,|$)", re.IGNORECASE)
_NO_CACHE = re.compile(r"(?:^|,)\s*(no-store|no-cache)\s*(?:,|$)", re.IGNORECASE)


def identity_session() -> aiohttp.ClientSession:
    """The HTTP client for IdP calls: no cookie jar, so one answer's cookies never
    travel with a later call (made for another caller, or to another IdP)."""
    return aiohttp.ClientSession(raise_for_status=False, cookie_jar=aiohttp.DummyCookieJar())


def origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, (parts.hostname or "").lower(), port


def check_url(url: str, *, same_origin_as: str | None = None) -> str:
    problem = url_problem(url)
    if problem:
        raise FetchError(f"endpoint {problem}")
    if same_origin_as is not None and origin(url) != origin(same_origin_as):
        raise FetchError("discovered endpoint is not on the issuer's origin")
    return url


def max_age(cache_control: str | None) -> float | None:
    """Seconds from a Cache-Control header; 0 for no-store/no-cache; None if absent."""
    if not cache_control:
        return None
    if _NO_CACHE.search(cache_control):
        return 0.0
    m = _MAX_AGE.search(cache_control)
    return float(m.group(1)) if m else None


async def _read_json(response: aiohttp.ClientResponse) -> Any:
    if response.status != 200:
        raise FetchError(f"HTTP {response.status}")
    body = await read_bounded(response)
    try:
        return loads(body)
    except StrictJSONError as exc:
        raise FetchError(f"response: {exc}") from exc


async def get_json(session: aiohttp.ClientSession, url: str) -> tuple[Any, str | None]:
    """GET a JSON document; returns it with its Cache-Control header."""
    check_url(url)
    try:
        async with session.get(
            url, timeout=TIMEOUT, allow_redirects=False, headers={"Accept": "application/json"}
        ) as response:
            return await _read_json(response), response.headers.get("Cache-Control")
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise FetchError(type(exc).__name__) from exc


def basic_auth(client_id: str, secret: str) -> str:
    """HTTP Basic client authentication; RFC 6749 2.3.1 form-encodes both parts first."""
    pair = f"{quote(client_id, safe='')}:{quote(secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode()).decode()


async def post_form(
    session: aiohttp.ClientSession,
    url: str,
    form: dict[str, str] | str,
    authorization: str | None = None,
) -> tuple[int, Any]:
    """POST a form (a dict, or an already urlencoded body) and return (status, JSON body)."""
    check_url(url)
    headers = {"Accept": "application/json"}
    if isinstance(form, str):
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    if authorization is not None:
        headers["Authorization"] = authorization
    try:
        async with session.post(
            url, data=form, timeout=TIMEOUT, allow_redirects=False, headers=headers
        ) as response:
            body = await read_bounded(response)
            try:
                return response.status, loads(body)
            except StrictJSONError as exc:
                raise FetchError(f"HTTP {response.status}, body: {exc}") from exc
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise FetchError(type(exc).__name__) from exc


@dataclass(frozen=True, slots=True)
class ProviderMetadata:
    issuer: str
    jwks_uri: str
    authorization_endpoint: str | None = None
    token_endpoint: str | None = None
    end_session_endpoint: str | None = None
    introspection_endpoint: str | None = None


def parse_metadata(issuer: str, doc: Any) -> ProviderMetadata:
    """Validate a discovery document against the issuer it was fetched for."""
    if not isinstance(doc, dict):
        raise FetchError("discovery document is not an object")
    if doc.get("issuer") != issuer:
        raise FetchError("discovery document names a different issuer")

    def endpoint(name: str, required: bool = False) -> str | None:
        value = doc.get(name)
        if value is None and not required:
            return None
        if not isinstance(value, str):
            raise FetchError(f"discovery document lacks {name}")
        return check_url(value, same_origin_as=issuer)

    jwks_uri = endpoint("jwks_uri", required=True)
    assert jwks_uri is not None
    return ProviderMetadata(
        issuer=issuer,
        jwks_uri=jwks_uri,
        authorization_endpoint=endpoint("authorization_endpoint"),
        token_endpoint=endpoint("token_endpoint"),
        end_session_endpoint=endpoint("end_session_endpoint"),
        introspection_endpoint=endpoint("introspection_endpoint"),
    )


async def discover(session: aiohttp.ClientSession, issuer: str) -> ProviderMetadata:
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    doc, _ = await get_json(session, url)
    return parse_metadata(issuer, doc)
