"""The current policy set, replaced only by a complete, valid new one.

Requests read :attr:`PolicyStore.current` once and use that object for both
matching and deciding, so each request is decided by exactly one policy
version; a reload builds a new set off to the side and swaps the attribute
(one reference assignment). Any problem keeps the last good set:

* a file that does not parse or validate;
* a file that is empty, unreadable or a broken symlink;
* a file that disappeared. Removing a policy file can widen access (a
  request that matched the removed route may now fall through to a broader
  one), so deletions are only accepted when the operator asks explicitly:
  ``reload(allow_removal=True)`` (SIGHUP) or a restart.

:meth:`watch` polls the directory listing and each file's resolved target,
inode, mtime and size. That sees in-place edits, renames, deletions and
Kubernetes ConfigMap updates (an atomic swap of the ``..data`` symlink)
without a file-notification dependency.

It lives beside the policy package, not in it: :mod:`proxy.policy` is pure
(compiling and deciding over plain data), while the store polls files, takes
a lock, logs and sets the reload metrics.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Collection, Sequence
from pathlib import Path

from proxy.config.reader import ConfigError
from proxy.observability.metrics import CONFIG_LAST_RELOAD_SUCCESS, CONFIG_RELOADS, POLICY_VERSION
from proxy.policy.check import Finding, check_policies
from proxy.policy.evaluate import PolicySet
from proxy.policy.load import load_policies

log = logging.getLogger("gatehouse.policy")

Signature = tuple[tuple[str, str, int, int, int], ...]


def snapshot(paths: Sequence[Path]) -> Signature:
    """What the watcher compares: every candidate file with its resolved identity."""
    out: list[tuple[str, str, int, int, int]] = []
    for path in paths:
        try:
            entries = (
                sorted(
                    e.path
                    for e in os.scandir(path)
                    if not e.name.startswith(".") and e.name.endswith((".yaml", ".yml"))
                )
                if path.is_dir()
                else [str(path)]
            )
        except OSError:
            out.append((str(path), "unlistable", 0, 0, 0))
            continue
        for entry in entries:
            try:
                st = os.stat(entry)
                out.append((entry, os.path.realpath(entry), st.st_ino, st.st_mtime_ns, st.st_size))
            except OSError:
                out.append((entry, "missing", 0, 0, 0))
    return tuple(out)


class PolicyStore:
    """Holds the live :class:`PolicySet`; construct with a valid policy or fail to start."""

    def __init__(
        self,
        paths: Sequence[Path] | Path,
        backends: Collection[str] | None = None,
        *,
        websocket: bool = True,
    ) -> None:
        self.paths: tuple[Path, ...] = (paths,) if isinstance(paths, Path) else tuple(paths)
        self.backends = backends
        self.websocket = websocket  # False on a decision listener: websocket routes refused
        self._lock = threading.Lock()
        self._signature = snapshot(self.paths)
        # Raises ConfigError: at start-up there is no last good set to fall back to.
        self.current: PolicySet = load_policies(self.paths, backends, websocket=websocket)
        self.warnings: list[Finding] = check_policies(self.current)
        CONFIG_LAST_RELOAD_SUCCESS.set_to_current_time()
        POLICY_VERSION.labels(self.current.version).set(1)

    def reload(self, *, allow_removal: bool = False) -> bool:
        """Load, compile and check everything, then swap; False keeps the last good set."""
        with self._lock:
            signature = snapshot(self.paths)
            old = self.current
            removed: list[str] = []
            try:
                new = load_policies(self.paths, self.backends, websocket=self.websocket)
                removed = sorted(set(old.files) - set(new.files))
                if removed and not allow_removal:
                    raise ConfigError([])  # reported below with the file names
            except ConfigError as exc:
                self._signature = signature
                CONFIG_RELOADS.labels(result="error").inc()
                detail = str(exc) if exc.problems else _removed_message(removed)
                # One record, one line: the problems joined in the message, and as a
                # list for JSON logs.
                problems = [str(p) for p in exc.problems] or [detail]
                log.error(
                    "policy reload failed; keeping policy version %s: %s",
                    old.version,
                    "; ".join(problems),
                    extra={"policy_version": old.version, "problems": problems},
                )
                return False
            findings = check_policies(new)
            for finding in findings:
                log.warning("policy %s", finding)
            self.current = new
            self.warnings = findings
            self._signature = signature
            CONFIG_RELOADS.labels(result="ok").inc()
            CONFIG_LAST_RELOAD_SUCCESS.set_to_current_time()
            if old.version != new.version:
                POLICY_VERSION.labels(old.version).set(0)
            POLICY_VERSION.labels(new.version).set(1)
            log.info(
                "policy version %s loaded (%d routes, was %s)",
                new.version,
                len(new.routes),
                old.version,
            )
            return True

    def changed(self) -> bool:
        """Whether the files differ from what the last reload attempt saw."""
        return snapshot(self.paths) != self._signature

    async def watch(self, interval: float = 1.0) -> None:
        """Poll for changes and reload; runs until cancelled. Parsing runs off the loop."""
        while True:
            await asyncio.sleep(interval)
            try:
                if await asyncio.to_thread(self.changed):
                    await asyncio.to_thread(self.reload)
            except Exception:  # a watcher that dies silently would freeze policy forever
                log.exception("policy watcher iteration failed")


def _removed_message(removed: list[str]) -> str:
    return (
        "policy files disappeared: "
        + ", ".join(removed)
        + " (removing a file can widen access; reload with SIGHUP or restart to accept it)"
    )
