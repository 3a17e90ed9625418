"""Child processes for the benchmark: CPU pinning, readiness, and guaranteed cleanup.

Every process the harness starts is registered with a :class:`ProcessGroup`;
leaving the ``with`` block (normally, on error, on Ctrl-C or SIGTERM) kills the
whole process group of each child, so nginx workers and forked proxy workers go
too. Children also get ``PR_SET_PDEATHSIG`` so a SIGKILLed harness leaves
nothing behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType, TracebackType

import psutil

_PR_SET_PDEATHSIG = 1


def available_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def cpu_layout() -> tuple[set[int] | None, set[int] | None]:
    """(proxy CPUs, load generator + upstream CPUs), or (None, None) with one core."""
    cpus = available_cpus()
    if len(cpus) < 2:
        return None, None
    return {cpus[0]}, {cpus[1]}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raise_nofile(wanted: int) -> int:
    """Raise RLIMIT_NOFILE (children inherit it) towards ``wanted``; returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    if hard != resource.RLIM_INFINITY and hard < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _prctl() -> Callable[..., int] | None:
    # Resolved in the parent: dlopen between fork and exec can deadlock if another
    # thread held the loader lock at fork time (pytest runs server threads).
    try:
        fn: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return fn


def _child_setup(cpus: set[int] | None) -> Callable[[], None]:
    prctl = _prctl()

    def setup() -> None:
        # Runs in the child between fork and exec: affinity before exec means every
        # thread and forked worker of the child inherits it.
        if cpus:
            os.sched_setaffinity(0, cpus)
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

    return setup


class ProcessGroup:
    """Owns every child process; ``close()`` leaves none running."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._old_term: Callable[[int, FrameType | None], object] | int | None = None

    def __enter__(self) -> ProcessGroup:
        self._old_term = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, _raise_exit)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
        if self._old_term is not None:
            signal.signal(signal.SIGTERM, self._old_term)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cpus: set[int] | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        capture: bool = False,
        stdin: bool = False,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` pinned to ``cpus``; its stderr goes to ``<log_dir>/<name>.log``."""
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the child
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture else log,
            stderr=log,
            env=env,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_child_setup(cpus),  # the harness is single-threaded
        )
        log.close()
        self._procs.append((name, proc))
        return proc

    def log_tail(self, name: str, lines: int = 15) -> str:
        path = self.log_dir / f"{name}.log"
        try:
            text = path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
        _kill_group(proc, timeout)
        self._procs = [(n, p) for n, p in self._procs if p is not proc]

    def close(self) -> None:
        # SIGTERM everyone first, then wait: a graceful proxy gets time to flush.
        procs = [p for _, p in self._procs]
        self._procs.clear()
        for p in procs:
            _signal_group(p, signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(max(0.0, deadline - time.monotonic()))
        for p in procs:
            _signal_group(p, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(2.0)


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    # The child leads its own session, so its pgid is its pid; kill the group even
    # if the leader already exited (nginx workers may outlive a dead master).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _kill_group(proc: subprocess.Popen[bytes], timeout: float) -> None:
    _signal_group(proc, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout)
    _signal_group(proc, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(2.0)


def wait_http_ok(
    host: str,
    port: int,
    path: str,
    *,
    timeout: float,
    proc: subprocess.Popen[bytes] | None = None,
) -> bool:
    """Poll ``GET path`` until it answers 200; False on timeout or if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode()
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=1.0) as s:
                s.sendall(request)
                head = s.recv(64)
                if head.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
                    return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def wait_tcp(
    host: str, port: int, *, timeout: float, proc: subprocess.Popen[bytes] | None = None
) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def python() -> str:
    return sys.executable


@contextlib.contextmanager
def pinned_self(cpus: set[int] | None) -> Iterator[None]:
    """Temporarily pin the harness itself (used while it samples RSS)."""
    if not cpus:
        yield
        return
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, old)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its descendants (0.0 once it is gone)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total
