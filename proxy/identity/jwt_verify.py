"""JWT verification as pure functions over a token, an issuer's config and its keys.

Every check here is a regression test for a bug some proxy shipped: the size
cap runs before any decoding, the algorithm comes from the issuer's allow-list
and must fit the key's type (an RSA key can never be used as an HMAC secret),
keys come only from the issuer's JWKS (``jku``/``x5u``/``jwk``/``x5c`` headers
are refused, ``kid`` is only a dictionary key), unknown ``crit`` extensions are
refused, ``exp`` is required and ``iss`` is compared exactly. The header and
the payload are parsed strictly (a repeated member name, at any depth, is
refused: two parsers must never read two different callers from one token),
and only the issuer's accepted ``typ`` values pass (RFC 8725 §3.11), so a
logout token or a DPoP proof is never taken for an access token.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from proxy.errors import AuthenticationError, Reason
from proxy.identity.config import HMAC_ALGORITHMS, IssuerConfig, normalise_type
from proxy.identity.overage import overage_claims
from proxy.identity.strict_json import StrictJSONError, loads
from proxy.model import AuthMethod, Identity

_SEGMENT = re.compile(rb"^[A-Za-z0-9_-]*$")
_MAX_HEADER_BYTES = 2048
_MAX_KID_CHARS = 256
# Header members that would let the token choose its own verification key.
_KEY_CARRYING_HEADERS = frozenset({"jku", "x5u", "jwk", "x5c"})
_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_ALGORITHMS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
_PRIVATE_KEY_TYPES = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
)
_MAX_JWKS_KEYS = 100
# Verifies the signature only: the payload is then parsed strictly here, and
# every claim check is ours (check_claims), on the cached path too.
_JWS = jwt.PyJWS()


def invalid(detail: str) -> AuthenticationError:
    return AuthenticationError(Reason.INVALID_TOKEN, detail=detail)


@dataclass(frozen=True, slots=True)
class VerificationKey:
    kid: str | None
    key: Any
    algorithms: frozenset[str]


@dataclass(frozen=True, slots=True)
class KeySet:
    """An issuer's usable signature keys; ``kid`` is only ever a dictionary key."""

    by_kid: Mapping[str, VerificationKey]
    without_kid: tuple[VerificationKey, ...] = ()

    def __len__(self) -> int:
        return len(self.by_kid) + len(self.without_kid)

    def candidates(self, alg: str) -> list[VerificationKey]:
        keys = [*self.by_kid.values(), *self.without_kid]
        return [k for k in keys if alg in k.algorithms]


EMPTY_KEYS = KeySet(by_kid={})


def _algorithms_for(jwk: Mapping[str, Any]) -> frozenset[str]:
    """Algorithms a JWK may verify, bound to its key type (never HMAC from a JWKS)."""
    kty = jwk.get("kty")
    if kty == "RSA":
        allowed = _RSA_ALGORITHMS
    elif kty == "EC":
        alg = _EC_ALGORITHMS.get(str(jwk.get("crv")))
        allowed = frozenset({alg}) if alg else frozenset()
    elif kty == "OKP" and jwk.get("crv") in ("Ed25519", "Ed448"):
        allowed = frozenset({"EdDSA"})
    else:
        return frozenset()
    declared = jwk.get("alg")
    if declared is not None:
        return allowed & {declared} if isinstance(declared, str) else frozenset()
    return allowed


