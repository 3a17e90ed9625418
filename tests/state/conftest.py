"""A real redis-server per test, and "replicas": independent shared-state clients on it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.config.reader import SecretRef
from proxy.identity.session import new_cookie_key
from proxy.state.config import StateConfig
from proxy.state.shared import SharedState
from tests.state.redis_server import RedisServer, running_redis

MakeState = Callable[..., Awaitable[SharedState]]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with running_redis(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def state_key(tmp_path: Path) -> Path:
    path = tmp_path / "state-key"
    path.write_text(new_cookie_key() + "\n")
    return path


def state_config(server: RedisServer, key_file: Path, **options: Any) -> StateConfig:
    # The replicas of a test share one event loop, so a command's deadline also counts
    # the turns of every other command in flight: with 100 at once on a loaded machine,
    # the product's 500 ms ran out with Redis idle, and the replica rightly fell back.
    # Outages here are stopped servers, refused at once; a test about the deadline
    # itself sets it.
    defaults: dict[str, Any] = {"reconnect_interval": 0.1, "timeout": 5.0, "lock_ttl": 5.0}
    return StateConfig(
        redis_url=server.url,
        encryption_key=SecretRef("file", str(key_file)),
        **{**defaults, **options},
    )


@pytest.fixture
async def make_state(redis_server: RedisServer, state_key: Path) -> AsyncIterator[MakeState]:
    """Start one replica's shared state (a client of its own); all are closed afterwards."""
    started: list[SharedState] = []

    async def make(**options: Any) -> SharedState:
        state = SharedState(state_config(redis_server, state_key, **options))
        await state.start()
        started.append(state)
        return state

    yield make
    for state in started:
        await state.close()
