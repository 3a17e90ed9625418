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

Nothing is dropped silently. When the file cannot be opened or written (a
rotation that left the wrong owner, EMFILE, a full disk, a directory or a
symlink at the path), records stay in memory and the thread retries the open
every second; meanwhile ``writable`` is false, so /readyz fails and, with
``audit.required``, requests are refused. The memory is bounded: at most
``max_buffer`` bytes of encoded records wait for the disk (queued or held).
Past that bound new records are dropped, counted in
``gatehouse_audit_dropped_records_total`` and reported in one log line per
second, never one per record.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import queue
import select
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import IO, Literal

import orjson
from aiohttp import web

from proxy.errors import Reason
from proxy.observability import metrics
from proxy.observability.logs import rfc3339

log = logging.getLogger("gatehouse.audit")

FIELDS = (
    "ts",
    "ts_epoch",
    "request_id",
    "trace_id",
    "client_ip",
    "user_agent",
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
# Keyword-only, so ``ts`` (filled in when the record is written) comes first.
@dataclass(kw_only=True)
class AuditRecord:
    """Filled in by the stages as the request progresses; written once at the end.

    ``ts_epoch`` is when the request arrived (Unix seconds); ``ts`` is the same
    instant in RFC 3339, set when the record is encoded.
    """

    ts: str = ""
    ts_epoch: float
    request_id: str
    trace_id: str | None = None
    client_ip: str | None = None
    user_agent: str | None = None  # bounded by the gateway
    method: str | None = None
    host: str | None = None
    path: str | None = None
    route: str | None = None
    backend: str | None = None
    subject: str | None = None
    issuer: str | None = None
    auth: str | None = None
    decision: str = "deny"
    reason: str = Reason.INTERNAL_ERROR
    status: int = 0
    upstream_status: int | None = None
    attempts: int = 0  # times the request was sent upstream, the first try included
    duration_ms: float = 0.0
    bytes_in: int = 0
    bytes_out: int = 0
    policy_version: str | None = None
    # Reasons of ``mode: audit`` rules that fired: what they would have decided.
    dry_run: tuple[str, ...] = ()
    # "decision" for a data plane's question (listen.mode: decision): method, host
    # and path are then the original request's, and nothing was sent upstream.
    mode: str = "proxy"
    # The just-in-time grant a request was admitted under, or a grant event is about.
    grant_id: str | None = None


@dataclass(frozen=True, slots=True)
class EndpointOutcome:
    """What an endpoint of the proxy's own tells its request's audit record: who
    logged in or out, or why the login failed; who asked for, decided or revoked
    access, and which grant."""

    reason: str
    decision: Literal["allow", "deny"] = "allow"
    subject: str | None = None
    issuer: str | None = None
    auth: str | None = None
    grant_id: str | None = None

    def apply(self, record: AuditRecord) -> None:
        record.reason = self.reason
        record.decision = self.decision
        record.subject = self.subject
        record.issuer = self.issuer
        record.auth = self.auth
        record.grant_id = self.grant_id


# Where one of the proxy's own endpoints (login callback, logout) leaves its
# EndpointOutcome on the response it returns, for the gateway's audit record.
ENDPOINT_OUTCOME = web.ResponseKey("gatehouse.outcome", EndpointOutcome)


_REOPEN = object()
_FLUSH_BATCH = 512
_HAND_OFF_AFTER = 0.005  # seconds a record may wait on the loop before the thread gets it
_JOIN_BATCHES = 64  # encoded batches the thread joins into one write when it lags behind
RETRY_EVERY = 1.0  # seconds between attempts to open the file again
DEFAULT_MAX_BUFFER = 64 * 2**20  # encoded bytes waiting for the disk, per process

# An encoded batch and the number of records in it (each record ends with b"\n").
_Batch = tuple[bytes, int]


@dataclass(frozen=True, slots=True)
class _Stop:
    """Close: keep retrying a broken file until ``deadline`` (monotonic), then give up."""

    deadline: float


class AuditWriter:
    """Writes records as JSON lines to stdout or a file from a daemon thread.

    ``writable`` is read by the loop (readiness, ``audit.required``) and set
    by the thread: false from the first failed open or write until the file is
    open again and every held record is written.
    """

    def __init__(self, output: str, *, max_buffer: int = DEFAULT_MAX_BUFFER) -> None:
        self._output = output
        self._max_buffer = max_buffer
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._stream: IO[bytes] | None = None
        self._lock = threading.Lock()
        self._held = 0  # bytes handed to the thread and not yet written (guarded by _lock)
        self._unreported = 0  # records dropped since the last log line (guarded by _lock)
        self.writable = True
        self._broken_since = 0.0
        metrics.AUDIT_WRITABLE.set(1)
        try:
            self._open()
        except OSError as exc:
            self._broken("cannot open", exc)
        self._thread = threading.Thread(target=self._run, name="gatehouse-audit", daemon=True)
        self._thread.start()
        self._closed = False
        self._pending: list[AuditRecord] = []
        self._timer: asyncio.TimerHandle | None = None

    def _open(self) -> None:
        if self._output == "stdout":
            self._stream = sys.stdout.buffer
        else:
            # O_NOFOLLOW: a symlink planted at the path must not redirect (or
            # truncate) another file with the proxy's privileges.
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(self._output, flags, 0o640)
            self._stream = os.fdopen(fd, "ab", buffering=0)

    # -- the event loop's side ------------------------------------------------
    def rejected(self, client_ip: str | None, status: int, reason: str, request_id: str) -> None:
        """The one record of a request the listener refused before the gateway saw it
        (:class:`proxy.http.protocol.RejectionLog`), counted like any request."""
        record = AuditRecord(
            ts_epoch=time.time(),
            request_id=request_id,
            client_ip=client_ip,
            decision="deny",
            reason=reason,
            status=status,
        )
        metrics.REQUESTS.labels("none", f"{status // 100}xx").inc()
        self.write(record)

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
            data = _encode_batch(batch)
            if self._admit(len(data), len(batch)):
                self._queue.put((data, len(batch)))

    def _admit(self, size: int, records: int) -> bool:
        """Reserve room for a batch within ``max_buffer``, or count its records as dropped."""
        with self._lock:
            if self._held + size <= self._max_buffer:
                self._held += size
                return True
            self._unreported += records
        metrics.AUDIT_DROPPED.inc(records)
        return False

    def reopen(self) -> None:
        self._hand_off()
        self._queue.put(_REOPEN)

    def close(self, timeout: float = 10.0) -> None:
        """Write everything held; a broken file is retried until shortly before ``timeout``."""
        if self._closed:
            return
        self._closed = True
        self._hand_off()
        self._queue.put(_Stop(time.monotonic() + max(0.0, timeout - RETRY_EVERY)))
        self._thread.join(timeout)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything written so far is on disk (tests, shutdown); False on timeout."""
        self._hand_off()
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    # -- the writer thread -----------------------------------------------------
    def _run(self) -> None:
        backlog: deque[_Batch] = deque()
        flushes: list[threading.Event] = []
        retry_at = 0.0
        stop: _Stop | None = None
        while True:
            wait = RETRY_EVERY if self._stream is not None else retry_at - time.monotonic()
            control = self._gather(backlog, max(0.0, wait))
            if control is _REOPEN:
                self._close_stream()
                retry_at = 0.0
            elif isinstance(control, threading.Event):
                flushes.append(control)
            elif isinstance(control, _Stop):
                stop = control
            if self._stream is None and time.monotonic() >= retry_at:
                retry_at = time.monotonic() + RETRY_EVERY
                self._try_open()
            if self._stream is not None:
                self._write_backlog(backlog)
            if not backlog:
                for done in flushes:
                    done.set()
                flushes.clear()
            self._report_drops()
            if stop is not None and (not backlog or time.monotonic() >= stop.deadline):
                self._give_up(backlog)
                self._close_stream()
                for done in flushes:
                    done.set()
                return

    def _gather(self, backlog: deque[_Batch], timeout: float) -> object:
        """Move queued batches to ``backlog``; return the first control item met, if any."""
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        taken = 0
        while isinstance(item, tuple):
            backlog.append(item)
            taken += 1
            if taken >= _JOIN_BATCHES:
                return None
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return None
        return item

    def _try_open(self) -> None:
        try:
            self._open()
        except OSError as exc:
            self._broken("cannot open", exc)

    def _write_backlog(self, backlog: deque[_Batch]) -> None:
        if not backlog:
            self._recovered()
            return
        data = b"".join(chunk for chunk, _ in backlog)
        backlog.clear()
        written, error = self._write_all(data)
        with self._lock:
            self._held -= written
        if error is None:
            self._recovered()
            return
        # The unwritten tail waits for the next open; a record cut in half is
        # completed then. Records not yet whole on disk = newlines not written.
        rest = data[written:]
        backlog.append((rest, rest.count(b"\n")))
        self._close_stream()
        self._broken("write failed on", error)

    def _write_all(self, data: bytes) -> tuple[int, OSError | None]:
        """Bytes written, and the error that stopped the write.

        Regular files may write short; a non-blocking stdout pipe (shared with a
        log collector that set O_NONBLOCK) may be full for a moment: both are
        waited out, and only an output that makes no progress for
        ``RETRY_EVERY`` counts as broken.
        """
        stream = self._stream
        assert stream is not None
        view = memoryview(data)
        done = 0
        waited = False  # a wait that did not lead to progress means the output is stuck
        try:
            while done < len(data):
                try:
                    written = stream.write(view[done:])
                except BlockingIOError as exc:
                    written = exc.characters_written
                if written:
                    done += written
                    waited = False
                elif waited or not _writable_soon(stream):
                    return done, BlockingIOError(errno.EAGAIN, "output full")
                else:
                    waited = True
            while True:
                try:
                    stream.flush()
                    return done, None
                except BlockingIOError:
                    if not _writable_soon(stream):
                        return done, BlockingIOError(errno.EAGAIN, "output full")
        except OSError as exc:
            return done, exc

    def _broken(self, what: str, exc: OSError) -> None:
        if self.writable:
            self.writable = False
            self._broken_since = time.monotonic()
            metrics.AUDIT_WRITABLE.set(0)
            log.error(
                "audit: %s %s: %s; holding records (up to audit.max_buffer) "
                "and retrying every %.0fs",
                what,
                self._output,
                exc.strerror or exc,
                RETRY_EVERY,
            )

    def _recovered(self) -> None:
        if not self.writable:
            self.writable = True
            metrics.AUDIT_WRITABLE.set(1)
            log.warning(
                "audit: writing to %s again after %.1fs; every held record is written",
                self._output,
                time.monotonic() - self._broken_since,
            )

    def _report_drops(self) -> None:
        with self._lock:
            dropped, self._unreported = self._unreported, 0
            held = self._held
        if dropped:
            log.error(
                "audit: %d records dropped: %d bytes already wait for %s (audit.max_buffer %d)",
                dropped,
                held,
                self._output,
                self._max_buffer,
            )

    def _give_up(self, backlog: deque[_Batch]) -> None:
        records = sum(count for _, count in backlog)
        backlog.clear()
        if records:
            metrics.AUDIT_DROPPED.inc(records)
            log.error(
                "audit: %d records could not be written to %s before exit", records, self._output
            )

    def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None and stream is not sys.stdout.buffer:
            with contextlib.suppress(OSError):
                stream.close()
        elif stream is not None:
            with contextlib.suppress(OSError):
                stream.flush()


def _writable_soon(stream: IO[bytes]) -> bool:
    """Whether ``stream`` can take more bytes within ``RETRY_EVERY`` seconds."""
    _, ready, _ = select.select([], [stream.fileno()], [], RETRY_EVERY)
    return bool(ready)


def _encode_batch(records: list[AuditRecord]) -> bytes:
    # orjson serialises dataclasses natively, in field order: no dict of our own.
    dumps, newline = orjson.dumps, orjson.OPT_APPEND_NEWLINE
    out = []
    for record in records:
        record.ts = rfc3339(record.ts_epoch)
        record.duration_ms = round(record.duration_ms, 3)
        out.append(dumps(record, option=newline))
    return b"".join(out)
