"""Start the real oidc-provider (node) for a test and stop it afterwards.

Keys are generated here and handed to the provider, so a test knows the
private keys (to mint hostile tokens with a valid signature) and can rotate
them by restarting the provider on the same port with a different key set.

Accounts are ``{id: {email, name, groups, claims, amr, acr, groups_overage}}``:
``claims`` are extra ID token claims (released with the ``profile`` scope),
``amr``/``acr`` are recorded at login, and ``groups_overage`` replaces the
groups claim by Entra ID's ``_claim_names`` pointer. Provider options used by
tests: ``access_token_ttl``, ``id_token_ttl``, ``rotate_refresh_tokens``,
``issue_refresh_tokens``, ``omit_id_token_on_refresh``, ``refresh_delay_ms``.
"""

from __future__ import annotations

import base64
import json
import os
import select
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).resolve().parent / "oidc" / "provider.mjs"
RESOURCE = "urn:gatehouse:api"

CI_CLIENT = {"client_id": "svc-ci", "client_secret": "svc-ci-secret"}
OPAQUE_CLIENT = {"client_id": "svc-opaque", "client_secret": "svc-opaque-secret"}
WEB_CLIENT = {"client_id": "gatehouse", "client_secret": "gatehouse-secret"}


def rsa_jwk(kid: str) -> dict[str, Any]:
    """A private RSA signing key as a JWK (the provider wants private members)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key))
    jwk.pop("key_ops", None)  # the provider would publish "sign" for the public half
    return {**jwk, "kid": kid, "use": "sig", "alg": "RS256"}


def ec_jwk(kid: str) -> dict[str, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    jwk: dict[str, Any] = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key))
    jwk.pop("key_ops", None)
    return {**jwk, "kid": kid, "use": "sig", "alg": "ES256"}


def private_key(jwk: dict[str, Any]) -> Any:
    """The cryptography key object for a private JWK (to sign test tokens)."""
    return jwt.PyJWK(jwk).key


@dataclass
class OidcProvider:
    """One oidc-provider process; ``restart`` keeps the port and so the issuer."""

    keys: list[dict[str, Any]]
    redirect_uris: list[str] = field(default_factory=lambda: ["https://127.0.0.1/cb"])
    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    port: int = 0
    issuer: str = ""
    _proc: subprocess.Popen[bytes] | None = None
    _dir: tempfile.TemporaryDirectory[str] | None = None

    def _config(self) -> dict[str, Any]:
        web_origin = self.redirect_uris[0].split("/", 3)
        post_logout = f"{web_origin[0]}//{web_origin[2]}/"
        return {
            "port": self.port,
            "jwks": {"keys": self.keys},
            "resource": RESOURCE,
            "accounts": self.accounts,
            "client_groups": {"svc-ci": ["deployers"]},
            "opaque_clients": [OPAQUE_CLIENT["client_id"]],
            "clients": [
                {
                    **CI_CLIENT,
                    "grant_types": ["client_credentials"],
                    "response_types": [],
                    "redirect_uris": [],
                },
                {
                    **OPAQUE_CLIENT,
                    "grant_types": ["client_credentials"],
                    "response_types": [],
                    "redirect_uris": [],
                },
                {
                    **WEB_CLIENT,
                    "grant_types": ["authorization_code", "refresh_token"],
                    "response_types": ["code"],
                    "redirect_uris": self.redirect_uris,
                    "post_logout_redirect_uris": [post_logout],
                },
            ],
            **self.options,
        }

    def start(self) -> str:
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="gatehouse-oidc-")
        config_path = Path(self._dir.name) / "config.json"
        config_path.write_text(json.dumps(self._config()), encoding="utf-8")
        env = {**os.environ, "NODE_ENV": "test"}
        self._proc = subprocess.Popen(
            ["node", str(SCRIPT), str(config_path)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        assert self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], 20)
        line = self._proc.stdout.readline() if ready else b""
        if not line:
            self.stop()
            raise RuntimeError("oidc-provider did not start")
        self.issuer = json.loads(line)["issuer"]
        self.port = int(self.issuer.rsplit(":", 1)[1])
        self._wait_for_discovery()
        return self.issuer

    def _wait_for_discovery(self) -> None:
        url = f"{self.issuer}/.well-known/openid-configuration"
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.05)

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            if self._proc.stdout is not None:
                self._proc.stdout.close()
            self._proc = None

    def restart(self, keys: list[dict[str, Any]] | None = None) -> None:
        """Stop and start again on the same port, optionally with a new key set."""
        self.stop()
        if keys is not None:
            self.keys = keys
        self.start()

    def close(self) -> None:
        self.stop()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    # -- helpers for tests ------------------------------------------------
    @property
    def token_endpoint(self) -> str:
        return f"{self.issuer}/token"

    @property
    def jwks_uri(self) -> str:
        return f"{self.issuer}/jwks"

    def token_requests(self) -> dict[str, int]:
        """How many token requests the provider answered, by grant type."""
        with urllib.request.urlopen(f"{self.issuer}/test/token-requests", timeout=5) as response:
            counts: dict[str, int] = json.loads(response.read())
        return counts

    def client_credentials_token(self, client: dict[str, str] | None = None) -> str:
        """An access token from the client-credentials grant (JWT for svc-ci)."""
        client = client or CI_CLIENT
        body = b"grant_type=client_credentials&scope=api%3Aread"
        request = urllib.request.Request(self.token_endpoint, data=body, method="POST")
        basic = base64.b64encode(f"{client['client_id']}:{client['client_secret']}".encode())
        request.add_header("Authorization", f"Basic {basic.decode()}")
        request.add_header("Content-Type", "application/x-www-form-urlencoded")
        with urllib.request.urlopen(request, timeout=5) as response:
            token: str = json.loads(response.read())["access_token"]
        return token


@contextmanager
def oidc_provider(
    keys: list[dict[str, Any]] | None = None,
    *,
    redirect_uris: list[str] | None = None,
    accounts: dict[str, dict[str, Any]] | None = None,
    **options: Any,
) -> Iterator[OidcProvider]:
    """Run oidc-provider on a free 127.0.0.1 port for the duration of the block."""
    provider = OidcProvider(
        keys=keys or [rsa_jwk("rsa-1")],
        redirect_uris=redirect_uris or ["https://127.0.0.1/cb"],
        accounts=accounts or {},
        options=options,
    )
    provider.start()
    try:
        yield provider
    finally:
        provider.close()
