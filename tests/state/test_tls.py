"""rediss://: the Redis server's certificate must be valid for the host in the URL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from proxy.config.reader import SecretRef
from proxy.dev.certs import Issued, issue, make_ca
from proxy.state.client import StateClient
from proxy.state.config import StateConfig
from tests.conftest import GatehouseFactory
from tests.state.redis_server import RedisServer
from tests.support.gatehouse import Gatehouse, public_route
from tests.support.net import free_port
from tests.support.pki import loopback_server
from tests.support.waiting import eventually


@contextmanager
def tls_redis(workdir: Path, ca: Issued, server: Issued) -> Iterator[int]:
    """A real redis-server serving TLS with ``server``'s certificate; yields the TLS port."""
    tls_port = free_port()
    redis = RedisServer(
        workdir,
        None,
        "--tls-port",
        str(tls_port),
        "--tls-cert-file",
        str(server.cert_file),
        "--tls-key-file",
        str(server.key_file),
        "--tls-ca-cert-file",
        str(ca.cert_file),
        "--tls-auth-clients",
        "no",
    )
    redis.start()
    try:
        yield tls_port
    finally:
        redis.stop()


async def reachable(url: str, ca: Issued, state_key: Path) -> bool:
    client = StateClient(
        StateConfig(
            redis_url=url,
            encryption_key=SecretRef("file", str(state_key)),
            tls_ca_file=ca.cert_file,
            timeout=2.0,
        )
    )
    try:
        return await client.ping()
    finally:
        await client.close()


async def test_a_redis_certificate_for_another_host_is_refused(
    tmp_path: Path, state_key: Path
) -> None:
    ca = make_ca(tmp_path / "pki", "redis-ca")
    elsewhere = issue(ca, tmp_path / "pki", "elsewhere", common_name="redis.internal",
                      dns=("redis.internal",))  # fmt: skip
    # Same CA, so the chain is trusted: only the name differs.
    with tls_redis(tmp_path / "wrong", ca, elsewhere) as port:
        assert not await reachable(f"rediss://127.0.0.1:{port}/0", ca, state_key)
        assert not await reachable(f"rediss://localhost:{port}/0", ca, state_key)
    with tls_redis(tmp_path / "right", ca, loopback_server(ca, tmp_path / "pki")) as port:
        assert await reachable(f"rediss://127.0.0.1:{port}/0", ca, state_key)
        assert await reachable(f"rediss://localhost:{port}/0", ca, state_key)


async def test_a_running_gatehouse_refuses_a_redis_certificate_for_another_host(
    tmp_path: Path, state_key: Path, gatehouse: GatehouseFactory, upstream_url: str
) -> None:
    ca = make_ca(tmp_path / "pki", "redis-ca")
    elsewhere = issue(ca, tmp_path / "pki", "elsewhere", common_name="redis.internal",
                      dns=("redis.internal",))  # fmt: skip

    def start(port: int) -> Gatehouse:
        state = {
            "redis_url": f"rediss://127.0.0.1:{port}/0",
            "tls_ca_file": str(ca.cert_file),
            "encryption_key_file": str(state_key),
            "timeout": "2s",
        }
        return gatehouse(
            backends={"up": {"urls": [upstream_url]}},
            routes=[public_route("all", "/", "up")],
            extra={"state": state},
        )

    with tls_redis(tmp_path / "wrong", ca, elsewhere) as port:
        wrong = start(port)
        await eventually(lambda: "shared state (Redis) unreachable" in wrong.stderr(), 10.0)
        assert "shared state (Redis) reachable" not in wrong.stderr()
    with tls_redis(tmp_path / "right", ca, loopback_server(ca, tmp_path / "pki")) as port:
        right = start(port)
        await eventually(lambda: "shared state (Redis) reachable" in right.stderr(), 10.0)
