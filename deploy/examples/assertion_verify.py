"""Verify Gatehouse's X-Gatehouse-Assertion in a FastAPI app: copy this file.

    from assertion_verify import gatehouse_caller
    @app.get("/api/whoami")
    def whoami(caller: dict = Depends(gatehouse_caller)) -> dict: return caller

Set GATEHOUSE_URL (the proxy's public URL, the assertion's ``iss``) and
GATEHOUSE_AUDIENCE (the backend name in Gatehouse, the assertion's ``aud``).
"""

import os
from typing import Any

import jwt
from fastapi import Header, HTTPException

GATEHOUSE_URL = os.environ.get("GATEHOUSE_URL", "http://127.0.0.1:8080").rstrip("/")
AUDIENCE = os.environ.get("GATEHOUSE_AUDIENCE", "app")
# Caches keys and refetches the JWKS when an unknown kid shows up (key rotation).
_jwks = jwt.PyJWKClient(f"{GATEHOUSE_URL}/.well-known/gatehouse/jwks.json", lifespan=300)


def gatehouse_caller(x_gatehouse_assertion: str = Header("")) -> dict[str, Any]:
    """The caller's claims (sub, email, groups, pass_claims), or 401. Sync: runs in a thread."""
    try:
        key = _jwks.get_signing_key_from_jwt(x_gatehouse_assertion)
        claims: dict[str, Any] = jwt.decode(
            x_gatehouse_assertion,
            key,
            algorithms=["ES256"],  # never let the token choose its algorithm
            issuer=GATEHOUSE_URL,
            audience=AUDIENCE,
            leeway=30,
            options={"require": ["iss", "aud", "exp", "iat", "jti"]},
        )
    except jwt.PyJWTError:
        raise HTTPException(401, "invalid gatehouse assertion") from None
    return claims
