"""One endpoint of a backend for the resilience tests, run as its own uvicorn process.

Every GET is answered after ``ENDPOINT_DELAY`` seconds (a real upstream's
work) with ``X-Endpoint: <ENDPOINT_NAME>``, so a test can tell which endpoint
answered each request it sent through the proxy.
"""

from __future__ import annotations

import asyncio
import os

from fastapi import FastAPI, Response

NAME = os.environ.get("ENDPOINT_NAME", "endpoint")
DELAY = float(os.environ.get("ENDPOINT_DELAY", "0.1"))

app = FastAPI()


@app.get("/{path:path}")
async def answer(path: str) -> Response:
    await asyncio.sleep(DELAY)
    return Response(b'{"ok":true}', media_type="application/json", headers={"X-Endpoint": NAME})
