"""The ``identity:`` configuration section, validated in one pass.

Example::

    identity:
      max_token_bytes: 8KiB
      token_cache_size: 10000
      issuers:
        - issuer: https://login.example.com
          audiences: [gatehouse]
          algorithms: [RS256, ES256]      # default: asymmetric algorithms only
          clock_skew: 60s
          required_claims: [sub]
          claims: {subject: sub, email: email, groups: realm_access.roles}
          token_types: [JWT, at+jwt, untyped]   # accepted JOSE typ values
          email_verified_required: true   # false: trust this issuer's email without the claim
          hs256_secret_file: /run/secrets/hs  # enables HS* for this issuer only
          introspection:
            endpoint: https://login.example.com/introspect
            client_id: gatehouse
            client_secret: env:INTROSPECTION_SECRET
            cache_ttl: 60s
            negative_cache_ttl: 10s
            token_prefix: "ory_at_"
            max_requests_per_second: 50
            require_aud: true
            require_iss: true
          jwks_cache: {min_ttl: 1m, max_ttl: 24h, default_ttl: 10m, stale_max_age: 24h}
      api_keys: {file: keys.yaml, header: x-api-key, pepper_file: /run/secrets/pepper,
                 max_failures_per_minute: 10}
      mtls: {enabled: true}
      browser:
        issuer: https://login.example.com
        client_id: gatehouse
        client_secret: env:OIDC_CLIENT_SECRET
        cookie_keys_file: /run/secrets/cookie-keys
"""

from __future__ import annotations

import hashlib
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proxy.config.keyfiles import check_key_file, check_secret, check_trusted_file
from proxy.config.reader import Mapping, SecretRef, each_mapping
from proxy.outbound import url_problem
from proxy.policy.model import RateLimit

ASYMMETRIC_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
KNOWN_ALGORITHMS = ASYMMETRIC_ALGORITHMS + HMAC_ALGORITHMS
# RFC 7518 §3.2: an HMAC key at least as long as the hash output.
HMAC_MIN_SECRET_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
# JOSE typ values (normalised: lower case, no "application/"); "" is no typ at all.
UNTYPED = "untyped"
DEFAULT_TOKEN_TYPES = ("jwt", "at+jwt", "")
API_KEY_PREFIX = "gh_"
MIN_PEPPER_BYTES = 32


@dataclass(frozen=True, slots=True)
class ClaimMapping:
    """Dotted paths into the claim set (``realm_access.roles``)."""

    subject: str = "sub"
    email: str = "email"
    groups: tuple[str, ...] = ("groups",)


@dataclass(frozen=True, slots=True)
class IntrospectionConfig:
    endpoint: str
    client_id: str
    client_secret: SecretRef | None
    cache_ttl: float = 60.0
    # ``active: false`` answers are remembered this long (at most cache_ttl).
    negative_cache_ttl: float = 10.0
    # Only opaque tokens that start with this are sent to this issuer; None:
    # this issuer takes opaque tokens that no other issuer's prefix claims.
    token_prefix: str | None = None
    # Calls to the endpoint per second (per worker); over it: 503, nothing sent.
    max_requests_per_second: float = 50.0
    # An active answer must name the issuer (iss) and one of the audiences (aud).
    require_aud: bool = True
    require_iss: bool = True


@dataclass(frozen=True, slots=True)
class JwksCacheConfig:
    min_ttl: float = 60.0
    max_ttl: float = 86400.0
    default_ttl: float = 600.0
    # How long keys from the last good fetch stay usable while the IdP is down.
    stale_max_age: float = 86400.0
    # Unknown kids trigger at most one refetch per this interval (per issuer).
    refetch_interval: float = 10.0


