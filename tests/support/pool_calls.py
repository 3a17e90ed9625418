"""Sending requests through an :class:`EndpointPool` with aiohttp, as the gateway would."""

from __future__ import annotations

import aiohttp

from proxy.upstream.pool import EndpointPool


async def get_statuses(
    pool: EndpointPool, session: aiohttp.ClientSession, path: str = "/", times: int = 1
) -> list[int]:
    """``times`` GETs for ``path``, one after another; the statuses the pool handed back."""

    async def attempt(endpoint: str, _remaining: float | None) -> aiohttp.ClientResponse:
        return await session.get(endpoint + path)

    statuses = []
    for _ in range(times):
        exchange = await pool.send("GET", attempt)
        statuses.append(exchange.response.status)
        exchange.response.release()
        exchange.release()
    return statuses
