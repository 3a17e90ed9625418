"""The FastAPI upstream the core tests forward to: it reports what it received."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, Response, StreamingResponse

app = FastAPI()


ECHO_METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"]


@app.api_route("/echo/{rest:path}", methods=ECHO_METHODS, include_in_schema=False)
@app.api_route("/echo", methods=ECHO_METHODS, include_in_schema=False)
async def echo(request: Request) -> JSONResponse:
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.stream():
        digest.update(chunk)
        size += len(chunk)
    return JSONResponse(
        {
            "method": request.method,
            "raw_path": request.scope["raw_path"].decode("latin-1"),
            "query": request.scope["query_string"].decode("latin-1"),
            "headers": [
                [k.decode("latin-1"), v.decode("latin-1")] for k, v in request.scope["headers"]
            ],
            "body_size": size,
            "body_sha256": digest.hexdigest(),
        },
        headers={"Connection": "X-Upstream-Private", "X-Upstream-Private": "secret-hop"},
    )


@app.get("/download/{size}")
async def download(size: int, chunked: bool = False) -> Response:
    block = b"x" * 65536

    async def body() -> AsyncIterator[bytes]:
        left = size
        while left > 0:
            n = min(left, len(block))
            yield block[:n]
            left -= n

    headers = {} if chunked else {"Content-Length": str(size)}
    return StreamingResponse(body(), media_type="application/octet-stream", headers=headers)


@app.get("/slow")
async def slow(seconds: float = 1.0) -> JSONResponse:
    await asyncio.sleep(seconds)
    return JSONResponse({"slept": seconds})


@app.get("/status/{code}")
async def status(code: int) -> Response:
    return Response(status_code=code, content=b"" if code in (204, 304) else b"status")


@app.get("/gzip")
async def gzipped() -> Response:
    return Response(
        gzip.compress(b'{"compressed": true}'),
        media_type="application/json",
        headers={"Content-Encoding": "gzip"},
    )


@app.get("/redirect")
async def redirect() -> Response:
    return Response(status_code=302, headers={"Location": "/echo"})


@app.get("/set-cookie")
async def set_cookie() -> Response:
    response = Response(b"ok")
    response.set_cookie("upstream_session", "abc")
    return response


@app.websocket("/ws")
async def ws(websocket: WebSocket) -> None:
    await websocket.accept(
        subprotocol=websocket.scope.get("subprotocols", [None])[0]
        if websocket.scope.get("subprotocols")
        else None
    )
    headers = dict((k.decode(), v.decode()) for k, v in websocket.scope["headers"])
    await websocket.send_json(
        {"subject": headers.get("x-gatehouse-subject"), "request_id": headers.get("x-request-id")}
    )
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await websocket.send_text("echo:" + message["text"])
        elif message.get("bytes") is not None:
            await websocket.send_bytes(message["bytes"])