@dataclass(frozen=True, slots=True)
class IssuerConfig:
    issuer: str
    audiences: tuple[str, ...]
    jwks_uri: str | None = None
    algorithms: tuple[str, ...] = ASYMMETRIC_ALGORITHMS
    clock_skew: float = 60.0
    required_claims: tuple[str, ...] = ()
    claims: ClaimMapping = ClaimMapping()
    token_types: tuple[str, ...] = DEFAULT_TOKEN_TYPES
    hs256_secret: SecretRef | None = None
    introspection: IntrospectionConfig | None = None
    jwks_cache: JwksCacheConfig = JwksCacheConfig()
    # Policy's email criteria trust an address only when the token says
    # email_verified: true. False is for issuers that never send the claim and
    # whose addresses their users cannot set (an explicit false still counts).
    email_verified_required: bool = True

    @property
    def cache_identity(self) -> str:
        """Everything that shapes a verification result, so caches never mix configs."""
        return hashlib.sha256(repr(self).encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class ApiKeysConfig:
    file: Path
    header: str = "x-api-key"
    # Key for the HMAC-SHA256 of each secret in the key file; None: no pepper.
    pepper: SecretRef | None = None
    # Wrong secrets per key id per minute before that id is refused unchecked.
    max_failures_per_minute: int = 10


@dataclass(frozen=True, slots=True)
class MtlsConfig:
    enabled: bool = False


DEFAULT_LOGIN_RATE_LIMIT = RateLimit(requests=60, per=60.0, burst=60)


@dataclass(frozen=True, slots=True)
class BrowserConfig:
    issuer: str
    client_id: str
    client_secret: SecretRef | None
    cookie_keys_file: Path
    redirect_path: str = "/.gatehouse/callback"
    scopes: tuple[str, ...] = ("openid", "email", "profile")
    allowed_redirect_hosts: tuple[str, ...] = ()
    session_lifetime: float = 8 * 3600.0
    # Refresh the upstream tokens when they expire within this margin.
    refresh_margin: float = 60.0
    cookie_name: str = "__Host-gatehouse"
    # A session not confirmed by the IdP (login or refresh) for this long is
    # refreshed, or without a refresh token ends (the next page view goes through
    # the IdP again); 0 = never.
    revalidate_interval: float = 3600.0
    # Login starts (redirects to the IdP) per client address.
    login_rate_limit: RateLimit = DEFAULT_LOGIN_RATE_LIMIT


@dataclass(frozen=True, slots=True)
class IdentityConfig:
    issuers: tuple[IssuerConfig, ...] = ()
    max_token_bytes: int = 8192
    token_cache_size: int = 10000
    api_keys: ApiKeysConfig | None = None
    mtls: MtlsConfig = MtlsConfig()
    browser: BrowserConfig | None = field(default=None)

    @property
    def enabled(self) -> bool:
        return bool(self.issuers or self.api_keys or self.mtls.enabled or self.browser)


def _str_list(m: Mapping, key: str, *, required: bool = False) -> list[str]:
    values: Any = m.str_list(key, required=required)
    return [str(v) for v in values]


def _url(m: Mapping, key: str, *, required: bool = False) -> str | None:
    value = m.text(key, required=required)
    if value is None:
        return None
    problem = url_problem(value)
    if problem:
        m.error(key, f"{m.where}.{key} {problem}")
        return None
    return value


def _claims(m: Mapping | None) -> ClaimMapping:
    if m is None:
        return ClaimMapping()
    subject = m.text("subject", "sub")
    email = m.text("email", "email")
    groups = tuple(_str_list(m, "groups")) or ("groups",)
    m.close()
    return ClaimMapping(subject=subject, email=email, groups=groups)


def _jwks_cache(m: Mapping | None) -> JwksCacheConfig:
    if m is None:
        return JwksCacheConfig()
    d = JwksCacheConfig()
    cfg = JwksCacheConfig(
        min_ttl=m.duration("min_ttl", d.min_ttl),
        max_ttl=m.duration("max_ttl", d.max_ttl),
        default_ttl=m.duration("default_ttl", d.default_ttl),
        stale_max_age=m.duration("stale_max_age", d.stale_max_age),
        refetch_interval=m.duration("refetch_interval", d.refetch_interval),
    )
    if cfg.min_ttl > cfg.max_ttl:
        m.error("min_ttl", f"{m.where}.min_ttl must not exceed max_ttl")
    m.close()
    return cfg


def _introspection(m: Mapping | None) -> IntrospectionConfig | None:
    if m is None:
        return None
    d = IntrospectionConfig("", "", None)
    endpoint = _url(m, "endpoint", required=True)
    client_id = m.text("client_id", required=True)
    secret = check_secret(m, "client_secret", m.secret("client_secret", required=True))
    ttl = m.duration("cache_ttl", d.cache_ttl)
    negative_ttl = m.duration("negative_cache_ttl", d.negative_cache_ttl)
    prefix = m.text("token_prefix")
    if prefix is not None and (not prefix or prefix.startswith(API_KEY_PREFIX)):
        m.error(
            "token_prefix",
            f"{m.where}.token_prefix must be non-empty and not start with the API key "
            f"prefix {API_KEY_PREFIX!r}",
        )
    rate = m.integer("max_requests_per_second", int(d.max_requests_per_second), minimum=1)
    require_aud = m.flag("require_aud", True)
    require_iss = m.flag("require_iss", True)
    m.close()
    if endpoint is None or client_id is None:
        return None
    return IntrospectionConfig(
        endpoint,
        client_id,
        secret,
        cache_ttl=ttl,
        negative_cache_ttl=min(negative_ttl, ttl),
        token_prefix=prefix,
        max_requests_per_second=float(rate),
        require_aud=require_aud,
        require_iss=require_iss,
    )


def _token_types(m: Mapping) -> tuple[str, ...]:
    if not m.has("token_types"):
        return DEFAULT_TOKEN_TYPES
    types: list[str] = []
    for value in _str_list(m, "token_types"):
        if value.lower() == UNTYPED:
            types.append("")
        elif re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.+/-]*", value):
            types.append(normalise_type(value))
        else:
            m.error("token_types", f"{m.where}.token_types: {value!r} is not a media type")
    if not types:
        m.error("token_types", f"{m.where}.token_types must name at least one type")
    return tuple(dict.fromkeys(types))


