"""The FastAPI upstream behind the data planes: echoes and records what it received.

Recording lets a test assert that a refused request never reached it, and
compare the path it received with the path Gatehouse decided on (joined by
the data plane's request id).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


@dataclass(frozen=True)
class Seen:
    method: str
    raw_path: str
    query: str
    headers: list[tuple[str, str]]
    at: float

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name.lower()), None)

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name.lower()]


SEEN: list[Seen] = []
app = FastAPI(openapi_url=None)


@app.api_route(
    "/{rest:path}",
    methods=["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"],
    include_in_schema=False,
)
async def echo(request: Request) -> JSONResponse:
    seen = Seen(
        method=request.method,
        raw_path=request.scope["raw_path"].decode("latin-1"),
        query=request.scope["query_string"].decode("latin-1"),
        headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.scope["headers"]],
        at=time.time(),
    )
    SEEN.append(seen)
    return JSONResponse({"method": seen.method, "raw_path": seen.raw_path, "headers": seen.headers})


def seen_with(name: str, value: str) -> list[Seen]:
    """What the upstream received carrying ``name: value`` (a test's marker or request id)."""
    return [s for s in SEEN if s.header(name) == value]
