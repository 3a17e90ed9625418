"""Shared fixtures: config parsing from YAML text, peers, brokers, sample-app launchers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest

from proxy.config.reader import Mapping as ConfigMapping
from proxy.credentials.broker import CredentialBroker
from proxy.credentials.cache import CredentialCache
from proxy.credentials.config import (
    AssertionSigningConfig,
    CredentialSpec,
    parse_assertion_signing,
    parse_credentials,
)
from proxy.errors import UpstreamCredentialsUnavailable
from proxy.model import Identity
from proxy.policy.model import Route
from tests.peers.cloud.oauth import OAuthServer
from tests.peers.cloud.server import PeerServer
from tests.support.config import backends_of, parse_yaml
from tests.support.net import free_port, listeners

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "deploy" / "examples"


def parse_backends(
    tmp_path: Path, text: str
) -> tuple[dict[str, tuple[CredentialSpec, ...]], AssertionSigningConfig | None]:
    """Parse ``backends:`` (and ``assertions:``) from YAML the way the config loader does."""

    def read(
        root: ConfigMapping,
    ) -> tuple[dict[str, tuple[CredentialSpec, ...]], AssertionSigningConfig | None]:
        specs: dict[str, tuple[CredentialSpec, ...]] = {}
        for name, m in backends_of(root):
            specs[name] = parse_credentials(m, name)
            m.close()
        return specs, parse_assertion_signing(root.mapping("assertions"))

    return parse_yaml(tmp_path, text, read)


def route(backend: str = "app", **kw: object) -> Route:
    return Route(name="r1", backend=backend, source="policy.yaml:1", **kw)  # type: ignore[arg-type]


def caller(sub: str = "alice", token: str | None = None, **kw: object) -> Identity:
    return Identity(
        subject=sub,
        issuer="https://idp.test",
        method="jwt",
        email=f"{sub}@example.com",
        groups=frozenset({"eng"}),
        token=token,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
async def oauth() -> AsyncIterator[OAuthServer]:
    server = await OAuthServer().start()
    server.add_client("gh-client", "s3cr3t:with%odd chars")
    yield server
    await server.stop()


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "client_secret"
    path.write_text("s3cr3t:with%odd chars\n", encoding="utf-8")
    return path


async def make_broker(
    specs: Mapping[str, tuple[CredentialSpec, ...]],
    signing: AssertionSigningConfig | None = None,
    public_url: str = "https://gatehouse.test",
    cache: CredentialCache | None = None,
) -> CredentialBroker:
    broker = CredentialBroker(specs, signing, public_url, cache=cache)
    await broker.start()
    return broker


async def refused_once_oversized(broker: CredentialBroker, peer: PeerServer, backend: str) -> str:
    """Fetch with ``peer``'s answers padded by 1000 bytes (accepted), then by 2 MiB: the
    refusal's detail. The padded answer stays valid, so only the size bound can refuse it."""
    try:
        peer.padding = 1000
        assert await broker.headers(backend, route(backend), None)
        peer.padding = 2 * 2**20  # streamed chunked, without Content-Length
        broker.invalidate(backend, None)
        with pytest.raises(UpstreamCredentialsUnavailable) as err:
            await broker.headers(backend, route(backend), None)
    finally:
        await broker.close()
    return err.value.detail


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return  # it answered
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer")


@contextmanager
def run_uvicorn(app: str, env: Mapping[str, str]) -> Iterator[str]:
    """Start ``app`` under real uvicorn in a child process on a socket bound to port 0."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    child_env = {
        **os.environ,
        **env,
        "PYTHONPATH": os.pathsep.join([str(EXAMPLES), str(REPO)]),
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            app,
            "--fd",
            str(sock.fileno()),
            "--log-level",
            "warning",
        ],
        env=child_env,
        pass_fds=[sock.fileno()],
        cwd=REPO,
    )
    sock.close()  # the child holds its own copy
    with _serving(proc, port) as url:
        yield url


@contextmanager
def run_function(source: Path, target: str, env: Mapping[str, str]) -> Iterator[str]:
    """Start a Cloud Function with the real ``functions-framework`` CLI.

    Its CLI takes a port, not a socket: a port chosen free can be taken by
    another process before the function binds it. So the function counts as
    started only once its own process tree listens on the port, and a start
    that lost the port is tried again on another.
    """
    for _ in range(5):
        port = free_port()
        proc = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "functions-framework"),
                f"--target={target}",
                f"--source={source}",
                "--host=127.0.0.1",
                f"--port={port}",
            ],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if _listens(proc, port):
            break
        proc.kill()
        proc.wait()
    else:
        raise RuntimeError("functions-framework never listened on a port of its own")
    with _serving(proc, port) as url:
        yield url


def _listens(proc: subprocess.Popen[bytes], port: int, timeout: float = 30.0) -> bool:
    """True once ``proc`` (or a child) listens on ``port``; False if it exits or another does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        found = listeners(port, proc.pid)
        if found.ours:
            return True
        if found.others:
            return False
        time.sleep(0.05)
    return False


@contextmanager
def _serving(proc: subprocess.Popen[bytes], port: int) -> Iterator[str]:
    """The server ``proc`` started on ``port``, once it answers; stopped afterwards."""
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_http(url + "/", proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
