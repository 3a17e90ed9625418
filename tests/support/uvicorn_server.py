"""Run a real ASGI app under uvicorn on a real socket, in a background thread."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn


@contextmanager
def serve_asgi(app: Any, host: str = "127.0.0.1") -> Iterator[int]:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted sockets inherit this; without it uvicorn's two writes per
    # response (head, body) meet delayed ACKs and every keep-alive request
    # takes ~40 ms.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, 0))
    port = int(sock.getsockname()[1])
    config = uvicorn.Config(app, log_level="warning", lifespan="off", ws="websockets-sansio")
    server = uvicorn.Server(config)
    started = threading.Event()

    def run() -> None:
        loop = asyncio.new_event_loop()

        async def main() -> None:
            task = asyncio.ensure_future(server.serve(sockets=[sock]))
            while not server.started:
                await asyncio.sleep(0.01)
            started.set()
            await task

        loop.run_until_complete(main())
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    if not started.wait(20):
        raise TimeoutError("uvicorn did not start")
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
