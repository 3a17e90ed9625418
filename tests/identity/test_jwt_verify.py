"""Pure JWT verification: every hostile token from REFERENCE.md's JWT section."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from proxy.errors import AuthenticationError
from proxy.identity.config import ClaimMapping, IssuerConfig
from proxy.identity.jwt_verify import (
    KeySet,
    UnknownKey,
    hmac_key,
    identity_from_claims,
    keys_from_jwks,
    parse_header,
    select_key,
    verify_token,
)

ISS = "https://idp.example.test"
AUD = "gatehouse"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
NOW = 1_800_000_000.0


def public_jwk(key: Any, kid: str, **extra: Any) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPrivateKey):
        doc = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    else:
        doc = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    return {**doc, "kid": kid, **extra}


KEYS = keys_from_jwks({"keys": [public_jwk(RSA_KEY, "rsa-1"), public_jwk(EC_KEY, "ec-1")]})
CFG = IssuerConfig(issuer=ISS, audiences=(AUD,))


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISS,
        "aud": AUD,
        "sub": "alice",
        "iat": int(NOW),
        "exp": int(NOW) + 300,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def mint(payload: dict[str, Any], *, key: Any = RSA_KEY, alg: str = "RS256", **headers: Any) -> str:
    headers.setdefault("kid", "rsa-1" if alg.startswith(("RS", "PS")) else "ec-1")
    return jwt.encode(payload, key, algorithm=alg, headers=headers)


def raw_token(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    def seg(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    return ".".join(
        [seg(json.dumps(header).encode()), seg(json.dumps(payload).encode()), seg(signature)]
    )


def rejected(token: str, cfg: IssuerConfig = CFG, keys: KeySet = KEYS, **kw: Any) -> str:
    with pytest.raises(AuthenticationError) as info:
        verify_token(token, cfg, keys, now=NOW, **kw)
    return info.value.reason


def test_valid_rs256_and_es256_tokens_verify() -> None:
    assert verify_token(mint(claims()), CFG, KEYS, now=NOW)["sub"] == "alice"
    es = mint(claims(), key=EC_KEY, alg="ES256")
    assert verify_token(es, CFG, KEYS, now=NOW)["sub"] == "alice"


def test_alg_none_is_rejected_in_any_spelling() -> None:
    for alg in ("none", "None", "NONE"):
        for signature in (b"", b"anything"):
            token = raw_token({"alg": alg, "kid": "rsa-1"}, claims(), signature)
            assert rejected(token) == "invalid_token"
        with pytest.raises(AuthenticationError) as info:
            parse_header(raw_token({"alg": alg}, claims(), b"x"), 8192)
        assert "none" in info.value.detail


def test_rsa_public_key_used_as_hs256_secret_is_rejected() -> None:
    pem = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    payload = claims()
    forged = raw_token({"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}, payload)
    signing_input = forged.rsplit(".", 1)[0].encode()
    sig = hmac.new(pem, signing_input, hashlib.sha256).digest()
    forged = signing_input.decode() + "." + base64.urlsafe_b64encode(sig).rstrip(b"=").decode()
    # Default issuer: HS* is not even in the allow-list.
    assert rejected(forged) == "invalid_token"
    # An issuer that does allow HS256 uses only its own secret, never the JWKS key.
    hs_cfg = IssuerConfig(issuer=ISS, audiences=(AUD,), algorithms=("RS256", "HS256"))
    secret = hmac_key(b"the-configured-secret-of-this-issuer", hs_cfg.algorithms)
    assert rejected(forged, hs_cfg, secret=secret) == "invalid_token"
    good = jwt.encode(payload, b"the-configured-secret-of-this-issuer", algorithm="HS256")
    assert verify_token(good, hs_cfg, KEYS, secret, now=NOW)["sub"] == "alice"


def test_hs256_without_configured_secret_is_rejected_even_if_allowed() -> None:
    hs_cfg = IssuerConfig(issuer=ISS, audiences=(AUD,), algorithms=("HS256",))
    token = jwt.encode(claims(), b"x" * 32, algorithm="HS256")
    assert rejected(token, hs_cfg) == "invalid_token"


def test_oct_keys_in_a_jwks_are_never_usable() -> None:
    secret = base64.urlsafe_b64encode(b"k" * 32).rstrip(b"=").decode()
    keys = keys_from_jwks({"keys": [{"kty": "oct", "k": secret, "kid": "hmac"}]})
    assert len(keys) == 0


def test_kid_is_only_a_dictionary_key() -> None:
    header = parse_header(mint(claims(), kid="../../../../etc/passwd"), 8192)
    with pytest.raises(UnknownKey):
        select_key(header, CFG, KEYS, None)
    header = parse_header(mint(claims(), kid="rsa-1' OR '1'='1"), 8192)
    with pytest.raises(UnknownKey):
        select_key(header, CFG, KEYS, None)


def test_non_string_or_huge_kid_is_rejected() -> None:
    assert rejected(raw_token({"alg": "RS256", "kid": {"$ne": 1}}, claims(), b"x")) == (
        "invalid_token"
    )
    assert rejected(mint(claims(), kid="k" * 300)) == "invalid_token"


@pytest.mark.parametrize(
    "header",
    [
        {"jku": "https://evil.test/jwks.json"},
        {"x5u": "https://evil.test/cert.pem"},
        {"jwk": {"kty": "RSA", "n": "AQAB", "e": "AQAB"}},
        {"x5c": ["MIIB"]},
    ],
)
def test_key_carrying_headers_are_rejected_even_with_a_valid_signature(
    header: dict[str, Any],
) -> None:
    assert rejected(mint(claims(), **header)) == "invalid_token"


def test_embedded_jwk_with_attacker_key_is_not_used() -> None:
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = mint(claims(), key=attacker, jwk=public_jwk(attacker, "rsa-1"))
    assert rejected(token) == "invalid_token"


def test_missing_exp_is_rejected() -> None:
    assert rejected(mint(claims(exp=None))) == "invalid_token"


def test_unknown_crit_header_is_rejected() -> None:
    assert rejected(mint(claims(), crit=["urn:example:unknown"])) == "invalid_token"
    assert rejected(mint(claims(), crit=["exp"])) == "invalid_token"


def test_oversize_token_is_rejected_before_any_decoding() -> None:
    # Not even base64: decoding would fail differently, so the reason proves the order.
    token = "!" * 9000
    with pytest.raises(AuthenticationError) as info:
        verify_token(token, CFG, KEYS, now=NOW, max_bytes=8192)
    assert info.value.detail == "token exceeds max_token_bytes"
    big = mint(claims(padding="p" * 9000))
    with pytest.raises(AuthenticationError) as info:
        verify_token(big, CFG, KEYS, now=NOW, max_bytes=8192)
    assert info.value.detail == "token exceeds max_token_bytes"


@pytest.mark.parametrize(
    "iss", [ISS + "/", ISS.upper(), "https://idp.example.test.evil", "idp.example.test", ""]
)
def test_issuer_must_match_exactly(iss: str) -> None:
    assert rejected(mint(claims(iss=iss))) == "invalid_token"


def test_issuer_configured_with_trailing_slash_rejects_the_bare_form() -> None:
    cfg = IssuerConfig(issuer=ISS + "/", audiences=(AUD,))
    assert rejected(mint(claims()), cfg) == "invalid_token"
    assert verify_token(mint(claims(iss=ISS + "/")), cfg, KEYS, now=NOW)["sub"] == "alice"


@pytest.mark.parametrize("aud", ["other", ["other", "more"], "", "gatehouse-evil", None])
def test_audience_must_match(aud: Any) -> None:
    assert rejected(mint(claims(aud=aud))) == "invalid_token"


def test_audience_list_containing_ours_is_accepted() -> None:
    assert verify_token(mint(claims(aud=["x", AUD])), CFG, KEYS, now=NOW)["sub"] == "alice"


def test_expiry_allows_clock_skew_then_rejects() -> None:
    within = mint(claims(exp=int(NOW) - 30))
    assert verify_token(within, CFG, KEYS, now=NOW)["sub"] == "alice"
    beyond = mint(claims(exp=int(NOW) - 61))
    assert rejected(beyond) == "expired_token"


def test_nbf_and_iat_in_the_future_are_rejected_beyond_skew() -> None:
    assert verify_token(mint(claims(nbf=int(NOW) + 30)), CFG, KEYS, now=NOW)
    assert rejected(mint(claims(nbf=int(NOW) + 120))) == "invalid_token"
    assert rejected(mint(claims(iat=int(NOW) + 120))) == "invalid_token"


def test_required_claims_must_be_present() -> None:
    cfg = IssuerConfig(issuer=ISS, audiences=(AUD,), required_claims=("email", "tenant.id"))
    assert rejected(mint(claims(email="a@x.test")), cfg) == "invalid_token"
    ok = mint(claims(email="a@x.test", tenant={"id": "t1"}))
    assert verify_token(ok, cfg, KEYS, now=NOW)["sub"] == "alice"


def test_algorithm_must_fit_the_key_type() -> None:
    # An ES256 token naming an RSA kid: the RSA key never verifies EC algorithms.
    assert rejected(mint(claims(), key=EC_KEY, alg="ES256", kid="rsa-1")) == "invalid_token"


def test_jwk_declared_alg_restricts_the_key() -> None:
    keys = keys_from_jwks({"keys": [public_jwk(RSA_KEY, "rsa-1", alg="RS256")]})
    assert verify_token(mint(claims()), CFG, keys, now=NOW)
    assert rejected(mint(claims(), alg="PS256"), keys=keys) == "invalid_token"


def test_algorithm_outside_the_issuer_allow_list_is_rejected() -> None:
    cfg = IssuerConfig(issuer=ISS, audiences=(AUD,), algorithms=("ES256",))
    assert rejected(mint(claims()), cfg) == "invalid_token"


def test_tampered_payload_fails_the_signature() -> None:
    head, _, sig = mint(claims()).split(".")
    body = base64.urlsafe_b64encode(json.dumps(claims(sub="root")).encode()).rstrip(b"=")
    assert rejected(f"{head}.{body.decode()}.{sig}") == "invalid_token"


def test_garbage_and_wrong_shapes_are_invalid() -> None:
    for token in ("a.b", "a.b.c.d", "..", "a..c", "é.é.é", "e30.e30.", "W10.e30.e30"):
        assert rejected(token) == "invalid_token"


def test_claim_mapping_follows_dotted_paths_and_unions_groups() -> None:
    cfg = IssuerConfig(
        issuer=ISS,
        audiences=(AUD,),
        claims=ClaimMapping(
            subject="oid", email="upn", groups=("groups", "roles", "realm_access.roles")
        ),
    )
    payload = claims(
        oid="0000-1111",
        upn="alice@corp.test",
        groups=["g1"],
        roles="admin",
        realm_access={"roles": ["r1", 7]},
        scope="read write",
    )
    identity = identity_from_claims(payload, cfg, "jwt", None)
    assert identity.subject == "0000-1111"
    assert identity.email == "alice@corp.test"
    assert identity.groups == frozenset({"g1", "admin", "r1"})
    assert identity.scopes == frozenset({"read", "write"})


def test_missing_subject_is_rejected() -> None:
    with pytest.raises(AuthenticationError):
        identity_from_claims(claims(sub=None), CFG, "jwt", None)


def test_current_time_is_used_when_no_clock_given() -> None:
    live = mint(claims(iat=int(time.time()), exp=int(time.time()) + 60))
    assert verify_token(live, CFG, KEYS)["sub"] == "alice"


# -- explicit typing (RFC 8725 §3.11, RFC 9068) -------------------------------------
ACCEPTED_TYPES = [None, "JWT", "jwt", "at+jwt", "AT+JWT", "application/at+jwt", "Application/JWT"]
REFUSED_TYPES = [
    "logout+jwt",
    "secevent+jwt",
    "dpop+jwt",
    "JWE",
    "application/logout+jwt",
    "id_token+jwt",
    "at+jwt; charset=x",
    "",
    7,
]


def typed(typ: object) -> str:
    header: dict[str, Any] = {"alg": "RS256", "kid": "rsa-1", "typ": typ}  # None: no typ
    return jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers=header, sort_headers=False)


@pytest.mark.parametrize("typ", ACCEPTED_TYPES)
def test_access_token_types_are_accepted_by_default(typ: str | None) -> None:
    token = typed(typ)
    assert parse_header(token, 8192).typ == typ
    assert verify_token(token, CFG, KEYS, now=NOW)["sub"] == "alice"


@pytest.mark.parametrize("typ", REFUSED_TYPES)
def test_other_token_types_are_refused_before_any_key_is_chosen(typ: object) -> None:
    header: dict[str, Any] = {"alg": "RS256", "kid": "no-such-kid", "typ": typ}
    token = raw_token(header, claims(), b"s")
    with pytest.raises(AuthenticationError, match="typ") as info:
        verify_token(token, CFG, KEYS, now=NOW)  # an unknown kid would raise UnknownKey
    assert info.value.reason == "invalid_token"


def test_an_issuer_can_require_rfc9068_typed_access_tokens() -> None:
    strict = IssuerConfig(issuer=ISS, audiences=(AUD,), token_types=("at+jwt",))
    assert verify_token(typed("application/at+jwt"), strict, KEYS, now=NOW)
    for typ in (None, "JWT"):
        with pytest.raises(AuthenticationError):
            verify_token(typed(typ), strict, KEYS, now=NOW)


def test_encrypted_tokens_are_refused_clearly() -> None:
    five_parts = "eyJhbGciOiJSU0EtT0FFUCIsImVuYyI6IkEyNTZHQ00ifQ.a.b.c.d"
    with pytest.raises(AuthenticationError, match="JWE"):
        verify_token(five_parts, CFG, KEYS, now=NOW)
    enc_header = raw_token({"alg": "RS256", "kid": "rsa-1", "enc": "A256GCM"}, claims(), b"s")
    with pytest.raises(AuthenticationError, match="JWE"):
        verify_token(enc_header, CFG, KEYS, now=NOW)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        (False, False),
        ("true", True),
        ("false", False),
        ("TRUE", True),
        ("False", False),
        ("yes", None),
        (1, None),
        (None, None),
    ],
)
def test_email_verified_comes_from_the_issuers_claim(value: object, expected: bool | None) -> None:
    extra = {} if value is None else {"email_verified": value}
    identity = identity_from_claims(claims(email="a@example.test", **extra), CFG, "jwt", None)
    assert identity.email_verified is expected