def normalise_type(value: str) -> str:
    """A JOSE ``typ`` as compared: case-insensitive, ``application/`` optional (RFC 7515)."""
    lowered = value.lower()
    return lowered.removeprefix("application/")


def _check_hmac_secret(m: Mapping, secret: SecretRef, algorithms: tuple[str, ...]) -> None:
    """Refuse a shared secret shorter than the strongest allowed HS* hash (never echoed)."""
    key = "hs256_secret_file" if m.has("hs256_secret_file") else "hs256_secret"
    hmac_algs = [a for a in algorithms if a in HMAC_MIN_SECRET_BYTES]
    if not hmac_algs or m.doc.offline:  # offline: the secret exists only where Gatehouse runs
        return
    strongest = max(hmac_algs, key=HMAC_MIN_SECRET_BYTES.__getitem__)
    needed = HMAC_MIN_SECRET_BYTES[strongest]
    try:
        length = len(secret.read().encode())
    except (OSError, KeyError, UnicodeDecodeError) as exc:
        m.error(key, f"{m.where}.{key}: the secret cannot be read ({type(exc).__name__})")
        return
    if length < needed:
        m.error(
            key,
            f"{m.where}.{key}: the secret has {length} bytes; {strongest} needs at least "
            f"{needed} (RFC 7518 §3.2)",
        )


