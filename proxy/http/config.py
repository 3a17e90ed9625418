"""The listener's configuration: where it binds, its TLS, and the bounds it holds
every client to. Parsed by :mod:`proxy.config.load` (the ``listen:`` section)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from proxy.http.canonical import PathOptions
from proxy.http.forwarding import TrustedProxies


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

    @property
    def scheme(self) -> str:
        """The scheme clients use to reach this listener."""
        return "https" if self.tls is not None else "http"
