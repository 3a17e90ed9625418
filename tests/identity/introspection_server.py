"""A local RFC 7662 introspection endpoint that records every call.

Answers come from ``answers`` by token (``{"active": false}`` otherwise), or
raw bytes from ``raw_answers``; ``delay`` holds each answer back (so
concurrent callers overlap), ``set_cookie`` sets a cookie on every answer and
``cookies_seen`` records the Cookie header of every call.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class IntrospectionServer:
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)
    raw_answers: dict[str, bytes] = field(default_factory=dict)
    status: int = 200
    delay: float = 0.0
    set_cookie: str | None = None
    calls: list[tuple[str, str]] = field(default_factory=list)  # (authorization, token)
    cookies_seen: list[str | None] = field(default_factory=list)
    url: str = ""

    @property
    def tokens(self) -> list[str]:
        return [token for _, token in self.calls]

    async def handle(self, request: web.Request) -> web.Response:
        form = await request.post()
        token = str(form.get("token", ""))
        self.calls.append((request.headers.get("Authorization", ""), token))
        self.cookies_seen.append(request.headers.get("Cookie"))
        if self.delay:
            await asyncio.sleep(self.delay)
        headers = {"Set-Cookie": self.set_cookie} if self.set_cookie else {}
        if self.status != 200:
            return web.json_response({"error": "server_error"}, status=self.status)
        if token in self.raw_answers:
            return web.Response(
                body=self.raw_answers[token], content_type="application/json", headers=headers
            )
        return web.json_response(self.answers.get(token, {"active": False}), headers=headers)


@asynccontextmanager
async def introspection_server() -> AsyncIterator[IntrospectionServer]:
    server = IntrospectionServer()
    app = web.Application()
    app.router.add_post("/introspect", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    server.url = f"http://127.0.0.1:{runner.addresses[0][1]}/introspect"
    try:
        yield server
    finally:
        await runner.cleanup()
