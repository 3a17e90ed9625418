"""Helper upstream for the non-req/s sections: JWKS/discovery documents and bulk streaming.

``python -m bench.aux_server PORT DIR`` serves:
- ``GET /bytes/N``: N zero bytes with Content-Length, written in 256 KiB pieces;
- ``POST|PUT /sink``: reads and discards the body, answers ``{"received": N}``;
- ``GET /<file>`` for ``jwks.json`` and ``.well-known/openid-configuration`` from DIR.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from aiohttp import web

_PIECE = bytes(256 * 1024)


def build_app(docs: Path) -> web.Application:
    async def download(req: web.Request) -> web.StreamResponse:
        n = int(req.match_info["n"])
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.content_length = n
        await resp.prepare(req)
        view = memoryview(_PIECE)
        while n > 0:
            k = min(n, len(_PIECE))
            await resp.write(view[:k])
            n -= k
        await resp.write_eof()
        return resp

    async def sink(req: web.Request) -> web.Response:
        received = 0
        async for chunk in req.content.iter_any():
            received += len(chunk)
        return web.json_response({"received": received})

    async def document(req: web.Request) -> web.Response:
        name = req.match_info["name"]
        allowed = {"jwks.json", ".well-known/openid-configuration"}
        if name not in allowed:
            raise web.HTTPNotFound()
        return web.Response(
            body=(docs / name).read_bytes(), content_type="application/json", charset=None
        )

    app = web.Application(client_max_size=0)
    app.router.add_get(r"/bytes/{n:\d+}", download)
    app.router.add_route("POST", "/sink", sink)
    app.router.add_route("PUT", "/sink", sink)
    app.router.add_get("/{name:.+}", document)
    return app


def write_documents(docs: Path, issuer: str, jwks: dict[str, object]) -> None:
    (docs / ".well-known").mkdir(parents=True, exist_ok=True)
    (docs / "jwks.json").write_text(json.dumps(jwks))
    discovery = {"issuer": issuer, "jwks_uri": f"{issuer}/jwks.json"}
    (docs / ".well-known" / "openid-configuration").write_text(json.dumps(discovery))


if __name__ == "__main__":
    web.run_app(
        build_app(Path(sys.argv[2])),
        host="127.0.0.1",
        port=int(sys.argv[1]),
        access_log=None,
        print=None,
    )
