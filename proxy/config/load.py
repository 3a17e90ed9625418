"""Load and validate the main configuration file completely, or refuse it."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import ssl
from collections.abc import Mapping as EnvMapping
from pathlib import Path
from urllib.parse import urlsplit

from proxy.config.keyfiles import check_key_file
from proxy.config.reader import ConfigError, Mapping, Problems, load_document, unreadable
from proxy.config.schema import AdminConfig, BackendConfig, Config
from proxy.credentials.config import parse_assertion_signing, parse_credentials
from proxy.grants.config import parse_grants
from proxy.http.canonical import PathOptions
from proxy.http.config import Address, ListenConfig, TLSConfig
from proxy.http.forwarding import TrustedProxies
from proxy.http.headers import IdentityHeaders
from proxy.http.tls import CrlError, server_context
from proxy.identity.config import parse_identity
from proxy.observability.config import AuditConfig, LogConfig, TracingConfig
from proxy.state.config import parse_state
from proxy.upstream.config import Timeouts, parse_backend_options

__all__ = ["ConfigError", "load_config", "parse_address", "read_config"]

_NAME = re.compile(r"^[a-z0-9]([a-z0-9_.-]{0,62})$")


def parse_address(text: str) -> Address | None:
    """``host:port`` or ``[v6]:port``; None when malformed."""
    m = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d{1,5})|([^:\[\]]*):(\d{1,5})", text.strip())
    if not m:
        return None
    host = m.group(1) or m.group(3) or "0.0.0.0"
    port = int(m.group(2) or m.group(4))
    return Address(host, port) if 0 <= port <= 65535 else None


def _address(m: Mapping, key: str, default: str | None) -> Address | None:
    text = m.text(key, default, required=default is None)
    if text is None:
        return None
    address = parse_address(text)
    if address is None:
        m.error(key, f"{m.where}.{key}: expected host:port, got {text!r}")
    return address


def _tls(m: Mapping | None) -> TLSConfig | None:
    if m is None:
        return None
    cert = m.path("cert_file", required=True)
    key = m.path("key_file", required=True)
    check_key_file(m, "key_file", key)
    ca = m.path("client_ca_file")
    client_auth = m.choice("client_auth", ("optional", "require"), "optional")
    if client_auth == "require" and ca is None and m.has("client_auth"):
        m.error("client_auth", f"{m.where}.client_auth: 'require' needs client_ca_file")
    min_version = m.choice("min_version", ("1.2", "1.3"), "1.2")
    crl = m.path("crl_file")
    if crl is not None and ca is None:
        m.error("crl_file", f"{m.where}.crl_file: needs client_ca_file (it lists revoked clients)")
    m.close()
    if cert is None or key is None:
        return None
    config = TLSConfig(cert, key, ca, client_auth, min_version, crl)
    files = [f for f in (cert, key, ca, crl) if f is not None]
    if m.doc.offline or any(unreadable(f) is not None for f in files):
        return config  # run-time-only files, or each problem already reported at its line
    try:
        server_context(config)  # the files load together, now rather than in every worker
    except CrlError as exc:
        m.error("crl_file", f"{m.where}.crl_file: {exc}")
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            m.error("key_file", f"{m.where}.key_file: does not match the certificate in cert_file")
        else:
            m.error(None, f"{m.where}: cannot load the certificate, key or client CAs: {exc}")
    except OSError as exc:
        m.error(None, f"{m.where}: cannot load the certificate, key or client CAs: {exc}")
    return config


def _prefix_length(m: Mapping, key: str, default: int) -> int:
    value = m.integer(key, default, minimum=1)
    if value > 128:
        m.error(key, f"{m.where}.{key}: an IPv6 prefix length is at most 128")
        return default
    return value


def _trusted_proxies(m: Mapping, mode: str) -> TrustedProxies:
    trusted = TrustedProxies(m.cidr_list("trusted_proxies"))
    if mode != "decision":
        return trusted
    # A decision is made on what these peers say the request was: they must be named,
    # and must not be everyone (any client could then describe any request).
    if not trusted.networks:
        m.error(
            "mode",
            f"{m.where}.mode: decision needs {m.where}.trusted_proxies, the data plane's "
            "addresses (decision requests from any other peer are refused)",
        )
    for net in trusted.networks:
        if net.prefixlen == 0:
            m.error(
                "trusted_proxies",
                f"{m.where}.trusted_proxies: {net} trusts every peer; in decision mode any "
                "client could then forge the original request",
            )
    return trusted


def _listen(m: Mapping | None) -> ListenConfig:
    if m is None:
        return ListenConfig(Address("0.0.0.0", 8443))
    address = _address(m, "address", "0.0.0.0:8443") or Address("0.0.0.0", 8443)
    tls = _tls(m.mapping("tls"))
    mode = m.choice("mode", ("proxy", "decision"), "proxy")
    listen = ListenConfig(
        address=address,
        mode=mode,
        tls=tls,
        trusted_proxies=_trusted_proxies(m, mode),
        max_header_size=m.size("max_header_size", 8190),
        max_headers=m.integer("max_headers", 100, minimum=1),
        max_head_size=m.size("max_head_size", 64 * 2**10),
        keepalive_timeout=m.duration("keepalive_timeout", 75.0),
        header_timeout=m.duration("header_timeout", 30.0),
        max_body=m.size("max_body", 10 * 2**20),
        path=PathOptions(
            allow_encoded_slash=m.flag("allow_encoded_slash", False),
            allow_semicolon=m.flag("allow_semicolon", False),
        ),
        backlog=m.integer("backlog", 1024, minimum=1),
        ipv6_rate_limit_prefix=_prefix_length(m, "ipv6_rate_limit_prefix", 64),
        websocket_max_message=m.size("websocket_max_message", 16 * 2**20),
        websocket_idle_timeout=m.duration("websocket_idle_timeout", 300.0),
    )
    if listen.max_head_size < listen.max_header_size:
        m.error("max_head_size", f"{m.where}.max_head_size: smaller than max_header_size")
    m.close()
    return listen


def _audit_file_problem(path: Path) -> str | None:
    """Why the audit writer could not open ``path`` (O_NOFOLLOW, append, create)."""
    if path.is_symlink():
        return "must not be a symlink (the file is opened with O_NOFOLLOW)"
    if path.exists():
        if not path.is_file():
            return "is not a regular file"
        return None if os.access(path, os.W_OK) else "is not writable by this user"
    if not path.parent.is_dir():
        return f"directory does not exist: {path.parent}"
    return None if os.access(path.parent, os.W_OK) else f"cannot create files in {path.parent}"


def _audit(m: Mapping | None) -> AuditConfig:
    if m is None:
        return AuditConfig()
    output = m.text("output", "stdout")
    if output not in ("stdout", "-"):
        out_path = m.doc.resolve_path(output)
        problem = None if m.doc.offline else _audit_file_problem(out_path)
        if problem:
            m.error("output", f"audit.output: {problem}")
        output = str(out_path)
    required = m.flag("required", True)
    max_buffer = m.size("max_buffer", AuditConfig().max_buffer)
    if max_buffer < 64 * 2**10:
        m.error("max_buffer", "audit.max_buffer: must be at least 64KiB")
    m.close()
    return AuditConfig("stdout" if output == "-" else output, required, max_buffer)


def _backend(name: str, m: Mapping, *, decision: bool) -> BackendConfig | None:
    urls = m.str_list("urls")
    if not urls and m.has("url"):
        urls = m.str_list("url")
    elif m.has("url"):
        m.error("url", f"{m.where}: give either 'url' or 'urls', not both")
    if not urls and not decision:
        # A decision listener never forwards: its backends exist for their credentials.
        m.error(None, f"{m.where}: needs at least one URL in 'urls'")
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            m.error("urls", f"{m.where}.urls: expected an http(s) URL, got {url!r}")
        elif parts.query or parts.fragment or parts.username:
            m.error("urls", f"{m.where}.urls: URL must not carry query, fragment or userinfo")
    t = m.mapping("timeouts")
    timeouts = Timeouts()
    if t is not None:
        timeouts = Timeouts(
            connect=t.duration("connect", 5.0),
            read=t.duration("read", 30.0),
            total=t.duration("total", 60.0),
        )
        t.close()
    max_connections = m.integer("max_connections", 0, minimum=0)
    required = m.flag("required_for_readiness", True)
    credentials = parse_credentials(m, name)
    options = parse_backend_options(m, name, urls=urls)
    m.close()
    return BackendConfig(
        name,
        tuple(u.rstrip("/") for u in urls),
        timeouts,
        max_connections,
        credentials,
        options,
        required_for_readiness=required,
    )


def _backends(m: Mapping | None, *, decision: bool) -> dict[str, BackendConfig]:
    out: dict[str, BackendConfig] = {}
    if m is None:
        return out
    for name, node in m.items():
        sub = Mapping.of(m.doc, node, f"backends.{name}")
        if not _NAME.match(name):
            m.key_error(name, f"backends: invalid backend name {name!r} (use a-z, 0-9, _ . -)")
        if sub is None:
            continue
        backend = _backend(name, sub, decision=decision)
        if backend is not None:
            out[name] = backend
    return out


LOG_FORMATS = ("auto", "json", "text")
LOG_LEVELS = ("debug", "info", "warning", "error")


def _log(m: Mapping | None) -> LogConfig:
    if m is None:
        return LogConfig()
    log = LogConfig(
        format=m.choice("format", LOG_FORMATS, "auto"),
        level=m.choice("level", LOG_LEVELS, "info"),
    )
    m.close()
    return log


def _otlp_endpoint(m: Mapping, key: str, value: str | None) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        m.error(key, f"{m.where}.{key}: expected an http(s) URL, got {value!r}")
        return None
    return value.rstrip("/")


def _tracing(root: Mapping, environ: EnvMapping[str, str]) -> TracingConfig | None:
    """The ``tracing:`` section, else the standard OTEL_* variables, else off."""
    tracing = _tracing_section(root.mapping("tracing"), environ)
    if tracing is not None and importlib.util.find_spec("opentelemetry.sdk") is None:
        # Reported with the configuration, not as an ImportError once workers start.
        where = "tracing" if root.has("tracing") else None
        root.error(
            where,
            "tracing: needs OpenTelemetry: pip install 'gatehouse[otel]' "
            "(or unset OTEL_EXPORTER_OTLP_ENDPOINT)",
        )
    return tracing


def _tracing_section(m: Mapping | None, environ: EnvMapping[str, str]) -> TracingConfig | None:
    if m is None:
        endpoint = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        if not endpoint:
            return None
        return TracingConfig(
            otlp_endpoint=endpoint.rstrip("/"),
            service_name=environ.get("OTEL_SERVICE_NAME") or "gatehouse",
        )
    endpoint = _otlp_endpoint(
        m, "otlp_endpoint", m.text("otlp_endpoint", environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
    )
    if endpoint is None and not m.has("otlp_endpoint"):
        m.error(None, f"{m.where}: missing 'otlp_endpoint' (or set OTEL_EXPORTER_OTLP_ENDPOINT)")
    service = m.text("service_name", environ.get("OTEL_SERVICE_NAME") or "gatehouse")
    ratio = m.number("sample_ratio", 1.0, minimum=0.0, maximum=1.0)
    m.close()
    if endpoint is None:
        return None
    return TracingConfig(otlp_endpoint=endpoint, service_name=service, sample_ratio=ratio)


# Names an identity header must never take: the proxy writes or reads these itself.
_RESERVED_HEADERS = frozenset(
    {"authorization", "cookie", "host", "content-length", "transfer-encoding", "connection"}
)
_HEADER_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def _identity_headers(identity: Mapping | None) -> IdentityHeaders:
    """``identity.headers``: read here, beside the identity section's own keys."""
    m = identity.mapping("headers") if identity is not None else None
    if m is None:
        return IdentityHeaders()
    default = IdentityHeaders()
    names = {}
    for key in ("subject", "email", "groups"):
        value = m.text(key, getattr(default, key))
        if not _HEADER_TOKEN.match(value) or value.lower() in _RESERVED_HEADERS:
            m.error(key, f"{m.where}.{key}: not a header name Gatehouse may set: {value!r}")
            value = getattr(default, key)
        names[key] = value
    m.close()
    headers = IdentityHeaders(**names)
    if len(headers.names()) < 4:
        m.error(None, f"{m.where}: subject, email and groups need three different names")
        return default
    return headers


