"""Bodies stream: 1 GiB up and 1 GiB down with the proxy's RSS growing < 32 MiB."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import aiohttp

from tests.conftest import GatehouseFactory
from tests.support.gatehouse import public_route
from tests.support.rss import PeakRss

GIB = 2**30
BUDGET = 32 * 2**20


async def test_one_gib_each_way_streams_within_the_memory_budget(
    gatehouse: GatehouseFactory, upstream_url: str
) -> None:
    gh = gatehouse(
        backends={"up": {"urls": [upstream_url], "timeouts": {"total": "120s", "read": "60s"}}},
        routes=[public_route("all", "/", "up", max_body="2GiB")],
    )
    block = bytes(range(256)) * 256  # 64 KiB
    expected = hashlib.sha256()
    for _ in range(GIB // len(block)):
        expected.update(block)

    async def upload() -> AsyncIterator[bytes]:
        for _ in range(GIB // len(block)):
            yield block

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as s:
        # Warm up so the baseline includes the connection pools and code paths.
        async with s.post(gh.url + "/echo", data=b"x" * 1000) as r:
            await r.read()
        with PeakRss(gh.process.pid) as up:
            async with s.post(
                gh.url + "/echo", data=upload(), headers={"Content-Length": str(GIB)}
            ) as r:
                data = await r.json()
        assert data["body_size"] == GIB
        assert data["body_sha256"] == expected.hexdigest()
        assert up.growth < BUDGET, f"upload grew RSS by {up.growth / 2**20:.1f} MiB"

        with PeakRss(gh.process.pid) as down:
            received = 0
            async with s.get(gh.url + f"/download/{GIB}") as r:
                assert r.headers["Content-Length"] == str(GIB)
                async for chunk in r.content.iter_any():
                    received += len(chunk)
        assert received == GIB
        assert down.growth < BUDGET, f"download grew RSS by {down.growth / 2**20:.1f} MiB"
    records = gh.wait_audit(3)
    assert records[1]["bytes_in"] == GIB and records[2]["bytes_out"] == GIB
