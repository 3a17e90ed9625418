"""Grants in a local JSON file, for a gatehouse without shared state.

Every change is a read-modify-write under an exclusive ``flock`` on a lock
file beside it, written to a temporary file, flushed to disk and renamed over
the old one: worker processes of one gatehouse never lose each other's
changes, a crash never leaves half a file, and a restart finds every grant.
Readers notice a new file by its inode and reload it; the decision reads an
index of approved grants rebuilt at each load.

A file that cannot be read or parsed is never overwritten: changes answer 503
``state_unavailable`` (and decisions keep the last good index) until it is
repaired, so a bad edit cannot silently drop everyone's grants.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import orjson

from proxy.errors import StateUnavailable
from proxy.grants.model import Grant, grant_dict, grant_from
from proxy.grants.store import Ledger, Limits
from proxy.model import HeldGrant

log = logging.getLogger("gatehouse.grants")

T = TypeVar("T")
FORMAT = 1
# A grants file past this is not ours (bounded by max_open and retention long before).
MAX_FILE_BYTES = 64 * 2**20

Stamp = tuple[int, int, int]  # inode, size, mtime_ns


class FileGrantStore:
    def __init__(self, path: Path, limits: Limits, *, clock: Callable[[], float] = time.time):
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")
        self._clock = clock
        self._ledger = Ledger(limits)
        self._index: dict[tuple[str, str, str], tuple[HeldGrant, ...]] = {}
        self._stamp: Stamp | None = None
        self._broken = False
        # One read-modify-write at a time in this process (flock orders processes).
        self._io = asyncio.Lock()

    # -- file I/O (worker threads) ---------------------------------------------------
    def _stat(self) -> Stamp | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _refresh(self) -> None:
        """Reload the file if it changed since it was last read."""
        stamp = self._stat()
        if stamp == self._stamp and not self._broken:
            return
        if stamp is None:
            grants: list[Grant] = []
        else:
            loaded = self._read()
            if loaded is None:
                if not self._broken:
                    log.error(
                        "grants file %s is unreadable: keeping the last good grants, "
                        "refusing changes until it is repaired",
                        self.path,
                    )
                self._broken = True
                return
            grants = loaded
        self._ledger.grants = {g.id: g for g in grants}
        self._index = self._ledger.held_index()
        self._stamp = stamp
        self._broken = False

    def _read(self) -> list[Grant] | None:
        try:
            with open(self.path, "rb") as handle:
                data = handle.read(MAX_FILE_BYTES + 1)
            if len(data) > MAX_FILE_BYTES:
                return None
            doc = orjson.loads(data)
        except (OSError, orjson.JSONDecodeError):
            return None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            return None
        items = doc.get("grants")
        if not isinstance(items, list):
            return None
        grants = [grant_from(item) for item in items if isinstance(item, dict)]
        if any(g is None for g in grants):
            return None
        return [g for g in grants if g is not None]

    def _write(self) -> None:
        body = orjson.dumps(
            {"format": FORMAT, "grants": [grant_dict(g) for g in self._ledger.grants.values()]}
        )
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a crash
        finally:
            os.close(directory)
        self._stamp = self._stat()
        self._index = self._ledger.held_index()

    def _change(self, change: Callable[[Ledger], T]) -> T:
        with self._exclusive():
            self._refresh()
            if self._broken:
                raise StateUnavailable(detail="grants file unreadable")
            before = dict(self._ledger.grants)
            try:
                result = change(self._ledger)
                self._ledger.prune(self._clock())
                if self._ledger.grants != before:
                    self._write()
            except BaseException:
                self._ledger.grants = before  # nothing half-applied stays in memory
                raise
            return result

    def _read_only(self, read: Callable[[Ledger], T]) -> T:
        self._refresh()
        return read(self._ledger)

    async def _run(self, fn: Callable[[], T]) -> T:
        async with self._io:
            try:
                return await asyncio.to_thread(fn)
            except OSError as exc:
                raise StateUnavailable(detail=f"grants file: {exc.strerror}") from None

    # -- the store contract ------------------------------------------------------------
    async def start(self) -> None:
        await self._run(self._refresh)

    async def add(self, grant: Grant, now: float) -> None:
        await self._run(lambda: self._change(lambda ledger: ledger.add(grant, now)))

    async def get(self, grant_id: str) -> Grant | None:
        return await self._run(lambda: self._read_only(lambda ledger: ledger.grants.get(grant_id)))

    async def replace(self, old: Grant, new: Grant) -> Grant | None:
        return await self._run(lambda: self._change(lambda ledger: ledger.replace(old, new)))

    async def of_caller(self, issuer: str, subject: str, limit: int) -> list[Grant]:
        return await self._run(
            lambda: self._read_only(lambda ledger: ledger.of_caller(issuer, subject, limit))
        )

    async def open_grants(self) -> list[Grant]:
        return await self._run(lambda: self._read_only(Ledger.open_grants))

    async def due(self, now: float) -> list[Grant]:
        return await self._run(lambda: self._read_only(lambda ledger: ledger.due(now)))

    async def counts(self) -> tuple[int, int]:
        return await self._run(lambda: self._read_only(Ledger.counts))

    async def held(self, issuer: str, subject: str, route: str) -> tuple[HeldGrant, ...]:
        # One stat on the event loop; the file is read (in a thread) only when it changed.
        if self._stat() != self._stamp:
            await self._run(self._refresh)
        return self._index.get((issuer, subject, route), ())

    async def close(self) -> None:
        return None