def keys_from_jwks(document: object) -> KeySet:
    """Usable verification keys from a JWKS document; unusable entries are skipped."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS document")
    by_kid: dict[str, VerificationKey] = {}
    without_kid: list[VerificationKey] = []
    for jwk in document["keys"][:_MAX_JWKS_KEYS]:
        if not isinstance(jwk, dict):
            continue
        if jwk.get("use", "sig") != "sig":
            continue
        ops = jwk.get("key_ops")
        if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
            continue
        algorithms = _algorithms_for(jwk)
        if not algorithms:
            continue
        public = {k: v for k, v in jwk.items() if k not in ("d", "p", "q", "dp", "dq", "qi")}
        try:
            key = jwt.PyJWK(public).key
        except Exception:  # noqa: S112 - one malformed key must not hide the others
            continue
        if isinstance(key, _PRIVATE_KEY_TYPES):
            key = key.public_key()
        kid = jwk.get("kid")
        if isinstance(kid, str) and kid:
            by_kid.setdefault(kid, VerificationKey(kid, key, algorithms))
        elif kid is None:
            without_kid.append(VerificationKey(None, key, algorithms))
    return KeySet(by_kid=MappingProxyType(by_kid), without_kid=tuple(without_kid))


def hmac_key(secret: bytes, algorithms: tuple[str, ...]) -> VerificationKey:
    return VerificationKey(None, secret, frozenset(algorithms) & frozenset(HMAC_ALGORITHMS))


def _b64decode(segment: bytes) -> bytes:
    if not _SEGMENT.match(segment):
        raise invalid("token segment is not base64url")
    try:
        return base64.urlsafe_b64decode(segment + b"=" * (-len(segment) % 4))
    except (binascii.Error, ValueError) as exc:
        raise invalid("token segment is not base64url") from exc


@dataclass(frozen=True, slots=True)
class TokenHeader:
    alg: str
    kid: str | None
    typ: str | None = None


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2


def looks_like_jwe(token: str) -> bool:
    """Five compact parts: an encrypted token, which is never accepted here."""
    return token.count(".") == 4


def split_token(token: str, max_bytes: int) -> tuple[bytes, bytes, bytes]:
    """The three segments, after the size cap and before any decoding."""
    if len(token) > max_bytes:
        raise invalid("token exceeds max_token_bytes")
    try:
        raw = token.encode("ascii")
    except UnicodeEncodeError as exc:
        raise invalid("token is not ASCII") from exc
    parts = raw.split(b".")
    if len(parts) == 5:
        raise invalid("encrypted tokens (JWE) are not accepted")
    if len(parts) != 3 or not all(parts):
        raise invalid("token is not a compact JWS")
    return parts[0], parts[1], parts[2]


def parse_header(token: str, max_bytes: int) -> TokenHeader:
    header_segment = split_token(token, max_bytes)[0]
    if len(header_segment) > _MAX_HEADER_BYTES:
        raise invalid("token header too large")
    try:
        header = loads(_b64decode(header_segment))
    except StrictJSONError as exc:
        raise invalid(f"token header: {exc}") from exc
    if not isinstance(header, dict):
        raise invalid("token header is not an object")
    alg = header.get("alg")
    if not isinstance(alg, str) or not alg or alg.lower() == "none":
        raise invalid("token alg is missing or none")
    carried = _KEY_CARRYING_HEADERS & header.keys()
    if carried:
        raise invalid(f"token header carries key material ({', '.join(sorted(carried))})")
    if "crit" in header:
        # No JWS extension is understood here, so every critical one is unknown.
        raise invalid("token header has crit extensions")
    if header.get("b64", True) is not True:
        raise invalid("unencoded payloads are refused")
    if "enc" in header:
        raise invalid("encrypted tokens (JWE) are not accepted")
    kid = header.get("kid")
    if kid is not None and (not isinstance(kid, str) or not 0 < len(kid) <= _MAX_KID_CHARS):
        raise invalid("token kid is not a short string")
    typ = header.get("typ")
    if typ is not None and (not isinstance(typ, str) or not typ):
        raise invalid("token typ is not a media type")
    return TokenHeader(alg=alg, kid=kid, typ=typ)


def parse_payload(payload: bytes) -> dict[str, Any]:
    """A claim set from its JSON bytes: an object, strictly parsed."""
    try:
        claims = loads(payload)
    except StrictJSONError as exc:
        raise invalid(f"token payload: {exc}") from exc
    if not isinstance(claims, dict):
        raise invalid("token payload is not an object")
    return claims


def unverified_claims(token: str, max_bytes: int) -> dict[str, Any]:
    """The payload read before verification, to pick the issuer whose keys to use.

    Handed to :func:`verify_signature` afterwards, so the payload is parsed once:
    the signature covers exactly these bytes.
    """
    payload = parse_payload(_b64decode(split_token(token, max_bytes)[1]))
    if not isinstance(payload.get("iss"), str):
        raise invalid("token has no iss")
    return payload


def check_token_type(header: TokenHeader, cfg: IssuerConfig) -> None:
    """Only the issuer's accepted ``typ`` values (``""``: no ``typ`` at all) pass."""
    typ = "" if header.typ is None else normalise_type(header.typ)
    if typ not in cfg.token_types:
        raise invalid("token typ is not accepted for this issuer")


class UnknownKey(Exception):
    """No key with this kid (or, without a kid, no key for this alg) is known."""


def select_key(
    header: TokenHeader, cfg: IssuerConfig, keys: KeySet, secret: VerificationKey | None
) -> VerificationKey:
    if header.alg not in cfg.algorithms:
        raise invalid(f"alg {header.alg} is not allowed for this issuer")
    check_token_type(header, cfg)
    if header.alg in HMAC_ALGORITHMS:
        # HMAC only ever uses the configured secret, never anything from the JWKS.
        if secret is None or header.alg not in secret.algorithms:
            raise invalid(f"alg {header.alg} has no configured secret")
        return secret
    if header.kid is not None:
        key = keys.by_kid.get(header.kid)
        if key is None:
            raise UnknownKey
    else:
        candidates = keys.candidates(header.alg)
        if not candidates:
            raise UnknownKey
        if len(candidates) > 1:
            raise invalid("token has no kid and several keys fit its alg")
        key = candidates[0]
    if header.alg not in key.algorithms:
        raise invalid(f"alg {header.alg} does not fit the key type of kid")
    return key


