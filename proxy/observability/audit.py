"""The audit log: exactly one JSON line per request that reached the proxy.

Records are collected on the event loop and, every few milliseconds (or
sooner when a batch fills), serialised in one go and handed to a writer
thread as bytes, so the loop never blocks on disk and the thread is woken
once per batch. Serialising where the records are (rather than in the
thread) keeps the thread's GIL time to a few instructions around ``write``:
a thread holding the GIL for a whole batch costs the loop more than the
encoding itself.
``reopen()`` (SIGHUP) reopens the file for logrotate; ``close()`` drains
everything before returning (SIGTERM), so nothing is lost on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import sys
import threading
from dataclasses import dataclass
from typing import IO

import orjson

log = logging.getLogger("gatehouse.audit")

FIELDS = (
    "ts",
    "request_id",
    "trace_id",
    "client_ip",
    "method",
    "host",
    "path",
    "route",
    "backend",
    "subject",
    "issuer",
    "auth",
    "decision",
    "reason",
    "status",
    "upstream_status",
    "attempts",
    "duration_ms",
    "bytes_in",
    "bytes_out",
)


# Not slotted on purpose: orjson serialises a dataclass from its ``__dict__``
# about twice as fast as from slots, and one record per request is serialised.
@dataclass
class AuditRecord:
    """Filled in by the stages as the request progresses; written once at the end."""

    ts: float
    request_id: str
    trace_id: str | None = None
    client_ip: str | None = None
    method: str | None = None
    host: str | None = None
    path: str | None = None
    route: str | None = None
    backend: str | None = None
    subject: str | None = None
    issuer: str | None = None
    auth: str | None = None
    decision: str = "deny"
    reason: str = "internal_error"
    status: int = 0
    upstream_status: int | None = None
    attempts: int = 0  # times the request was sent upstream, the first try included
    duration_ms: float = 0.0
    bytes_in: int = 0
    bytes_out: int = 0
    policy_version: str | None = None
    # Reasons of ``mode: audit`` rules that fired: what they would have decided.
    dry_run: tuple[str, ...] = ()


_STOP = object()
_REOPEN = object()
_FLUSH_BATCH = 512
_HAND_OFF_AFTER = 0.005  # seconds a record may wait on the loop before the thread gets it
_JOIN_BATCHES = 64  # encoded batches the thread joins into one write when it lags behind


class AuditWriter:
    """Writes records as JSON lines to stdout or a file from a daemon thread."""

    def __init__(self, output: str) -> None:
        self._output = output
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._stream: IO[bytes] | None = None
        self._open()
        self._thread = threading.Thread(target=self._run, name="gatehouse-audit", daemon=True)
        self._thread.start()
        self._closed = False
        self._pending: list[AuditRecord] = []
        self._timer: asyncio.TimerHandle | None = None

    def _open(self) -> None:
        if self._output == "stdout":
            self._stream = sys.stdout.buffer
        else:
            fd = os.open(self._output, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            self._stream = os.fdopen(fd, "ab", buffering=0)

    def write(self, record: AuditRecord) -> None:
        """Never blocks: the record joins the current batch for the writer thread."""
        pending = self._pending
        pending.append(record)
        if len(pending) >= _FLUSH_BATCH:
            self._hand_off()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # called outside the event loop: no batching
                self._hand_off()
                return
            self._timer = loop.call_later(_HAND_OFF_AFTER, self._hand_off)

    def _hand_off(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pending:
            batch, self._pending = self._pending, []
            self._queue.put(_encode_batch(batch))

    def reopen(self) -> None:
        self._hand_off()
        self._queue.put(_REOPEN)

    def close(self, timeout: float = 10.0) -> None:
        if self._closed:
            return
        self._closed = True
        self._hand_off()
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until everything written so far is on disk (tests, shutdown)."""
        self._hand_off()
        done = threading.Event()
        self._queue.put(done)
        done.wait(timeout)

    def _run(self) -> None:
        get = self._queue.get
        while True:
            item = get()
            batch: list[bytes] = []
            control: list[object] = []
            while True:
                if isinstance(item, bytes):
                    batch.append(item)
                else:
                    control.append(item)
                    break
                if len(batch) >= _JOIN_BATCHES:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._emit(b"".join(batch))
            for c in control:
                if c is _STOP:
                    self._close_stream()
                    return
                if c is _REOPEN:
                    self._close_stream()
                    try:
                        self._open()
                    except OSError as exc:
                        log.error("audit: cannot reopen %s: %s", self._output, exc.strerror)
                elif isinstance(c, threading.Event):
                    c.set()

    def _emit(self, data: bytes) -> None:
        stream = self._stream
        if stream is None:
            return
        try:
            stream.write(data)
            stream.flush()
        except OSError as exc:
            log.error("audit: write failed: %s", exc.strerror)

    def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None and stream is not sys.stdout.buffer:
            with contextlib.suppress(OSError):
                stream.close()
        elif stream is not None:
            with contextlib.suppress(OSError):
                stream.flush()


def _encode_batch(records: list[AuditRecord]) -> bytes:
    # orjson serialises dataclasses natively, in field order: no dict of our own.
    dumps, newline = orjson.dumps, orjson.OPT_APPEND_NEWLINE
    out = []
    for record in records:
        record.duration_ms = round(record.duration_ms, 3)
        out.append(dumps(record, option=newline))
    return b"".join(out)
