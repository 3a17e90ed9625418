"""The validated configuration: frozen dataclasses built once at start-up."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from proxy.credentials.config import AssertionSigningConfig, CredentialSpec
from proxy.grants.config import GrantsConfig
from proxy.http.canonical import PathOptions
from proxy.http.forwarding import TrustedProxies
from proxy.http.headers import IdentityHeaders
from proxy.identity.config import IdentityConfig
from proxy.state.config import StateConfig
from proxy.upstream.config import BackendOptions


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class TLSConfig:
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None
    client_auth: str = "optional"  # optional | require (only with client_ca_file)
    min_version: str = "1.2"
    # PEM CRLs of the client CAs; a client certificate must be in a current one.
    crl_file: Path | None = None


@dataclass(frozen=True, slots=True)
class ListenConfig:
    address: Address
    # "proxy": forward requests; "decision": answer a data plane's forward-auth
    # and ext_authz questions, never forwarding (see proxy.http.decision).
    mode: str = "proxy"
    tls: TLSConfig | None = None
    trusted_proxies: TrustedProxies = TrustedProxies()
    max_header_size: int = 8190  # per header line / field
    max_headers: int = 100
    max_head_size: int = 64 * 2**10  # the whole request head (and a trailer section)
    keepalive_timeout: float = 75.0
    header_timeout: float = 30.0  # a request head must arrive whole within this
    max_body: int = 10 * 2**20  # default per-route request body limit
    path: PathOptions = PathOptions()
    backlog: int = 1024
    # Anonymous callers' rate-limit buckets count per IPv6 network of this size.
    ipv6_rate_limit_prefix: int = 64
    websocket_max_message: int = 16 * 2**20  # a larger message closes the WebSocket (1009)
    websocket_idle_timeout: float = 300.0  # no frame either way for this long closes it; 0 = never


@dataclass(frozen=True, slots=True)
class AdminConfig:
    address: Address


@dataclass(frozen=True, slots=True)
class AuditConfig:
    output: str = "stdout"  # "stdout" or a file path
    # While records cannot be written, refuse requests (503 audit_unavailable).
    required: bool = True
    # Encoded records waiting for the disk, per process; more are dropped and counted.
    max_buffer: int = 64 * 2**20


@dataclass(frozen=True, slots=True)
class LogConfig:
    format: str = "auto"  # json | text | auto: JSON unless standard error is a terminal
    level: str = "info"  # debug | info | warning | error


@dataclass(frozen=True, slots=True)
class TracingConfig:
    """OpenTelemetry traces over OTLP/HTTP (needs ``pip install 'gatehouse[otel]'``)."""

    otlp_endpoint: str  # base URL: spans are posted to <endpoint>/v1/traces
    service_name: str = "gatehouse"
    sample_ratio: float = 1.0  # of traces started here; a caller's sampled flag is followed


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 5.0
    read: float = 30.0  # idle time between reads from the upstream
    total: float = 60.0  # deadline for the upstream's response headers


@dataclass(frozen=True, slots=True)
class BackendConfig:
    name: str
    urls: tuple[str, ...]
    timeouts: Timeouts = Timeouts()
    max_connections: int = 0  # 0 = unlimited
    credentials: tuple[CredentialSpec, ...] = ()
    options: BackendOptions = BackendOptions()
    # False: a gateway stays ready while this backend is down (its routes 502).
    required_for_readiness: bool = True


@dataclass(frozen=True, slots=True)
class Config:
    source: Path
    listen: ListenConfig
    admin: AdminConfig | None
    audit: AuditConfig
    policy_dir: Path
    backends: Mapping[str, BackendConfig]
    public_url: str
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    assertions: AssertionSigningConfig | None = None
    drain_timeout: float = 30.0
    config_hash: str = ""
    state: StateConfig | None = None
    log: LogConfig = LogConfig()
    tracing: TracingConfig | None = None
    identity_headers: IdentityHeaders = IdentityHeaders()
    grants: GrantsConfig | None = None
