"""Assertion signing keys: load, publish as JWKS, and generate for rotation.

The file is a JWK set (private EC P-256 keys, each with a ``kid``) or a PEM
bundle of EC P-256 private keys whose ``kid`` is the RFC 7638 thumbprint. The
first key signs; the others stay published so assertions signed just before a
rotation still verify at the backends.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from proxy.files import replace_file, temporary_of

_PEM_BLOCK = re.compile(
    rb"-----BEGIN (?:EC )?PRIVATE KEY-----.+?-----END (?:EC )?PRIVATE KEY-----", re.DOTALL
)


class SigningKeyError(Exception):
    """The key file is unusable; the message names the problem, never key material."""


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    private_key: ec.EllipticCurvePrivateKey = field(repr=False)

    def public_jwk(self) -> dict[str, str]:
        numbers = self.private_key.public_key().public_numbers()
        return {
            "kty": "EC",
            "crv": "P-256",
            "x": _b64(numbers.x.to_bytes(32, "big")),
            "y": _b64(numbers.y.to_bytes(32, "big")),
            "kid": self.kid,
            "alg": "ES256",
            "use": "sig",
        }


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def thumbprint(key: ec.EllipticCurvePrivateKey) -> str:
    """RFC 7638 JWK thumbprint of the public key: a stable ``kid`` for PEM keys."""
    numbers = key.public_key().public_numbers()
    canonical = json.dumps(
        {
            "crv": "P-256",
            "kty": "EC",
            "x": _b64(numbers.x.to_bytes(32, "big")),
            "y": _b64(numbers.y.to_bytes(32, "big")),
        },
        separators=(",", ":"),
        sort_keys=True,
    )
    return _b64(hashlib.sha256(canonical.encode()).digest())


def _from_jwk(jwk: Any, index: int) -> SigningKey:
    if not isinstance(jwk, dict):
        raise SigningKeyError(f"keys[{index}] is not an object")
    if jwk.get("kty") != "EC" or jwk.get("crv") != "P-256":
        raise SigningKeyError(f"keys[{index}] must be an EC P-256 key (ES256)")
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid:
        raise SigningKeyError(f"keys[{index}] has no kid")
    try:
        d = int.from_bytes(_b64d(jwk["d"]), "big")
        key = ec.derive_private_key(d, ec.SECP256R1())
    except (KeyError, TypeError, ValueError) as exc:
        raise SigningKeyError(f"keys[{index}] ({kid}) is not a usable private key") from exc
    return SigningKey(kid, key)


def parse_signing_keys(data: bytes) -> tuple[SigningKey, ...]:
    stripped = data.lstrip()
    keys: list[SigningKey] = []
    if stripped.startswith(b"{"):
        try:
            doc = json.loads(stripped)
        except ValueError as exc:
            raise SigningKeyError("not valid JSON") from exc
        items = doc.get("keys") if isinstance(doc, dict) else None
        if not isinstance(items, list):
            raise SigningKeyError("a JWK set needs a 'keys' list")
        keys = [_from_jwk(jwk, i) for i, jwk in enumerate(items)]
    else:
        for i, block in enumerate(_PEM_BLOCK.findall(data)):
            try:
                key = serialization.load_pem_private_key(block, password=None)
            except (ValueError, TypeError) as exc:
                raise SigningKeyError(f"PEM key {i} cannot be loaded") from exc
            if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
                raise SigningKeyError(f"PEM key {i} must be an EC P-256 key (ES256)")
            keys.append(SigningKey(thumbprint(key), key))
    if not keys:
        raise SigningKeyError("no signing keys found (expected a JWK set or PEM EC keys)")
    kids = [k.kid for k in keys]
    if len(set(kids)) != len(kids):
        raise SigningKeyError("duplicate kid")
    return tuple(keys)


def load_signing_keys(path: Path) -> tuple[SigningKey, ...]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"cannot read: {exc.strerror}") from exc
    return parse_signing_keys(data)


def jwks_document(keys: tuple[SigningKey, ...]) -> bytes:
    return json.dumps({"keys": [k.public_jwk() for k in keys]}, separators=(",", ":")).encode()


def private_jwk(key: SigningKey) -> dict[str, str]:
    jwk = key.public_jwk()
    jwk["d"] = _b64(key.private_key.private_numbers().private_value.to_bytes(32, "big"))
    return jwk


def rotate_key_file(path: Path, keep: int = 2) -> str:
    """Put a fresh key first in ``path`` (a JWK set), keeping ``keep`` older keys published.

    Returns the new kid. Written to ``<file>.tmp`` and renamed, so a reader
    never sees half a file. The temporary file is created new (``O_EXCL``),
    never through a symlink (``O_NOFOLLOW``), and readable by its owner only
    from the first byte: a leftover or planted ``.tmp`` is an error, not a
    file to write private keys into.
    """
    existing: tuple[SigningKey, ...] = ()
    if path.exists():
        existing = load_signing_keys(path)
    new = ec.generate_private_key(ec.SECP256R1())
    key = SigningKey(thumbprint(new), new)
    keys = (key, *existing[:keep])
    data = json.dumps({"keys": [private_jwk(k) for k in keys]}, indent=2).encode()
    tmp = temporary_of(path)
    try:
        replace_file(path, data)  # synced: it replaces the only copy of the keys
    except FileExistsError:
        raise SigningKeyError(
            f"{tmp} exists: another rotation is running, or one was interrupted "
            "(check it, remove it, and rotate again)"
        ) from None
    except OSError as exc:
        raise SigningKeyError(f"cannot write {tmp}: {exc.strerror}") from None
    return key.kid
