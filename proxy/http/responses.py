"""Error responses: short JSON with a reason code and the request id, nothing else.

No stack traces, no echo of request data or tokens: the reason vocabulary is
fixed, so a body can never carry a secret.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from aiohttp import web


def error_body(status: int, reason: str, request_id: str) -> bytes:
    return orjson.dumps({"error": reason, "status": status, "request_id": request_id})


def error_response(
    status: int, reason: str, request_id: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    response = web.Response(
        status=status,
        body=error_body(status, reason, request_id),
        content_type="application/json",
        headers=headers,
    )
    response.headers["X-Request-Id"] = request_id
    response.headers["Cache-Control"] = "no-store"
    response.headers["Server"] = "gatehouse"
    return response
