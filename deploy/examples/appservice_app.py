"""An Azure App Service-style backend that accepts Entra ID bearer tokens.

Gatehouse's ``azure`` credential sends ``Authorization: Bearer <token>`` for
``api://<app-id>/.default``; this app checks issuer, audience and signature the
way App Service Authentication (Easy Auth) would. Configure by environment:

* ENTRA_ISSUER   e.g. https://login.microsoftonline.com/<tenant>/v2.0
* ENTRA_AUDIENCE e.g. api://<app-id>
* ENTRA_JWKS_URL e.g. https://login.microsoftonline.com/<tenant>/discovery/v2.0/keys
* ENTRA_ALLOWED_CLIENTS (optional) comma-separated client/object ids allowed to call
"""

from __future__ import annotations

import os
from typing import Annotated, Any

import jwt
from fastapi import Depends, FastAPI, Header, HTTPException

ISSUER = os.environ["ENTRA_ISSUER"]
AUDIENCE = os.environ["ENTRA_AUDIENCE"]
ALLOWED = {c for c in os.environ.get("ENTRA_ALLOWED_CLIENTS", "").split(",") if c}
_jwks = jwt.PyJWKClient(os.environ["ENTRA_JWKS_URL"], lifespan=3600)

app = FastAPI(title="App Service backend")


def entra_caller(authorization: Annotated[str, Header()] = "") -> dict[str, Any]:
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise HTTPException(401, "bearer token required", {"WWW-Authenticate": "Bearer"})
    try:
        key = _jwks.get_signing_key_from_jwt(token)
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=["RS256"],
            issuer=ISSUER,
            audience=AUDIENCE,
            leeway=60,
            options={"require": ["iss", "aud", "exp", "iat"]},
        )
    except jwt.PyJWTError:
        raise HTTPException(401, "invalid token", {"WWW-Authenticate": "Bearer"}) from None
    caller = claims.get("azp") or claims.get("appid") or claims.get("oid")
    if ALLOWED and caller not in ALLOWED:
        raise HTTPException(403, "client not allowed")
    return claims


@app.get("/api/whoami")
def whoami(claims: Annotated[dict[str, Any], Depends(entra_caller)]) -> dict[str, Any]:
    return {"caller": claims.get("azp") or claims.get("oid"), "tenant": claims.get("tid")}


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}
