"""The token-endpoint half of OAuth 2.0 (RFC 6749 section 5) shared by grant providers."""

from __future__ import annotations

import base64
import json
import re
import ssl
import time
from collections.abc import Mapping
from urllib.parse import quote

import aiohttp

from proxy.config.reader import SecretRef
from proxy.credentials.cache import CredentialFetchError
from proxy.outbound import FetchError, read_bounded

TOKEN_TIMEOUT = aiohttp.ClientTimeout(total=10)
DEFAULT_LIFETIME = 300.0
_ERROR_CODE = re.compile(r"^[a-z_]{1,64}$")


def basic_auth(client_id: str, secret: str) -> str:
    # RFC 6749 2.3.1: form-urlencode each part before base64, which plain
    # aiohttp.BasicAuth does not do (secrets with ':' or '%' would break).
    raw = f"{quote(client_id, safe='')}:{quote(secret, safe='')}"
    return "Basic " + base64.b64encode(raw.encode()).decode("ascii")


def authenticate_with_secret(
    client_id: str,
    auth_method: str,
    secret_ref: SecretRef | None,
    form: dict[str, str],
    headers: dict[str, str],
) -> None:
    """Add client authentication by secret (RFC 6749 2.3.1) to a token request.

    ``client_secret_post`` puts the pair in the form; anything else is HTTP
    Basic. The secret is read now, so a rotated file is picked up.
    """
    try:
        assert secret_ref is not None
        secret = secret_ref.read()
    except (OSError, KeyError):
        raise CredentialFetchError("client secret is unreadable") from None
    if auth_method == "client_secret_post":
        form["client_id"] = client_id
        form["client_secret"] = secret
    else:
        headers["Authorization"] = basic_auth(client_id, secret)


def jwt_expiry(token: str) -> float | None:
    """``exp`` of a JWT read without verification: only used to time our own cache."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return None
    exp = payload.get("exp") if isinstance(payload, dict) else None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


def lifetime_of(body: Mapping[str, object], token: str, now: float) -> float:
    expires_in = body.get("expires_in")
    if isinstance(expires_in, str) and expires_in.isdigit():
        expires_in = int(expires_in)
    if isinstance(expires_in, int | float) and not isinstance(expires_in, bool) and expires_in > 0:
        return now + float(expires_in)
    exp = jwt_expiry(token)
    return exp if exp is not None else now + DEFAULT_LIFETIME


async def token_request(
    http: aiohttp.ClientSession,
    url: str,
    form: dict[str, str],
    *,
    headers: dict[str, str] | None = None,
    ssl_ctx: ssl.SSLContext | bool = True,
    what: str = "token endpoint",
) -> tuple[str, float, dict[str, object]]:
    """POST ``form`` and return (access_token, expires_at, body). Errors never echo secrets."""
    now = time.time()
    try:
        async with http.post(
            url,
            data=form,
            headers={"Accept": "application/json", **(headers or {})},
            ssl=ssl_ctx,
            timeout=TOKEN_TIMEOUT,
            allow_redirects=False,
        ) as resp:
            raw = await read_bounded(resp)
            status = resp.status
    except FetchError as exc:
        raise CredentialFetchError(f"{what}: {exc}") from None
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        raise CredentialFetchError(f"{what} unreachable ({type(exc).__name__})") from None
    try:
        body = json.loads(raw) if raw else {}
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    if status != 200:
        code = body.get("error")
        # Only the RFC 6749 error code travels; error_description may quote request data.
        code_text = f" {code}" if isinstance(code, str) and _ERROR_CODE.match(code) else ""
        raise CredentialFetchError(f"{what} answered {status}{code_text}")
    token = body.get("access_token")
    if not isinstance(token, str) or not token:
        raise CredentialFetchError(f"{what} answered without an access_token")
    token_type = body.get("token_type")
    if isinstance(token_type, str) and token_type.lower() not in ("bearer", "n_a"):
        raise CredentialFetchError(f"{what} issued an unsupported token_type")
    return token, lifetime_of(body, token, now), body
