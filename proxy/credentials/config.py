"""The ``credentials`` of a backend and the top-level ``assertions`` section, as plain data.

Secrets are held by reference (:class:`SecretRef`) only; providers read them
when they fetch, so rotated secret files are picked up without a reload.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping as EnvMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import yaml

from proxy.config.keyfiles import check_key_file, check_secret
from proxy.config.reader import Mapping, SecretRef, node_kind
from proxy.outbound import is_loopback_host, url_problem

PROVIDER_TYPES = ("static", "client_credentials", "azure", "gcp", "assertion", "token_exchange")
CLIENT_AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt")
AZURE_MODES = ("managed_identity", "client_secret", "certificate", "workload_identity")
GCP_MODES = ("metadata", "service_account_key")
GCP_SEND_AS = ("auto", "authorization", "serverless")
MAX_ASSERTION_LIFETIME = 300.0
METADATA_HOSTNAMES = ("metadata.google.internal",)
# Where azure-identity finds a managed-identity endpoint (App Service, Arc, Cloud
# Shell, Azure ML, pod identity): each must pass platform_url_problem.
AZURE_MANAGED_IDENTITY_ENV = (
    "IDENTITY_ENDPOINT",
    "IMDS_ENDPOINT",
    "MSI_ENDPOINT",
    "AZURE_POD_IDENTITY_AUTHORITY_HOST",
)

# RFC 8693 token type identifiers (names, not secrets).
TOKEN_TYPE_ACCESS = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105
TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"  # noqa: S105
TOKEN_TYPE_ID = "urn:ietf:params:oauth:token-type:id_token"  # noqa: S105
_TOKEN_TYPES = {
    "access_token": TOKEN_TYPE_ACCESS,
    "jwt": TOKEN_TYPE_JWT,
    "id_token": TOKEN_TYPE_ID,
}


@dataclass(frozen=True, slots=True)
class StaticSpec:
    """A fixed header value from a file (re-read when it changes) or an env var."""

    backend: str
    source: str
    value: SecretRef
    header: str = "Authorization"
    prefix: str = ""
    type: Literal["static"] = "static"


@dataclass(frozen=True, slots=True)
class ClientCredentialsSpec:
    """OAuth 2.0 client credentials grant (RFC 6749 section 4.4)."""

    backend: str
    source: str
    token_url: str
    client_id: str
    auth_method: str
    client_secret: SecretRef | None = None
    private_key: SecretRef | None = None
    key_id: str | None = None
    scope: tuple[str, ...] = ()
    audience: str | None = None
    resource: str | None = None
    ca_bundle: Path | None = None
    header: str = "Authorization"
    type: Literal["client_credentials"] = "client_credentials"


@dataclass(frozen=True, slots=True)
class AzureSpec:
    """An Entra ID access token, e.g. for App Service Easy Auth (``api://<app-id>/.default``)."""

    backend: str
    source: str
    mode: str
    scope: str
    client_id: str | None = None
    tenant_id: str | None = None
    client_secret: SecretRef | None = None
    certificate: Path | None = None
    token_file: Path | None = None
    authority: str | None = None
    ca_bundle: Path | None = None
    header: str = "Authorization"
    type: Literal["azure"] = "azure"


@dataclass(frozen=True, slots=True)
class GcpSpec:
    """A Google-signed ID token for a Cloud Function / Cloud Run ``audience``."""

    backend: str
    source: str
    mode: str
    audience: str
    key_file: Path | None = None
    metadata_host: str | None = None
    send_as: str = "auto"
    # Impersonation: the key file's / metadata identity mints an ID token for this
    # service account through the IAM Credentials API.
    impersonate: str | None = None
    iam_endpoint: str = "https://iamcredentials.googleapis.com"
    type: Literal["gcp"] = "gcp"


@dataclass(frozen=True, slots=True)
class AssertionSpec:
    """A Gatehouse-signed JWT naming the caller, for backends that verify it with our JWKS."""

    backend: str
    source: str
    audience: str
    header: str = "X-Gatehouse-Assertion"
    type: Literal["assertion"] = "assertion"


@dataclass(frozen=True, slots=True)
class TokenExchangeSpec:
    """RFC 8693: the caller's own token exchanged for one scoped to this backend."""

    backend: str
    source: str
    token_url: str
    client_id: str
    auth_method: str
    client_secret: SecretRef | None = None
    audience: str | None = None
    resource: str | None = None
    scope: tuple[str, ...] = ()
    subject_token_type: str = TOKEN_TYPE_ACCESS
    requested_token_type: str | None = None
    ca_bundle: Path | None = None
    header: str = "Authorization"
    type: Literal["token_exchange"] = "token_exchange"


CredentialSpec = (
    StaticSpec | ClientCredentialsSpec | AzureSpec | GcpSpec | AssertionSpec | TokenExchangeSpec
)


@dataclass(frozen=True, slots=True)
class AssertionSigningConfig:
    """Where the assertion signing keys live; the first key signs, the rest are published."""

    source: str
    signing_keys_file: Path
    lifetime: float = MAX_ASSERTION_LIFETIME
    # A key added by rotation is published this long before it signs, so backends
    # whose JWKS cache predates it never meet an unknown kid. Matches the JWKS
    # endpoint's Cache-Control max-age (300 s) and the samples' cache lifespan.
    publish_before_use: float = 300.0


def _where(m: Mapping) -> str:
    return f"{m.doc.path}:{m.line}"


def _header_name(m: Mapping, key: str, default: str) -> str:
    value = m.text(key, default)
    if not value or any(c in value for c in " :\r\n\t") or not value.isascii():
        m.error(key, f"{m.where}.{key}: not a valid header name: {value!r}")
        return default
    return value


def _url(m: Mapping, key: str, *, required: bool) -> str | None:
    """An endpoint that receives client secrets or returns tokens: HTTPS (HTTP on loopback)."""
    value = m.text(key, None, required=required)
    if value is None:
        return None
    problem = url_problem(value)
    if problem:
        m.error(key, f"{m.where}.{key} {problem}")
        return None
    return value


def _is_metadata_address(host: str) -> bool:
    """Where instance metadata services listen: loopback or link-local (169.254.169.254)."""
    if is_loopback_host(host) or host.lower().rstrip(".") in METADATA_HOSTNAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_link_local
    except ValueError:
        return False


def platform_url_problem(url: str) -> str | None:
    """Why ``url`` is not acceptable for a platform's managed-identity endpoint.

    Those endpoints (GCE metadata, Azure IMDS and App Service) speak plain HTTP
    by design and are reachable only from the instance, on a link-local or
    loopback address: plain HTTP is accepted there, and elsewhere only HTTPS.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        return "is not a valid URL"
    if parts.scheme != "http":
        return url_problem(url)
    if not parts.hostname or not _is_metadata_address(parts.hostname):
        return (
            "must use https:// (plain http only to the metadata server: "
            "a link-local or loopback address, or metadata.google.internal)"
        )
    if parts.fragment or parts.username or parts.password:
        return "must not carry credentials or a fragment"
    return None


def _platform_env(m: Mapping, names: tuple[str, ...], *, host_only: bool = False) -> None:
    """Report platform endpoint variables (read by us or the cloud SDK) that break the rule."""
    for name in names:
        value = os.environ.get(name)
        if not value:
            continue
        url = f"http://{value}" if host_only or "://" not in value else value
        problem = platform_url_problem(url)
        if problem:
            m.error(None, f"{m.where}: environment {name}={value!r} {problem}")


def _scopes(m: Mapping) -> tuple[str, ...]:
    """``scope`` as a list or a space-separated string (the wire form)."""
    out: list[str] = []
    for item in m.str_list("scope"):
        out.extend(item.split())
    return tuple(out)


def _client_auth(m: Mapping, *, allow_jwt: bool) -> tuple[str, SecretRef | None, SecretRef | None]:
    methods = CLIENT_AUTH_METHODS if allow_jwt else CLIENT_AUTH_METHODS[:2]
    method = m.choice("auth_method", methods, "client_secret_basic")
    secret = check_secret(m, "client_secret", m.secret("client_secret"))
    key = check_secret(m, "private_key", m.secret("private_key")) if allow_jwt else None
    if method == "private_key_jwt":
        if key is None:
            m.error(None, f"{m.where}: private_key_jwt needs 'private_key_file: PATH' (PEM)")
        if secret is not None:
            m.error("client_secret", f"{m.where}: private_key_jwt does not use a client secret")
    elif secret is None:
        m.error(
            None,
            f"{m.where}: {method} needs 'client_secret_file: PATH' or 'client_secret: env:NAME'",
        )
    return method, secret, key


def _static(m: Mapping, backend: str) -> StaticSpec | None:
    value = check_secret(m, "value", m.secret("value", required=True))
    header = _header_name(m, "header", "Authorization")
    prefix = m.text("prefix", "")
    if value is None:
        return None
    return StaticSpec(backend, _where(m), value, header, prefix)


def _client_credentials(m: Mapping, backend: str) -> ClientCredentialsSpec | None:
    token_url = _url(m, "token_url", required=True)
    client_id = m.text("client_id", None, required=True)
    method, secret, key = _client_auth(m, allow_jwt=True)
    spec_key_id = m.text("key_id", None)
    scope = _scopes(m)
    audience = m.text("audience", None)
    resource = m.text("resource", None)
    ca = m.path("ca_bundle")
    header = _header_name(m, "header", "Authorization")
    if token_url is None or client_id is None:
        return None
    return ClientCredentialsSpec(
        backend, _where(m), token_url, client_id, method, secret, key, spec_key_id,
        scope, audience, resource, ca, header,
    )  # fmt: skip


# What AKS workload identity injects into a pod (with AZURE_AUTHORITY_HOST, which
# the SDK reads itself): the azure provider takes them as its defaults.
WORKLOAD_IDENTITY_ENV = {
    "client_id": "AZURE_CLIENT_ID",
    "tenant_id": "AZURE_TENANT_ID",
    "token_file": "AZURE_FEDERATED_TOKEN_FILE",
}


def _azure(m: Mapping, backend: str) -> AzureSpec | None:
    env = m.doc.environ or {}
    # In a pod with workload identity, that is the default mode.
    injected = all(env.get(var) for var in WORKLOAD_IDENTITY_ENV.values())
    mode = m.choice("mode", AZURE_MODES, "workload_identity" if injected else "managed_identity")
    workload = mode == "workload_identity"
    scope = m.text("scope", None)
    resource = m.text("resource", None)
    app_id = m.text("app_id", None)
    given = [k for k, v in (("scope", scope), ("resource", resource), ("app_id", app_id)) if v]
    if len(given) != 1:
        m.error(None, f"{m.where}: give exactly one of 'scope', 'resource' or 'app_id'")
    if app_id:
        # App Service Easy Auth registers the app's identifier URI as api://<app-id>.
        scope = f"api://{app_id}/.default"
    elif resource:
        scope = resource.rstrip("/") + "/.default"
    needs_app = mode in ("client_secret", "certificate")
    client_id = m.text("client_id", _injected(env, "client_id", workload), required=needs_app)
    tenant_id = m.text("tenant_id", _injected(env, "tenant_id", workload), required=needs_app)
    secret = m.secret("client_secret", required=mode == "client_secret")
    check_secret(m, "client_secret", secret)
    cert = m.path("certificate_file", required=mode == "certificate")
    check_key_file(m, "certificate_file", cert)  # PEM with the private key
    token_file = m.path("token_file", must_exist=False)
    if token_file is None and _injected(env, "token_file", workload):
        token_file = Path(env[WORKLOAD_IDENTITY_ENV["token_file"]])
    if workload and not m.doc.offline:
        for key, value in (
            ("client_id", client_id),
            ("tenant_id", tenant_id),
            ("token_file", token_file),
        ):
            if value is None:
                m.error(
                    None,
                    f"{m.where}: workload_identity needs '{key}', or "
                    f"{WORKLOAD_IDENTITY_ENV[key]} in the environment (AKS sets it)",
                )
    authority = _url(m, "authority", required=False)
    ca = m.path("ca_bundle")
    header = _header_name(m, "header", "Authorization")
    if mode == "managed_identity" and authority is not None:
        m.error("authority", f"{m.where}.authority: managed identity takes no authority")
    if mode == "managed_identity":
        _platform_env(m, AZURE_MANAGED_IDENTITY_ENV)
    if scope is None:
        return None
    return AzureSpec(
        backend, _where(m), mode, scope, client_id, tenant_id, secret, cert, token_file,
        authority, ca, header,
    )  # fmt: skip


def _injected(env: EnvMapping[str, str], key: str, workload: bool) -> str | None:
    """The workload-identity variable behind ``key``, when that mode is in use."""
    return (env.get(WORKLOAD_IDENTITY_ENV[key]) or None) if workload else None


def _gcp(m: Mapping, backend: str) -> GcpSpec | None:
    audience = m.text("audience", None, required=True)
    key_file = m.path("service_account_key_file")
    check_key_file(m, "service_account_key_file", key_file)
    mode = "service_account_key" if key_file is not None else "metadata"
    metadata_host = m.text("metadata_host", None)
    if key_file is not None and metadata_host is not None:
        m.error("metadata_host", f"{m.where}: a key file and a metadata host exclude each other")
    elif metadata_host is not None:
        problem = platform_url_problem(f"http://{metadata_host}")
        if problem:
            m.error("metadata_host", f"{m.where}.metadata_host {problem}")
    elif key_file is None:
        _platform_env(m, ("GCE_METADATA_HOST",), host_only=True)
    send_as = m.choice("send_as", GCP_SEND_AS, "auto")
    impersonate = m.text("impersonate_service_account", None)
    if impersonate is not None and "@" not in impersonate:
        m.error(
            "impersonate_service_account",
            f"{m.where}.impersonate_service_account: expected a service account email",
        )
    iam_endpoint = _url(m, "iam_endpoint", required=False)
    if iam_endpoint is not None and impersonate is None:
        m.error(
            "iam_endpoint", f"{m.where}.iam_endpoint: only used with impersonate_service_account"
        )
    if audience is None:
        return None
    return GcpSpec(
        backend, _where(m), mode, audience, key_file, metadata_host, send_as, impersonate,
        (iam_endpoint or "https://iamcredentials.googleapis.com").rstrip("/"),
    )  # fmt: skip


def _assertion(m: Mapping, backend: str) -> AssertionSpec:
    audience = m.text("audience", backend)
    header = _header_name(m, "header", "X-Gatehouse-Assertion")
    return AssertionSpec(backend, _where(m), audience, header)


def _token_type(m: Mapping, key: str, default: str | None) -> str | None:
    value = m.text(key, None)
    if value is None:
        return default
    if value in _TOKEN_TYPES:
        return _TOKEN_TYPES[value]
    if value.startswith("urn:"):
        return value
    m.error(key, f"{m.where}.{key}: expected access_token, jwt, id_token or a urn, got {value!r}")
    return default


def _token_exchange(m: Mapping, backend: str) -> TokenExchangeSpec | None:
    token_url = _url(m, "token_url", required=True)
    client_id = m.text("client_id", None, required=True)
    method, secret, _ = _client_auth(m, allow_jwt=False)
    audience = m.text("audience", None)
    resource = m.text("resource", None)
    scope = _scopes(m)
    subject_type = _token_type(m, "subject_token_type", TOKEN_TYPE_ACCESS) or TOKEN_TYPE_ACCESS
    requested = _token_type(m, "requested_token_type", None)
    ca = m.path("ca_bundle")
    header = _header_name(m, "header", "Authorization")
    if token_url is None or client_id is None:
        return None
    return TokenExchangeSpec(
        backend, _where(m), token_url, client_id, method, secret, audience, resource, scope,
        subject_type, requested, ca, header,
    )  # fmt: skip


_PARSERS = {
    "static": _static,
    "client_credentials": _client_credentials,
    "azure": _azure,
    "gcp": _gcp,
    "assertion": _assertion,
    "token_exchange": _token_exchange,
}


def _one(m: Mapping, backend: str) -> CredentialSpec | None:
    kind = m.text("type", None, required=True)
    if kind is None:
        m.close(allowed_extra=tuple(m.keys()))
        return None
    if kind not in _PARSERS:
        m.error("type", f"{m.where}.type: must be one of {', '.join(PROVIDER_TYPES)}, got {kind!r}")
        m.close(allowed_extra=tuple(m.keys()))
        return None
    spec = _PARSERS[kind](m, backend)
    m.close()
    return spec


def header_of(spec: CredentialSpec) -> str:
    """The header a spec writes; ``gcp`` in ``auto`` mode is decided per route at request time."""
    if isinstance(spec, GcpSpec):
        return "X-Serverless-Authorization" if spec.send_as == "serverless" else "Authorization"
    return spec.header


def parse_credentials(backend: Mapping, backend_name: str) -> tuple[CredentialSpec, ...]:
    """Read ``backends.<name>.credentials``: one mapping or a list of combinable mappings."""
    node = backend.take("credentials")  # a mapping or a list of them
    if node is None:
        return ()
    where = f"{backend.where}.credentials"
    items: list[Mapping] = []
    if isinstance(node, yaml.MappingNode):
        items.append(Mapping(backend.doc, node, where))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            m = Mapping.of(backend.doc, item, f"{where}[{index}]")
            if m is not None:
                items.append(m)
    else:
        backend.doc.error(node, f"{where}: expected a mapping or a list, got {node_kind(node)}")
        return ()
    specs = [spec for m in items if (spec := _one(m, backend_name)) is not None]
    seen: dict[str, CredentialSpec] = {}
    for spec in specs:
        header = header_of(spec).lower()
        if header in seen:
            line = int(spec.source.rsplit(":", 1)[1])
            backend.doc.problems.add(
                backend.doc.path,
                line,
                f"{where}: {spec.type} and {seen[header].type} both write the {header_of(spec)} "
                "header; give one of them another 'header' (gcp: send_as: serverless)",
            )
        seen[header] = spec
    if sum(isinstance(s, AssertionSpec) for s in specs) > 1:
        backend.doc.error(node, f"{where}: at most one assertion per backend")
    return tuple(specs)


def parse_assertion_signing(m: Mapping | None) -> AssertionSigningConfig | None:
    """Read the top-level ``assertions:`` section (signing keys and token lifetime)."""
    if m is None:
        return None
    path = m.path("signing_keys_file", required=True)
    lifetime = m.duration("lifetime", MAX_ASSERTION_LIFETIME)
    publish_before_use = m.duration("publish_before_use", 300.0)
    m.close()
    if lifetime > MAX_ASSERTION_LIFETIME or lifetime < 10:
        m.error("lifetime", f"{m.where}.lifetime: must be between 10s and 5m")
        lifetime = MAX_ASSERTION_LIFETIME
    if path is None:
        return None
    check_key_file(m, "signing_keys_file", path)
    if path.exists():
        # Imported here so the config module stays free of crypto at import time.
        from proxy.credentials.signing import SigningKeyError, load_signing_keys

        try:
            load_signing_keys(path)
        except SigningKeyError as exc:
            m.error("signing_keys_file", f"{m.where}.signing_keys_file: {exc}")
            return None
    return AssertionSigningConfig(_where(m), path, lifetime, publish_before_use)
