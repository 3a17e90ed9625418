"""The validated configuration: frozen dataclasses built once at start-up.

Each layer's options are defined in that layer (``proxy/http/config.py``,
``proxy/upstream/config.py``, ``proxy/observability/config.py``...), so a layer
reads its own part without importing the whole tree; this module assembles them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from proxy.credentials.config import AssertionSigningConfig, CredentialSpec
from proxy.grants.config import GrantsConfig
from proxy.http.config import Address, ListenConfig
from proxy.http.headers import IdentityHeaders
from proxy.identity.config import IdentityConfig
from proxy.observability.config import AuditConfig, LogConfig, TracingConfig
from proxy.state.config import StateConfig
from proxy.upstream.config import BackendOptions, Timeouts


@dataclass(frozen=True, slots=True)
class AdminConfig:
    address: Address


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
