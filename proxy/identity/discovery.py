"""Browser login's view of its OpenID provider: discovery metadata and signing keys,
recovered on their own after the IdP was unreachable.

* One discovery at a time (requests arriving meanwhile wait for that one),
  and none inside the backoff window after a failure: a flood of page views
  while the IdP is down costs the IdP a handful of requests, not one each.
* The backoff doubles from 1 s up to 30 s (with jitter, so replicas do not
  synchronise) and resets on success.
* Until discovery and the keys have both succeeded once, a background task
  keeps trying on that schedule, so login (and ``/readyz``) recover without a
  restart and without waiting for traffic. The key client is created as soon
  as discovery names the ``jwks_uri``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import Callable

import aiohttp

from proxy.errors import IdentityProviderUnavailable
from proxy.identity.config import IssuerConfig
from proxy.identity.fetch import ProviderMetadata, discover
from proxy.identity.jwks import JwksClient
from proxy.outbound import FetchError, backoff_delay

log = logging.getLogger(__name__)

BACKOFF_BASE = 1.0
BACKOFF_MAX = 30.0


class Backoff:
    """When the next attempt may run, after consecutive failures (pure, clock passed in)."""

    def __init__(
        self,
        base: float = BACKOFF_BASE,
        maximum: float = BACKOFF_MAX,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.base = base
        self.maximum = maximum
        self.failures = 0
        self.not_before = 0.0
        self._rand = rand

    def ready(self, now: float) -> bool:
        return now >= self.not_before

    def wait(self, now: float) -> float:
        return max(0.0, self.not_before - now)

    def failed(self, now: float) -> None:
        self.failures += 1
        # Between half and all of the exponential ceiling: spread, never immediate.
        jitter = 0.5 + self._rand() / 2
        self.not_before = now + backoff_delay(self.failures, self.base, self.maximum, jitter)

    def succeeded(self) -> None:
        self.failures = 0
        self.not_before = 0.0


class ProviderDiscovery:
    def __init__(
        self,
        http: aiohttp.ClientSession,
        id_token_cfg: IssuerConfig,
        jwks: JwksClient | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        backoff: Backoff | None = None,
    ) -> None:
        self._http = http
        self._cfg = id_token_cfg
        self._clock = clock
        self._backoff = backoff or Backoff()
        self._shared_jwks = jwks
        self.jwks = jwks
        self.metadata: ProviderMetadata | None = None
        self.attempts = 0
        self._inflight: asyncio.Task[bool] | None = None
        self._recovery: asyncio.Task[None] | None = None

    def ready(self) -> bool:
        return self.metadata is not None and self.jwks is not None and self.jwks.ready()

    async def start(self) -> None:
        """Try once now; if that fails, keep trying in the background."""
        await self._attempt_all()
        if not self.ready():
            self._recovery = asyncio.get_running_loop().create_task(self._recover())

    async def close(self) -> None:
        for task in (self._recovery, self._inflight):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self.jwks is not None and self.jwks is not self._shared_jwks:
            await self.jwks.close()

    async def get(self) -> ProviderMetadata:
        """The metadata, or IdentityProviderUnavailable (at once inside the backoff window)."""
        metadata = self.metadata
        if metadata is not None:
            return metadata
        if not await self._discover():
            raise IdentityProviderUnavailable(detail="OIDC discovery failed; retrying with backoff")
        assert self.metadata is not None
        return self.metadata

    async def _discover(self) -> bool:
        if self.metadata is not None:
            return True
        task = self._inflight
        if task is None:
            if not self._backoff.ready(self._clock()):
                return False
            task = self._inflight = asyncio.get_running_loop().create_task(self._fetch())
            task.add_done_callback(self._done)
        return await asyncio.shield(task)

    def _done(self, task: asyncio.Task[bool]) -> None:
        if self._inflight is task:
            self._inflight = None

    async def _fetch(self) -> bool:
        self.attempts += 1
        try:
            metadata = await discover(self._http, self._cfg.issuer)
        except FetchError as exc:
            self._backoff.failed(self._clock())
            log.warning(
                "OIDC discovery for browser login failed (%s); next attempt in %.1fs",
                exc,
                self._backoff.wait(self._clock()),
            )
            return False
        self.metadata = metadata
        if self.jwks is None:
            cfg = dataclasses.replace(self._cfg, jwks_uri=metadata.jwks_uri)
            self.jwks = JwksClient(cfg, self._http)
        return True

    async def _attempt_all(self) -> None:
        """Discovery, then the keys; a failure of either moves the backoff on."""
        if not await self._discover():
            return
        jwks = self.jwks
        assert jwks is not None
        if jwks.ready() or await jwks.refresh():
            self._backoff.succeeded()
        else:
            self._backoff.failed(self._clock())

    async def _recover(self) -> None:
        while not self.ready():
            await asyncio.sleep(max(self._backoff.wait(self._clock()), 0.05))
            await self._attempt_all()
        log.info("browser login: OpenID provider %s reachable again", self._cfg.issuer)
