"""The Python reference: the simplest fast aiohttp pass-through someone would write by hand.

``python -m bench.aiohttp_passthrough PORT UPSTREAM_URL``. Not used by the product.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator

import aiohttp
import uvloop
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer"}
    | {"transfer-encoding", "upgrade", "host", "content-length"}
)
SESSION = web.AppKey("session", aiohttp.ClientSession)


def end_to_end(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    tokens = {t.strip().lower() for v in headers.getall("Connection", ()) for t in v.split(",")}
    drop = HOP_BY_HOP | tokens
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in drop)


def build_app(upstream: str) -> web.Application:
    async def session(app: web.Application) -> AsyncIterator[None]:
        app[SESSION] = aiohttp.ClientSession(
            upstream, auto_decompress=False, connector=aiohttp.TCPConnector(limit=0)
        )
        yield
        await app[SESSION].close()

    async def forward(req: web.Request) -> web.Response:
        body = await req.read() if req.body_exists else None
        async with req.app[SESSION].request(
            req.method,
            req.rel_url,
            headers=end_to_end(req.headers),
            data=body,
            allow_redirects=False,
        ) as up:
            return web.Response(
                status=up.status, headers=end_to_end(up.headers), body=await up.read()
            )

    app = web.Application()
    app.cleanup_ctx.append(session)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


if __name__ == "__main__":
    uvloop.install()
    web.run_app(
        build_app(sys.argv[2]), host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None
    )
