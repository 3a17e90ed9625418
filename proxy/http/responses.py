"""Error responses: short JSON with a reason code and the request id, nothing else.

No stack traces, no echo of request data or tokens: the reason vocabulary is
fixed, so a body can never carry a secret.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from aiohttp import web

from proxy.errors import GatehouseError, HeadersTooLarge


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


def failure_response(error: GatehouseError, request_id: str) -> web.Response:
    """The answer to a request that failed with ``error``: its status, reason and headers."""
    return error_response(error.status, error.reason, request_id, error.response_headers())


def rejection_response(
    error: GatehouseError, rid: str, clear_on_431: tuple[str, ...] = ()
) -> web.Response:
    """The short JSON answer to a request refused before the gateway. A 431 also
    carries ``clear_on_431`` (Set-Cookie values clearing the session cookies): an
    oversized Cookie header would otherwise lock the browser out, logout included,
    until its cookies expire."""
    response = failure_response(error, rid)
    if isinstance(error, HeadersTooLarge):
        for value in clear_on_431:
            response.headers.add("Set-Cookie", value)
    return response
