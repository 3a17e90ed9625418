"""Sockets and readiness for tests: ports chosen at run time, never fixed."""

from __future__ import annotations

import os
import random
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A free port for a server a test starts later, chosen at run time.

    Not from the kernel's ephemeral range: a port released there can be taken
    by any outgoing connection before the server binds it (seen under the
    1,000-request tests), while ports below it are only ever bound on purpose.
    """
    low, _ = _ephemeral_range()
    floor = max(1024, low - 12000)
    for _ in range(200):
        port = random.randrange(floor, low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # everything below was taken: fall back to the kernel
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def refused_port() -> Iterator[int]:
    """A port where connections are refused for as long as the block runs.

    A port merely chosen free (and left so) is free for anyone: under
    parallel suites another server may start listening there, and a "down"
    upstream starts answering. This one stays bound, without listening and
    without SO_REUSEADDR, so nothing else can bind it and connections to it
    are refused.
    """
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield int(held.getsockname()[1])


def _listening_sockets(port: int) -> set[int]:
    """Inodes of the TCP sockets listening on ``port``, on any address (Linux /proc)."""
    inodes: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(int(inode))
    return inodes


def _process_tree(pid: int) -> set[int]:
    """``pid`` and its descendants (the workers and admin process of ``--workers N``)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # gone meanwhile
        parent = int(stat.rsplit(")", 1)[1].split()[1])  # the name may hold spaces
        children.setdefault(parent, []).append(int(entry))
    tree, todo = set(), [pid]
    while todo:
        current = todo.pop()
        tree.add(current)
        todo.extend(children.get(current, ()))
    return tree


def _sockets_of(pids: set[int]) -> set[int]:
    inodes: set[int] = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[len("socket:[") : -1]))
    return inodes


@dataclass(frozen=True, slots=True)
class Listeners:
    ours: bool  # the process (or a descendant) listens on the port
    others: bool  # some other process does too


def listeners(port: int, pid: int) -> Listeners:
    """Who listens on ``port``: process ``pid`` and its descendants, or someone else.

    A successful connect only says that *something* listens: under parallel
    suites that can be another process that took a port chosen free, while
    the server it was chosen for failed to bind it.
    """
    listening = _listening_sockets(port)
    if not listening:
        return Listeners(ours=False, others=False)
    ours = listening & _sockets_of({pid})
    if listening - ours:  # a worker's or the admin process's, or someone else's
        ours = listening & _sockets_of(_process_tree(pid))
    return Listeners(ours=bool(ours), others=bool(listening - ours))


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


def raw_request(port: int, data: bytes, *, timeout: float = 5.0, host: str = "127.0.0.1") -> bytes:
    """Send raw bytes and read until the server closes (or the timeout)."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except TimeoutError:
            pass
        return b"".join(chunks)
