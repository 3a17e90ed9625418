"""An ASGI app under real uvicorn in a child process on a fixed port, so it can really die.

Unlike :mod:`tests.support.uvicorn_server` (a thread in the test process),
``kill()`` here is a SIGKILL of a separate process: the kernel closes its
sockets mid-request, and ``start()`` brings it back on the same port, as a
crashed and restarted upstream would come back.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from tests.support.gatehouse import REPO
from tests.support.net import free_port, wait_for_port


class UvicornProcess:
    def __init__(self, app: str, env: Mapping[str, str], port: int | None = None) -> None:
        self.app = app
        self.env = dict(env)
        # Below the ephemeral range (see free_port): while the process is down,
        # no outgoing connection can take the port it comes back on.
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Spawn the process; it listens once uvicorn has imported the app."""
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                self.app,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            cwd=REPO,
            env={**os.environ, **self.env, "PYTHONPATH": str(REPO)},
            stdout=subprocess.DEVNULL,
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        wait_for_port(self.port, timeout=timeout)

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, in-flight requests die with their connections."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@contextmanager
def uvicorn_processes(
    app: str, envs: Sequence[Mapping[str, str]]
) -> Iterator[list[UvicornProcess]]:
    """Start one process per environment, all ready on return; all stopped afterwards."""
    processes = [UvicornProcess(app, env) for env in envs]
    try:
        for process in processes:
            process.start()
        for process in processes:
            process.wait_ready()
        yield processes
    finally:
        for process in processes:
            process.stop()
