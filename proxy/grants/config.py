"""The optional ``grants:`` section: just-in-time access.

Example::

    grants:
      file: /var/lib/gatehouse/grants.json   # without state: (default: grants.json
                                             # beside the config file)
      decide_within: 24h          # an undecided request lapses after this
      max_start_delay: 7d         # how far ahead a request may ask its access to start
      retention: 30d              # finished requests stay listed (page, CLI) this long
      max_pending_per_caller: 5
      max_open: 1000              # pending + approved + active, in all
      cache_ttl: 250ms            # how long a replica reuses a caller's grants for decisions
      sweep_interval: 1s          # how often expiries are recorded (audit, webhook)
      webhook_url: https://hooks.slack.com/services/T000/B000/XXXX
      webhook_secret: env:GRANTS_WEBHOOK_SECRET   # or webhook_secret_file: PATH
      webhook_timeout: 5s
      webhook_attempts: 5

Without the section there are no grants: a ``grant`` criterion never holds and
``/.gatehouse/access/`` answers 404. With a ``state:`` section the grants live
in Redis (sealed), shared by every replica; otherwise in ``file``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from proxy.config.keyfiles import check_secret
from proxy.config.reader import Mapping, SecretRef


@dataclass(frozen=True, slots=True)
class GrantsConfig:
    file: Path
    decide_within: float = 24 * 3600.0
    max_start_delay: float = 7 * 86400.0
    retention: float = 30 * 86400.0
    max_pending_per_caller: int = 5
    max_open: int = 1000
    # Revocation reaches every replica within this (plus one Redis read).
    cache_ttl: float = 0.25
    sweep_interval: float = 1.0
    webhook_url: str | None = None
    webhook_secret: SecretRef | None = None
    webhook_timeout: float = 5.0
    webhook_attempts: int = 5


def parse_grants(m: Mapping | None, config_dir: Path) -> GrantsConfig | None:
    """The grants settings, or None when the section is absent (no grants)."""
    if m is None:
        return None
    file = m.path("file", must_exist=False) or config_dir / "grants.json"
    if not file.parent.is_dir():
        m.error("file", f"{m.where}.file: directory does not exist: {file.parent}")
    durations = {
        name: m.duration(name, default)
        for name, default in (
            ("decide_within", 24 * 3600.0),
            ("max_start_delay", 7 * 86400.0),
            ("retention", 30 * 86400.0),
            ("cache_ttl", 0.25),
            ("sweep_interval", 1.0),
            ("webhook_timeout", 5.0),
        )
    }
    for name in ("decide_within", "retention", "sweep_interval", "webhook_timeout"):
        if durations[name] <= 0:
            m.error(name, f"{m.where}.{name}: must be more than zero")
    if durations["cache_ttl"] > 1.0:
        m.error(
            "cache_ttl",
            f"{m.where}.cache_ttl: at most 1s (a revocation must reach every replica within it)",
        )
    url = m.text("webhook_url")
    if url is not None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            # Never echo the URL: webhook URLs (Slack's) carry their secret in the path.
            m.error("webhook_url", f"{m.where}.webhook_url: expected an http(s) URL")
    secret = check_secret(m, "webhook_secret", m.secret("webhook_secret"))
    if url is not None and secret is None:
        m.error(
            None,
            f"{m.where}: webhook_url needs webhook_secret (env:NAME) or webhook_secret_file "
            "to sign its deliveries",
        )
    config = GrantsConfig(
        file=file,
        decide_within=durations["decide_within"],
        max_start_delay=durations["max_start_delay"],
        retention=durations["retention"],
        max_pending_per_caller=m.integer("max_pending_per_caller", 5, minimum=1),
        max_open=m.integer("max_open", 1000, minimum=1),
        cache_ttl=durations["cache_ttl"],
        sweep_interval=durations["sweep_interval"],
        webhook_url=url,
        webhook_secret=secret,
        webhook_timeout=durations["webhook_timeout"],
        webhook_attempts=m.integer("webhook_attempts", 5, minimum=1),
    )
    m.close()
    return config
