"""Grant stores under test: the file store and the Redis store on a real redis-server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from proxy.grants.filestore import FileGrantStore
from proxy.grants.redisstore import RedisGrantStore
from proxy.grants.store import GrantStore, Limits
from proxy.state.client import StateClient
from tests.state.conftest import redis_server, state_config, state_key
from tests.state.redis_server import RedisServer

__all__ = ["redis_server", "state_key"]

LIMITS = Limits(max_pending_per_caller=3, max_open=10, retention=3600.0)
MakeStore = Callable[..., Awaitable[GrantStore]]


@pytest.fixture(params=["file", "redis"])
async def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MakeStore]:
    """Open a store (several calls: several replicas or restarts sharing the same data)."""
    clients: list[StateClient] = []
    server: RedisServer | None = None
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        key: Path = request.getfixturevalue("state_key")

    async def make(limits: Limits = LIMITS) -> GrantStore:
        if server is None:
            store = FileGrantStore(tmp_path / "grants.json", limits)
            await store.start()
            return store
        client = StateClient(state_config(server, key))
        await client.start()
        clients.append(client)
        return RedisGrantStore(client, limits)

    yield make
    for client in clients:
        await client.close()