def _issuer(m: Mapping, _index: int) -> IssuerConfig | None:
    issuer = _url(m, "issuer", required=True)
    audiences = tuple(_str_list(m, "audiences", required=True))
    if m.has("audiences") and not audiences:
        m.error("audiences", f"{m.where}.audiences must name at least one audience")
    jwks_uri = _url(m, "jwks_uri")
    hs_secret = check_secret(m, "hs256_secret", m.secret("hs256_secret"))
    algorithms = tuple(_str_list(m, "algorithms")) or ASYMMETRIC_ALGORITHMS
    for alg in algorithms:
        if alg not in KNOWN_ALGORITHMS:
            m.error("algorithms", f"{m.where}.algorithms: unsupported algorithm {alg!r}")
        elif alg in HMAC_ALGORITHMS and hs_secret is None:
            m.error(
                "algorithms",
                f"{m.where}.algorithms: {alg} needs 'hs256_secret_file' (HMAC keys never "
                "come from a JWKS)",
            )
    if hs_secret is not None and not any(a in HMAC_ALGORITHMS for a in algorithms):
        m.error("hs256_secret", f"{m.where}: a secret is configured but no HS* algorithm allowed")
    elif hs_secret is not None:
        _check_hmac_secret(m, hs_secret, algorithms)
    token_types = _token_types(m)
    clock_skew = m.duration("clock_skew", 60.0)
    if clock_skew > 600:
        m.error("clock_skew", f"{m.where}.clock_skew must be at most 10m")
    required_claims = tuple(_str_list(m, "required_claims"))
    claims = _claims(m.mapping("claims"))
    email_verified_required = m.flag("email_verified_required", True)
    introspection = _introspection(m.mapping("introspection"))
    jwks_cache = _jwks_cache(m.mapping("jwks_cache"))
    m.close()
    if issuer is None or not audiences:
        return None
    return IssuerConfig(
        issuer=issuer,
        audiences=audiences,
        jwks_uri=jwks_uri,
        algorithms=algorithms,
        clock_skew=clock_skew,
        required_claims=required_claims,
        claims=claims,
        token_types=token_types,
        hs256_secret=hs_secret,
        introspection=introspection,
        jwks_cache=jwks_cache,
        email_verified_required=email_verified_required,
    )


def _browser(m: Mapping | None) -> BrowserConfig | None:
    if m is None:
        return None
    d_scopes = ("openid", "email", "profile")
    issuer = _url(m, "issuer", required=True)
    client_id = m.text("client_id", required=True)
    secret = check_secret(m, "client_secret", m.secret("client_secret"))
    redirect_path = m.text("redirect_path", "/.gatehouse/callback")
    if not redirect_path.startswith("/.gatehouse/"):
        m.error("redirect_path", f"{m.where}.redirect_path must start with /.gatehouse/")
    scopes = tuple(_str_list(m, "scopes")) or d_scopes
    if "openid" not in scopes:
        m.error("scopes", f"{m.where}.scopes must include openid")
    keys_file = m.path("cookie_keys_file", required=True)
    check_key_file(m, "cookie_keys_file", keys_file)
    hosts = tuple(h.lower() for h in _str_list(m, "allowed_redirect_hosts"))
    for host in hosts:
        if not host or "/" in host or host.startswith("."):
            m.error(
                "allowed_redirect_hosts",
                f"{m.where}.allowed_redirect_hosts: {host!r} must be an exact host name",
            )
    lifetime = m.duration("session_lifetime", 8 * 3600.0)
    margin = m.duration("refresh_margin", 60.0)
    revalidate = m.duration("revalidate_interval", 3600.0)
    login_limit = _login_rate_limit(m.mapping("login_rate_limit"))
    m.close()
    if issuer is None or client_id is None or keys_file is None:
        return None
    return BrowserConfig(
        issuer=issuer,
        client_id=client_id,
        client_secret=secret,
        cookie_keys_file=keys_file,
        redirect_path=redirect_path,
        scopes=scopes,
        allowed_redirect_hosts=hosts,
        session_lifetime=lifetime,
        refresh_margin=margin,
        revalidate_interval=revalidate,
        login_rate_limit=login_limit,
    )


def _login_rate_limit(m: Mapping | None) -> RateLimit:
    default = DEFAULT_LOGIN_RATE_LIMIT
    if m is None:
        return default
    requests = m.integer("requests", default.requests, minimum=1)
    per = m.duration("per", default.per)
    if per <= 0:
        m.error("per", f"{m.where}.per must be more than zero")
    burst = m.integer("burst", requests, minimum=1)
    m.close()
    return RateLimit(requests=requests, per=max(per, 0.001), burst=burst)