def verify_signature(
    token: str,
    header: TokenHeader,
    key: VerificationKey,
    cfg: IssuerConfig,
    now: float,
    claims: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Check the signature, then the strictly parsed claims; return the claim set.

    ``claims`` is what :func:`unverified_claims` read from this same token, if
    the caller has it already (it is the payload the signature covers).
    """
    try:
        payload = _JWS.decode_complete(token, key=key.key, algorithms=[header.alg])["payload"]
    except jwt.PyJWTError as exc:
        raise invalid(f"token rejected: {type(exc).__name__}") from exc
    if claims is None:
        claims = parse_payload(payload)
    check_claims(claims, cfg, now)
    return claims


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid(f"claim {name} is not a number")
    return float(value)


def check_claims(claims: Mapping[str, Any], cfg: IssuerConfig, now: float) -> None:
    """Claim checks that must hold on every request, cached verification or not."""
    if claims.get("iss") != cfg.issuer:
        raise invalid("iss does not match exactly")
    exp = _number(claims, "exp")
    if exp is None:
        raise invalid("token has no exp")
    if now > exp + cfg.clock_skew:
        raise AuthenticationError(Reason.EXPIRED_TOKEN, detail="token expired")
    nbf = _number(claims, "nbf")
    if nbf is not None and now + cfg.clock_skew < nbf:
        raise invalid("token not yet valid (nbf)")
    iat = _number(claims, "iat")
    if iat is not None and now + cfg.clock_skew < iat:
        raise invalid("token issued in the future (iat)")
    aud = claims.get("aud")
    auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if not any(a in cfg.audiences for a in auds if isinstance(a, str)):
        raise invalid("aud does not match")
    for name in cfg.required_claims:
        if claim_at(claims, name) in (None, "", [], {}):
            raise invalid(f"required claim {name} is missing")


def claim_at(claims: Mapping[str, Any], dotted: str) -> Any:
    """Value at a dotted path (``realm_access.roles``); an exact key wins over a path."""
    if dotted in claims:
        return claims[dotted]
    value: Any = claims
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def email_verified(value: Any) -> bool | None:
    """The issuer's ``email_verified``: a boolean, or the string some IdPs send; else None."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return None


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str) and v]
    return []


def identity_from_claims(
    claims: Mapping[str, Any], cfg: IssuerConfig, method: AuthMethod, token: str | None
) -> Identity:
    subject = claim_at(claims, cfg.claims.subject)
    if isinstance(subject, int) and not isinstance(subject, bool):
        subject = str(subject)
    if not isinstance(subject, str) or not subject:
        raise invalid(f"subject claim {cfg.claims.subject} is missing")
    email = claim_at(claims, cfg.claims.email)
    groups: set[str] = set()
    for path in cfg.claims.groups:
        groups.update(_strings(claim_at(claims, path)))
    scope = claims.get("scope", claims.get("scp"))
    scopes = scope.split() if isinstance(scope, str) else _strings(scope)
    exp = claims.get("exp")
    return Identity(
        subject=subject,
        issuer=cfg.issuer,
        method=method,
        email=email if isinstance(email, str) and email else None,
        email_verified=_issuers_word(claims.get("email_verified"), cfg),
        groups=frozenset(groups),
        scopes=frozenset(scopes),
        claims=MappingProxyType(dict(claims)),
        expires_at=float(exp) if isinstance(exp, int | float) else None,
        unknown_claims=overage_claims(claims, cfg.claims.groups),
        token=token,
    )


def _issuers_word(claim: Any, cfg: IssuerConfig) -> bool | None:
    """``email_verified`` as the claim says; an issuer configured not to send it is trusted."""
    verified = email_verified(claim)
    return True if verified is None and not cfg.email_verified_required else verified


def verify_token(
    token: str,
    cfg: IssuerConfig,
    keys: KeySet,
    secret: VerificationKey | None = None,
    *,
    max_bytes: int = 8192,
    now: float | None = None,
) -> dict[str, Any]:
    """Verify ``token`` completely against one issuer's keys (no I/O)."""
    header = parse_header(token, max_bytes)
    key = select_key(header, cfg, keys, secret)
    return verify_signature(token, header, key, cfg, time.time() if now is None else now)
