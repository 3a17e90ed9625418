"""Per-run signing keys and a JWT issuer that publishes them as JWKS."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


def new_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def public_jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return {**jwk, "kid": kid, "alg": "RS256", "use": "sig"}


@dataclass
class Issuer:
    """Signs RS256 JWTs as ``iss`` with a key generated for this test run."""

    iss: str
    key: rsa.RSAPrivateKey = field(default_factory=new_rsa_key)
    kid: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    issued: list[str] = field(default_factory=list)

    def mint(self, claims: dict[str, Any], lifetime: float = 3600) -> str:
        now = int(time.time())
        body = {"iss": self.iss, "iat": now, "nbf": now, "exp": int(now + lifetime), **claims}
        token = jwt.encode(body, self.key, algorithm="RS256", headers={"kid": self.kid})
        self.issued.append(token)
        return token

    def jwks(self) -> dict[str, Any]:
        return {"keys": [public_jwk(self.key, self.kid)]}

    def verify(self, token: str, audience: str | None = None) -> dict[str, Any]:
        claims: dict[str, Any] = jwt.decode(
            token,
            self.key.public_key(),
            algorithms=["RS256"],
            issuer=self.iss,
            audience=audience,
            options={"verify_aud": audience is not None, "require": ["exp", "iss"]},
        )
        return claims
