"""The endpoints of one backend and which one the next request goes to."""

from __future__ import annotations

import itertools
from collections.abc import Sequence


class EndpointPool:
    """Round-robin over a backend's base URLs."""

    def __init__(self, urls: Sequence[str]) -> None:
        if not urls:
            raise ValueError("a backend needs at least one endpoint")
        self.urls = tuple(urls)
        self._cycle = itertools.cycle(self.urls)

    def pick(self) -> str:
        return next(self._cycle)
