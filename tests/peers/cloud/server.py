"""A small aiohttp server on 127.0.0.1:<ephemeral> with switches tests flip."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Self

from aiohttp import web


class PeerServer:
    """Counts requests per endpoint, can be taken ``down`` (503) and slowed by ``delay``."""

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self.app = web.Application(middlewares=[self._switches])
        self.ssl_context = ssl_context
        # ``calls`` counts requests handled per endpoint name; ``attempts`` counts every
        # request per path, including those refused while ``down``.
        self.calls: Counter[str] = Counter()
        self.attempts: Counter[str] = Counter()
        self.down = False
        self.delay = 0.0
        # > 0: every answer grows by this many bytes of padding (a JSON member, or
        # whitespace after a text body) and is sent chunked, without Content-Length.
        self.padding = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    @web.middleware
    async def _switches(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        self.attempts[request.path] += 1
        if self.down:
            return web.json_response({"error": "temporarily_unavailable"}, status=503)
        if self.delay:
            await asyncio.sleep(self.delay)
        response = await handler(request)
        if self.padding and isinstance(response, web.Response) and response.body is not None:
            return await self._padded(request, response)
        return response

    async def _padded(self, request: web.Request, response: web.Response) -> web.StreamResponse:
        """The same answer, still valid, made ``padding`` bytes larger."""
        assert isinstance(response.body, bytes)
        body = response.body
        if response.content_type == "application/json":
            document = json.loads(body)
            document["padding"] = "x" * self.padding
            body = json.dumps(document).encode()
        else:
            body += b" " * self.padding  # a token in a text body is read stripped
        headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
        padded = web.StreamResponse(status=response.status, headers=headers)
        padded.enable_chunked_encoding()
        await padded.prepare(request)
        for start in range(0, len(body), 64 * 1024):
            await padded.write(body[start : start + 64 * 1024])
        await padded.write_eof()
        return padded

    def count(self, name: str) -> None:
        self.calls[name] += 1

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> Self:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
