"""A Google Cloud Function (functions-framework) that checks a Google-signed ID token.

Cloud Run / Functions verify ``Authorization`` (or ``X-Serverless-Authorization``,
which takes precedence) before the function runs; this sample does the same
check itself so it can also run behind Gatehouse outside Google. Configure:

* FUNCTION_AUDIENCE  the URL the token was minted for (the function's URL)
* GOOGLE_JWKS_URL    default https://www.googleapis.com/oauth2/v3/certs
* ALLOWED_EMAILS     optional comma-separated service accounts allowed to call

Run: functions-framework --target=hello --source=main.py
"""

from __future__ import annotations

import os
from typing import Any

import flask
import functions_framework
import jwt

ISSUERS = ["https://accounts.google.com", "accounts.google.com"]
_clients: dict[str, jwt.PyJWKClient] = {}


def _verify(token: str) -> dict[str, Any]:
    url = os.environ.get("GOOGLE_JWKS_URL", "https://www.googleapis.com/oauth2/v3/certs")
    client = _clients.setdefault(url, jwt.PyJWKClient(url, lifespan=3600))
    key = client.get_signing_key_from_jwt(token)
    claims: dict[str, Any] = jwt.decode(
        token,
        key,
        algorithms=["RS256"],
        audience=os.environ["FUNCTION_AUDIENCE"],
        issuer=ISSUERS,
        leeway=60,
        options={"require": ["iss", "aud", "exp", "iat"]},
    )
    return claims


@functions_framework.http
def hello(request: flask.Request) -> flask.typing.ResponseReturnValue:
    header = request.headers.get("X-Serverless-Authorization") or request.headers.get(
        "Authorization", ""
    )
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return {"error": "bearer token required"}, 401
    try:
        claims = _verify(token)
    except jwt.PyJWTError:
        return {"error": "invalid token"}, 401
    allowed = {e for e in os.environ.get("ALLOWED_EMAILS", "").split(",") if e}
    if allowed and claims.get("email") not in allowed:
        return {"error": "caller not allowed"}, 403
    return {"email": claims.get("email"), "aud": claims["aud"]}
