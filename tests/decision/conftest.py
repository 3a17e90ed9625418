"""Fixtures for the decision-mode suite: one stack per module, data planes on top."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.decision.stack import (
    DataPlane,
    Stack,
    decision_stack,
    start_caddy,
    start_haproxy,
    start_nginx,
)
from tests.decision.upstream import app as upstream_app
from tests.support.uvicorn_server import serve_asgi

STARTERS = {"nginx": start_nginx, "caddy": start_caddy, "haproxy": start_haproxy}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, certs: dict[str, Path]) -> Iterator[Stack]:
    with serve_asgi(upstream_app) as upstream_port:
        with decision_stack(tmp_path_factory.mktemp("decision"), upstream_port, certs) as built:
            yield built


@pytest.fixture(scope="module", params=sorted(STARTERS))
def plane(request: pytest.FixtureRequest, stack: Stack) -> Iterator[DataPlane]:
    """Each shipped data plane in turn, in front of the same Gatehouse and upstream."""
    started = STARTERS[request.param](stack)
    yield started
    started.stop()
