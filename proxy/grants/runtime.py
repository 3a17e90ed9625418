"""Everything a worker builds from ``grants:``: the store (Redis with ``state:``, the
file otherwise), the webhook, the service with its sweeper, the decision lookup
and the ``/.gatehouse/access`` endpoint."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from proxy.grants import csrf
from proxy.grants.config import GrantsConfig
from proxy.grants.endpoint import AccessEndpoint
from proxy.grants.filestore import FileGrantStore
from proxy.grants.page import PREFIX
from proxy.grants.service import GrantLookup, GrantService
from proxy.grants.store import GrantStore, Limits
from proxy.grants.webhook import WebhookSender
from proxy.identity.authenticate import Authenticator
from proxy.identity.config import BrowserConfig
from proxy.identity.session import load_cookie_keys
from proxy.observability.audit import AuditWriter
from proxy.policy.evaluate import PolicySet

if TYPE_CHECKING:
    from proxy.state.client import StateClient


@dataclass
class Access:
    service: GrantService
    lookup: GrantLookup
    endpoint: AccessEndpoint

    async def close(self) -> None:
        await self.service.close()


async def start_access(
    cfg: GrantsConfig,
    *,
    policies: Callable[[], PolicySet],
    audit: AuditWriter,
    authenticator: Authenticator | None,
    browser: BrowserConfig | None,
    public_url: str,
    state: StateClient | None,
) -> Access:
    limits = Limits(cfg.max_pending_per_caller, cfg.max_open, cfg.retention)
    store: GrantStore
    if state is not None:
        from proxy.grants.redisstore import RedisGrantStore  # needs the Redis client

        store = RedisGrantStore(state, limits)
    else:
        file_store = FileGrantStore(cfg.file, limits)
        await file_store.start()
        store = file_store
    webhook = None
    if cfg.webhook_url is not None and cfg.webhook_secret is not None:
        webhook = WebhookSender(
            cfg.webhook_url,
            cfg.webhook_secret.read().encode(),
            page_url=f"{public_url}{PREFIX}/",
            timeout=cfg.webhook_timeout,
            attempts=cfg.webhook_attempts,
        )
    service = GrantService(store, cfg, policies, audit, webhook=webhook)
    lookup = GrantLookup(store, cfg.cache_ttl)
    service.on_change(lookup.forget)
    keys = csrf.derive_keys(load_cookie_keys(browser.cookie_keys_file)) if browser else None
    endpoint = AccessEndpoint(service, authenticator, csrf_keys=keys)
    await service.start()
    return Access(service, lookup, endpoint)
