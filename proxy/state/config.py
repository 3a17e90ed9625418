"""The optional ``state:`` section: shared state for replicas, in Redis.

Example::

    state:
      redis_url: redis://redis.gatehouse.svc:6379/0   # rediss:// for TLS, unix:///path
      username: gatehouse                             # optional (Redis ACL user)
      password: env:REDIS_PASSWORD                    # or password_file: PATH
      encryption_key_file: /run/secrets/state-keys    # or encryption_key: env:NAME
      key_prefix: "gatehouse:"
      tls_ca_file: /etc/ssl/redis-ca.pem              # optional, rediss:// only
      timeout: 500ms
      lock_ttl: 10s
      max_connections: 64                             # per worker process

Without the section every replica keeps its state in memory (as before).
Passwords never sit in the URL: the URL is not a secret reference, so it
would end up in config files and logs.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from proxy.config.keyfiles import check_secret
from proxy.config.reader import Mapping, SecretRef

DEFAULT_PREFIX = "gatehouse:"


@dataclass(frozen=True, slots=True)
class StateConfig:
    redis_url: str
    encryption_key: SecretRef
    key_prefix: str = DEFAULT_PREFIX
    username: str | None = None
    password: SecretRef | None = None
    tls_ca_file: Path | None = None
    # Connect and per-command socket timeout: short, so an unreachable Redis
    # costs a request little before the replica switches to its fallbacks.
    timeout: float = 0.5
    # Lifetime of refresh and credential-fetch locks: longer than any token request.
    lock_ttl: float = 10.0
    # How often an unreachable Redis is probed again.
    reconnect_interval: float = 1.0
    # Commands in flight per worker; more wait (up to ``timeout``) for a free connection.
    max_connections: int = 64


def _check_url(m: Mapping, url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        m.error("redis_url", f"{m.where}.redis_url: expected redis://, rediss:// or unix://")
        return
    if parts.password is not None:
        # Never echo the URL: it carries the password.
        m.error(
            "redis_url",
            f"{m.where}.redis_url: passwords are refused in the URL; "
            "use 'password: env:NAME' or 'password_file: PATH'",
        )
    if parts.scheme != "unix" and not parts.hostname:
        m.error("redis_url", f"{m.where}.redis_url: needs a host")
    if parts.query or parts.fragment:
        m.error("redis_url", f"{m.where}.redis_url: options go in their own keys, not the URL")


def parse_state(m: Mapping | None) -> StateConfig | None:
    """The shared-state settings, or None when the section is absent (single replica)."""
    if m is None:
        return None
    if importlib.util.find_spec("redis") is None:
        # Reported with the config, not as an ImportError once workers start.
        m.error(None, f"{m.where}: needs the Redis client: pip install 'gatehouse[redis]'")
    url = m.text("redis_url", required=True)
    if url is not None:
        _check_url(m, url)
    key = check_secret(m, "encryption_key", m.secret("encryption_key", required=True))
    prefix = m.text("key_prefix", DEFAULT_PREFIX)
    if not prefix or any(c.isspace() for c in prefix):
        m.error("key_prefix", f"{m.where}.key_prefix: must be non-empty without spaces")
    username = m.text("username")
    password = check_secret(m, "password", m.secret("password"))
    ca_file = m.path("tls_ca_file")
    if ca_file is not None and url is not None and not url.startswith("rediss://"):
        m.error("tls_ca_file", f"{m.where}.tls_ca_file: only with a rediss:// URL")
    timeout = m.duration("timeout", 0.5)
    lock_ttl = m.duration("lock_ttl", 10.0)
    reconnect = m.duration("reconnect_interval", 1.0)
    max_connections = m.integer("max_connections", 64, minimum=1)
    for name, value in (("timeout", timeout), ("lock_ttl", lock_ttl)):
        if value <= 0:
            m.error(name, f"{m.where}.{name}: must be more than zero")
    m.close()
    if url is None or key is None:
        return None
    return StateConfig(
        redis_url=url,
        encryption_key=key,
        key_prefix=prefix,
        username=username,
        password=password,
        tls_ca_file=ca_file,
        timeout=timeout,
        lock_ttl=lock_ttl,
        reconnect_interval=max(reconnect, 0.05),
        max_connections=max_connections,
    )