def _check_introspection_routing(m: Mapping, issuers: tuple[IssuerConfig, ...]) -> None:
    """Every opaque token must have at most one issuer to be sent to.

    An issuer with ``introspection.token_prefix`` takes the tokens that start
    with it; one issuer without a prefix may take the rest. Two issuers without
    a prefix, or prefixes where one begins the other, leave the choice open.
    """
    routed = [c.introspection for c in issuers if c.introspection is not None]
    catch_all = [i for i in routed if i.token_prefix is None]
    if len(catch_all) > 1:
        m.error(
            "issuers",
            f"{m.where}.issuers: {len(catch_all)} issuers introspect opaque tokens without "
            "introspection.token_prefix, so a token's issuer cannot be chosen: give every "
            "introspecting issuer but one a token_prefix",
        )
    prefixes = sorted(i.token_prefix for i in routed if i.token_prefix is not None)
    for shorter, longer in itertools.pairwise(prefixes):
        if longer.startswith(shorter):
            m.error(
                "issuers",
                f"{m.where}.issuers: introspection.token_prefix {shorter!r} also begins "
                f"{longer!r}: prefixes must not overlap",
            )


def _api_keys(m: Mapping | None) -> ApiKeysConfig | None:
    if m is None:
        return None
    path = m.path("file", required=True, must_exist=False)
    # It holds no secret (HMACs of 256-bit random ones), but it says who each key is.
    check_trusted_file(m, "file", path)
    header = m.text("header", "x-api-key").lower()
    if header in ("authorization", "cookie", "host"):
        m.error("header", f"{m.where}.header must not be {header!r}")
    pepper = check_secret(m, "pepper", m.secret("pepper"))
    if pepper is not None and not m.doc.offline:  # offline: read only where Gatehouse runs
        key = "pepper_file" if m.has("pepper_file") else "pepper"
        try:
            length = len(pepper.read().encode())
        except (OSError, KeyError, UnicodeDecodeError) as exc:
            m.error(key, f"{m.where}.{key}: the pepper cannot be read ({type(exc).__name__})")
        else:
            if length < MIN_PEPPER_BYTES:
                m.error(
                    key,
                    f"{m.where}.{key}: the pepper has {length} bytes; at least "
                    f"{MIN_PEPPER_BYTES} are needed",
                )
    failures = m.integer("max_failures_per_minute", 10, minimum=1)
    m.close()
    if path is None:
        return None
    return ApiKeysConfig(file=path, header=header, pepper=pepper, max_failures_per_minute=failures)


def parse_identity(m: Mapping | None) -> IdentityConfig:
    """Build the identity configuration, recording every problem on ``m``'s document."""
    if m is None:
        return IdentityConfig()
    issuers = tuple(each_mapping(m.doc, m.nodes("issuers"), f"{m.where}.issuers", _issuer))
    seen: set[str] = set()
    for cfg in issuers:
        if cfg.issuer in seen:
            m.error("issuers", f"{m.where}.issuers: issuer {cfg.issuer!r} is listed twice")
        seen.add(cfg.issuer)
    _check_introspection_routing(m, issuers)
    max_token_bytes = m.size("max_token_bytes", 8192)
    if not 512 <= max_token_bytes <= 1 << 20:
        m.error("max_token_bytes", f"{m.where}.max_token_bytes must be between 512B and 1MiB")
    token_cache_size = m.integer("token_cache_size", 10000, minimum=0)

    api_keys = _api_keys(m.mapping("api_keys"))

    mtls = MtlsConfig()
    mm = m.mapping("mtls")
    if mm is not None:
        mtls = MtlsConfig(enabled=mm.flag("enabled", False))
        mm.close()

    browser = _browser(m.mapping("browser"))
    m.close()
    return IdentityConfig(
        issuers=issuers,
        max_token_bytes=max_token_bytes,
        token_cache_size=token_cache_size,
        api_keys=api_keys,
        mtls=mtls,
        browser=browser,
    )
