"""Shared fixtures: a real FastAPI upstream, real certificates, a gatehouse launcher."""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from proxy.dev.certs import dev_certificates
from tests.peers.websocket import CountingUpstream
from tests.support.gatehouse import Gatehouse, start_gatehouse
from tests.support.net import refused_port
from tests.support.upstream_app import app as upstream_app
from tests.support.uvicorn_server import serve_asgi

# Files the tests write (secrets, keys) are private to their owner, as an
# operator's must be: gatehouse refuses key files other users can read
# (proxy/config/keyfiles.py). Tests of that rule set modes explicitly.
os.umask(0o077)


@pytest.fixture(scope="session")
def upstream_port() -> Iterator[int]:
    """The FastAPI echo/stream/slow upstream under uvicorn, on a port picked at run time."""
    with serve_asgi(upstream_app) as port:
        yield port


@pytest.fixture(scope="session")
def upstream_url(upstream_port: int) -> str:
    return f"http://127.0.0.1:{upstream_port}"


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return dev_certificates(tmp_path_factory.mktemp("certs"), ("localhost",))


@pytest.fixture
def refused_url() -> Iterator[Callable[[], str]]:
    """``refused_url()``: a new http URL where connections are refused until the test ends
    (a dead upstream that no other process can bring to life, see ``refused_port``)."""
    with ExitStack() as held:
        yield lambda: f"http://127.0.0.1:{held.enter_context(refused_port())}"


GatehouseFactory = Callable[..., Gatehouse]


@pytest.fixture
def gatehouse(tmp_path: Path) -> Iterator[GatehouseFactory]:
    """Start ``gatehouse run`` processes for a test; all are stopped afterwards."""
    started: list[Gatehouse] = []
    numbers = itertools.count()

    def factory(**kwargs: Any) -> Gatehouse:
        workdir = tmp_path / f"gh{next(numbers)}"  # a start that failed keeps its own
        workdir.mkdir()
        gh = start_gatehouse(workdir, **kwargs)
        started.append(gh)
        return gh

    yield factory
    for gh in started:
        gh.stop()


@pytest.fixture
async def counting_upstream() -> AsyncIterator[CountingUpstream]:
    """A WebSocket upstream counting what it receives (a "hold" message stops its reading)."""
    upstream = CountingUpstream()
    upstream.server = await asyncio.start_server(upstream.handle, "127.0.0.1", 0)
    yield upstream
    upstream.server.close()