def load_config(
    path: Path, *, offline: bool = False, environ: EnvMapping[str, str] | None = None
) -> Config:
    """Parse and validate ``path`` completely, or raise ConfigError with every problem."""
    problems = Problems()
    config = read_config(path, problems, offline=offline, environ=environ)
    problems.raise_if_any()
    assert config is not None  # no problems: the file was a mapping
    return config


def read_config(
    path: Path,
    problems: Problems,
    *,
    offline: bool = False,
    environ: EnvMapping[str, str] | None = None,
) -> Config | None:
    """Parse ``path``, recording problems instead of raising.

    The result is as complete as the file allows, so ``gatehouse check`` can
    go on to check the policies against it in the same pass; None when the
    file is not a YAML mapping at all. ``environ`` (default: the process
    environment) fills ``${VAR}``; ``offline`` skips checks of files that
    exist only where Gatehouse runs.
    """
    env = os.environ if environ is None else environ
    doc, node = load_document(path, problems, environ=env, offline=offline)
    if node is None:
        if not problems.items:
            problems.add(path, 1, "configuration is empty")
        return None
    root = Mapping.of(doc, node, "config")
    if root is None:
        return None
    listen = _listen(root.mapping("listen"))
    admin_m = root.mapping("admin")
    admin = None
    if admin_m is not None:
        admin_addr = _address(admin_m, "address", "127.0.0.1:9901")
        admin_m.close()
        admin = AdminConfig(admin_addr) if admin_addr else None
    audit = _audit(root.mapping("audit"))
    policies_m = root.mapping("policies")
    policy_dir = doc.resolve_path("policies")
    if policies_m is not None:
        policy_dir = policies_m.path("dir", must_exist=False) or policy_dir
        policies_m.close()
    if not policy_dir.is_dir():
        root.error("policies", f"policies.dir: directory not found: {policy_dir}")
    decision = listen.mode == "decision"
    backends = _backends(root.mapping("backends"), decision=decision)
    identity_m = root.mapping("identity")
    identity_headers = _identity_headers(identity_m)
    identity = parse_identity(identity_m)
    if decision and identity.mtls.enabled and identity_m is not None:
        # The TLS client of a decision listener is the data plane, never the caller.
        identity_m.error(
            "mtls",
            "identity.mtls: in decision mode the client certificate is the data plane's, "
            "not the caller's; it cannot be an identity",
        )
    assertions = parse_assertion_signing(root.mapping("assertions"))
    if assertions is None and any(
        spec.type == "assertion" for b in backends.values() for spec in b.credentials
    ):
        root.error(
            None,
            "config: a backend uses credentials type 'assertion': "
            "add an 'assertions:' section with signing_keys_file",
        )
    default_url = f"{'https' if listen.tls else 'http'}://{listen.address}"
    public_url = root.text("public_url", default_url) or default_url
    if urlsplit(public_url).scheme not in ("http", "https"):
        root.error("public_url", f"public_url: expected an http(s) URL, got {public_url!r}")
    state = parse_state(root.mapping("state"))
    grants = parse_grants(root.mapping("grants"), path.parent)
    if grants is not None and not identity.enabled:
        root.error("grants", "grants: needs an identity: section (callers ask with who they are)")
    shutdown_m = root.mapping("shutdown")
    drain = 30.0
    if shutdown_m is not None:
        drain = shutdown_m.duration("drain_timeout", 30.0)
        shutdown_m.close()
    log = _log(root.mapping("log"))
    tracing = _tracing(root, env)
    root.close()

    config_hash = hashlib.sha256(path.read_bytes()).hexdigest()[:12] if path.exists() else ""
    return Config(
        source=path,
        listen=listen,
        admin=admin,
        audit=audit,
        policy_dir=policy_dir,
        backends=backends,
        public_url=public_url.rstrip("/"),
        identity=identity,
        assertions=assertions,
        drain_timeout=drain,
        config_hash=config_hash,
        state=state,
        log=log,
        tracing=tracing,
        identity_headers=identity_headers,
        grants=grants,
    )
