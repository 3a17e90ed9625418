"""Is each backend reachable at all? (TCP connect probe, feeds /readyz)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from urllib.parse import urlsplit

from proxy.upstream.config import BackendView


async def _can_connect(url: str, limit: float) -> bool:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        async with asyncio.timeout(limit):
            _, writer = await asyncio.open_connection(parts.hostname, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


class Reachability:
    """Probes every backend endpoint periodically; a backend is up if any endpoint is."""

    def __init__(self, backends: Mapping[str, BackendView]) -> None:
        self._backends = backends
        self.state: dict[str, bool] = dict.fromkeys(backends, False)

    async def probe_once(self, limit: float = 2.0) -> None:
        for name, backend in self._backends.items():
            results = await asyncio.gather(*(_can_connect(u, limit) for u in backend.urls))
            self.state[name] = any(results)

    async def run(self, interval: float = 5.0) -> None:
        while True:
            await self.probe_once()
            await asyncio.sleep(interval)
