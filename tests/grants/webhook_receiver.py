"""A local webhook receiver for tests: records every delivery, answers as told."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

SECRET = b"webhook-test-secret"


@dataclass
class Delivery:
    body: bytes
    headers: dict[str, str]

    @property
    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = orjson.loads(self.body)
        return data

    def signature_valid(self, secret: bytes = SECRET) -> bool:
        expected = "sha256=" + hmac.new(secret, self.body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, self.headers.get("X-Gatehouse-Signature", ""))


@dataclass
class Receiver:
    url: str
    deliveries: list[Delivery] = field(default_factory=list)
    # Statuses to answer with, in order; 200 once they run out.
    statuses: list[int] = field(default_factory=list)
    hang: float = 0.0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Delivery]:
        async with asyncio.timeout(timeout):
            while len([d for d in self.deliveries if d.headers.get("X-Ok") == "1"]) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return [d for d in self.deliveries if d.headers.get("X-Ok") == "1"]


@asynccontextmanager
async def webhook_receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver(url="")

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        if receiver.hang:
            await asyncio.sleep(receiver.hang)
        status = receiver.statuses.pop(0) if receiver.statuses else 200
        headers = dict(request.headers)
        if status == 200:
            headers["X-Ok"] = "1"
        receiver.deliveries.append(Delivery(body, headers))
        receiver.arrived.set()
        return web.Response(status=status, text="ok")

    app = web.Application()
    app.router.add_post("/hook/{secret}", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    await web.SockSite(runner, sock).start()
    receiver.url = f"http://127.0.0.1:{port}/hook/T000-B000-XXXX"
    try:
        yield receiver
    finally:
        await runner.cleanup()
