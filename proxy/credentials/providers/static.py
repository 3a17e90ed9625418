"""A fixed header value from a file or an environment variable."""

from __future__ import annotations

import logging
import os
import time

from proxy.credentials.config import StaticSpec
from proxy.credentials.providers.base import HeaderProvider
from proxy.errors import UpstreamCredentialsUnavailable
from proxy.model import Identity, RouteView

log = logging.getLogger(__name__)

# Mounted secrets are swapped atomically (symlink flips); checking the mtime at
# most this often keeps a stat() off every request without delaying rotation much.
RECHECK_SECONDS = 1.0


class StaticProvider(HeaderProvider):
    type = "static"

    def __init__(self, spec: StaticSpec, *, recheck: float = RECHECK_SECONDS) -> None:
        self.spec = spec
        self._recheck = recheck
        self._secret: str | None = None
        self._mtime: float | None = None
        self._checked = 0.0

    def _load(self) -> None:
        ref = self.spec.value
        if ref.kind == "env":
            if self._secret is None:
                value = os.environ.get(ref.name)
                if value:
                    self._secret = value
            return
        now = time.monotonic()
        if self._secret is not None and now - self._checked < self._recheck:
            return
        self._checked = now
        try:
            mtime = os.stat(ref.name).st_mtime_ns / 1e9
            if mtime == self._mtime and self._secret is not None:
                return
            value = ref.read()
        except OSError as exc:
            # Keep the last good value through a rotation that briefly removes the file.
            log.warning(
                "static credential file unreadable",
                extra={"backend": self.spec.backend, "error": exc.strerror},
            )
            return
        if any(c in value for c in "\r\n\x00"):
            # A value that would split or corrupt the header is never sent.
            log.warning(
                "static credential value has control characters",
                extra={"backend": self.spec.backend},
            )
            return
        if value:
            self._secret, self._mtime = value, mtime

    def headers(self, route: RouteView, identity: Identity | None) -> list[tuple[str, str]]:
        self._load()
        if self._secret is None:
            raise UpstreamCredentialsUnavailable(
                detail=f"static credential for backend {self.spec.backend} is not available "
                f"({self.spec.value.describe()})"
            )
        return [(self.spec.header, self.spec.prefix + self._secret)]
