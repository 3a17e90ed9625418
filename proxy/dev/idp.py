"""A development identity provider for the demo: loopback only, never for production.

It serves OIDC discovery, a JWKS and a token endpoint, and signs ES256 tokens
with a key kept in a local PEM file (created 0600 on first use), so
``gatehouse dev-token`` can mint tokens offline that a running demo accepts.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import os
import shlex
import socket
import time
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

DEFAULT_PORT = 9000
DEFAULT_ISSUER = f"http://127.0.0.1:{DEFAULT_PORT}"
DEFAULT_AUDIENCE = "gatehouse"
DEFAULT_KEY_FILE = Path(".demo/dev-idp-key.pem")
MAX_TTL = 24 * 3600.0


def require_loopback(host: str) -> None:
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host.strip("[]")).is_loopback:
            return
    except ValueError:
        pass
    raise ValueError(f"the dev IdP only listens on loopback addresses, not {host!r}")


def load_or_create_key(path: Path) -> ec.EllipticCurvePrivateKey:
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{path}: the dev IdP key must be an EC P-256 private key")
        return key
    key = ec.generate_private_key(ec.SECP256R1())
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return key


def dev_token_command(key_file: Path, issuer: str, audience: str) -> str:
    """The ``gatehouse dev-token`` command line minting tokens this dev IdP accepts."""
    parts = ["gatehouse dev-token --sub alice --groups eng"]
    if key_file != DEFAULT_KEY_FILE:
        parts.append(f"--key-file {shlex.quote(str(key_file))}")
    if issuer != DEFAULT_ISSUER:
        parts.append(f"--issuer {shlex.quote(issuer)}")
    if audience != DEFAULT_AUDIENCE:
        parts.append(f"--audience {shlex.quote(audience)}")
    return " ".join(parts)


def public_jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    # RFC 7638 thumbprint as kid: stable for the key, changes when the key does.
    canonical = json.dumps(
        {k: doc[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"), sort_keys=True
    )
    kid = base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=")
    return {**doc, "kid": kid.decode()[:16], "use": "sig", "alg": "ES256"}


def mint_token(
    key: ec.EllipticCurvePrivateKey,
    *,
    sub: str,
    groups: list[str] | tuple[str, ...] = (),
    issuer: str = DEFAULT_ISSUER,
    audience: str = DEFAULT_AUDIENCE,
    ttl: float = 600.0,
    email: str | None = None,
    now: float | None = None,
) -> str:
    if not sub:
        raise ValueError("a subject is required")
    if not 0 < ttl <= MAX_TTL:
        raise ValueError("ttl must be between 1s and 24h")
    moment = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "sub": sub,
        "groups": list(groups),
        "iat": moment,
        "exp": moment + int(ttl),
    }
    if email:
        claims["email"] = email
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": public_jwk(key)["kid"]})


def dev_idp_app(
    key: ec.EllipticCurvePrivateKey, issuer: str, audience: str = DEFAULT_AUDIENCE
) -> web.Application:
    jwks = {"keys": [public_jwk(key)]}

    async def discovery(_request: web.Request) -> web.Response:
        return web.json_response(
            {
                "issuer": issuer,
                "jwks_uri": f"{issuer}/jwks",
                "token_endpoint": f"{issuer}/token",
                "grant_types_supported": ["client_credentials"],
                "id_token_signing_alg_values_supported": ["ES256"],
            }
        )

    async def keys(_request: web.Request) -> web.Response:
        return web.json_response(jwks, headers={"Cache-Control": "max-age=300"})

    async def token(request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        sub = str(form.get("sub") or form.get("client_id") or "")
        if not sub:
            return web.json_response({"error": "invalid_request"}, status=400)
        groups = [g for g in str(form.get("groups", "")).split(",") if g]
        try:
            ttl = float(str(form.get("ttl", "600")))
            value = mint_token(
                key, sub=sub, groups=groups, issuer=issuer, audience=audience, ttl=ttl
            )
        except ValueError:
            return web.json_response({"error": "invalid_request"}, status=400)
        return web.json_response(
            {"access_token": value, "token_type": "Bearer", "expires_in": int(ttl)}
        )

    app = web.Application()
    app.router.add_get("/.well-known/openid-configuration", discovery)
    app.router.add_get("/jwks", keys)
    app.router.add_post("/token", token)
    return app


async def start_dev_idp(
    host: str, port: int, key_file: Path, audience: str = DEFAULT_AUDIENCE
) -> tuple[str, web.AppRunner]:
    """Serve the dev IdP in this event loop; returns its issuer URL and the runner to clean up."""
    require_loopback(host)
    key = load_or_create_key(key_file)
    # Bind first: the issuer names the port, which port 0 only reveals after binding.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
    except OSError:
        sock.close()
        raise
    bound = sock.getsockname()[1]
    url_host = f"[{host.strip('[]')}]" if family == socket.AF_INET6 else host
    issuer = f"http://{url_host}:{bound}"
    runner = web.AppRunner(dev_idp_app(key, issuer, audience), access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    return issuer, runner
