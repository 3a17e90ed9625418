"""The admin listener: /metrics, /healthz, /readyz on their own address.

Readiness is published per worker as a small JSON file in the run directory,
so the admin listener (in the single process, or the supervisor's admin
process with ``--workers N``) can answer for all workers without sharing
memory with them.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

import orjson
from aiohttp import web

from proxy.files import replace_file
from proxy.observability import metrics

log = logging.getLogger("gatehouse.admin")

ReadyCheck = Callable[[], dict[str, bool]]


class ReadinessBoard:
    """Per-worker readiness files: ``ready-<pid>.json`` holding named checks."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._last: bytes | None = None
        self._failing = False

    def publish(self, checks: dict[str, bool]) -> None:
        data = orjson.dumps(checks, option=orjson.OPT_SORT_KEYS)
        if data == self._last:
            return
        path = self.directory / f"ready-{os.getpid()}.json"
        # Atomic (a reader never sees half a file), never through a link planted at
        # the temporary name; only this process writes it, so a leftover is stale.
        try:
            replace_file(path, data, sync=False, take_over=True)
        except OSError as exc:
            if not self._failing:  # once, not on every tick it keeps failing
                log.warning("cannot publish readiness to %s: %s", path, exc.strerror)
            self._failing = True
            return  # tried again on the next tick
        self._last, self._failing = data, False

    def forget(self, pid: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.directory / f"ready-{pid}.json").unlink()

    def pids(self) -> list[int]:
        """The workers that have published and not been forgotten (live ones)."""
        out = []
        for path in self.directory.glob("ready-*.json"):
            pid = path.stem.removeprefix("ready-")
            if pid.isdigit():
                out.append(int(pid))
        return sorted(out)

    def collect(self, expected_workers: int) -> dict[str, bool]:
        checks: dict[str, bool] = {}
        found = 0
        for path in self.directory.glob("ready-*.json"):
            try:
                worker = orjson.loads(path.read_bytes())
            except (OSError, orjson.JSONDecodeError):
                continue
            found += 1
            for name, ok in worker.items():
                checks[name] = checks.get(name, True) and bool(ok)
        checks["workers"] = found >= expected_workers
        return checks


def admin_app(
    ready: ReadyCheck, worker_pids: Callable[[], list[int]] | None = None
) -> web.Application:
    """``worker_pids``: the live workers (``--workers N``), for their process metrics."""

    async def metrics_handler(_: web.Request) -> web.Response:
        body, content_type = metrics.render(worker_pids() if worker_pids is not None else ())
        response = web.Response(body=body)
        response.headers["Content-Type"] = content_type
        return response

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        checks = ready()
        ok = bool(checks) and all(checks.values())
        return web.json_response(
            {"status": "ready" if ok else "not_ready", "checks": checks}, status=200 if ok else 503
        )

    app = web.Application()
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
