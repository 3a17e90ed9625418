"""Forward one request upstream and stream the answer back (RFC 9110/9112).

Bodies stream in both directions with back-pressure (aiohttp's stream readers
pause the socket when their buffer fills), so memory stays bounded whatever
the body size. Failures become the phase-named errors of :mod:`proxy.errors`;
once the response has started, a failure can only cut the connection, which
is done deliberately so a truncated body is never mistaken for a whole one.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from proxy.config.schema import BackendConfig
from proxy.errors import (
    BodyTooLarge,
    GatehouseError,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from proxy.http.headers import filter_response_headers
from proxy.observability.audit import AuditRecord

log = logging.getLogger("gatehouse.upstream")

_CHUNK = 64 * 1024
_NO_BODY_STATUS = frozenset({204, 304})


@dataclass(slots=True)
class _BodyState:
    limit: int
    sent: int = 0
    too_large: bool = False


def new_client_session(max_connections: int = 0) -> aiohttp.ClientSession:
    """The one upstream client a worker uses.

    No cookie jar (one caller's upstream cookies must never reach another
    caller), no redirects followed, no decompression, no headers invented.
    """
    connector = aiohttp.TCPConnector(
        limit=max_connections,
        limit_per_host=0,
        ttl_dns_cache=60,
        keepalive_timeout=30,
        enable_cleanup_closed=False,
    )
    session = aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
        timeout=aiohttp.ClientTimeout(total=None),
        trust_env=False,
    )
    # aiohttp repeats an idempotent request once on a reset, outside any retry
    # policy or budget; EndpointPool.send is the only layer that retries.
    session._retry_connection = False
    return session


async def _stream_body(
    request: web.BaseRequest, state: _BodyState, record: AuditRecord
) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_any():
        state.sent += len(chunk)
        if state.sent > state.limit:
            state.too_large = True
            raise BodyTooLarge(detail="request body over the route limit")
        record.bytes_in = state.sent
        yield chunk


def _classify(exc: BaseException) -> GatehouseError:
    """Map a client-side failure to the phase error that names it."""
    if isinstance(exc, GatehouseError):
        return exc
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return UpstreamTimeout(detail=type(exc).__name__)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamConnectError(detail=str(exc.os_error))
    if isinstance(exc, aiohttp.ClientResponseError | aiohttp.ClientPayloadError):
        return UpstreamProtocolError(detail=type(exc).__name__)
    return UpstreamConnectError(detail=type(exc).__name__)


async def send(
    session: aiohttp.ClientSession,
    request: web.BaseRequest,
    *,
    backend: BackendConfig,
    base_url: str,
    method: str,
    path_qs: str,
    headers: Sequence[tuple[str, str]],
    max_body: int,
    deadline: float | None,
    record: AuditRecord,
    ssl_context: ssl.SSLContext | bool = True,
    server_hostname: str | None = None,
) -> aiohttp.ClientResponse:
    """Send the request to ``base_url + path_qs`` and return once response headers arrive.

    ``path_qs`` is the canonical path plus the raw query: it is sent exactly,
    never re-encoded. ``headers`` are the final upstream request headers.
    The caller must :func:`relay` or release the response.
    """
    out_headers = CIMultiDict(headers)
    data: AsyncIterator[bytes] | None = None
    state = _BodyState(max_body)
    length_text = request.headers.get("Content-Length")
    if length_text is not None:
        # aiohttp's parser already rejected malformed or duplicate lengths.
        length = int(length_text)
        if length > max_body:
            raise BodyTooLarge(detail="declared Content-Length over the route limit")
        out_headers["Content-Length"] = length_text
    if request.body_exists:
        if request.headers.get("Expect", "").lower() == "100-continue":
            # Only now, after authorisation, invite the client to send the body.
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        data = _stream_body(request, state, record)

    timeouts = backend.timeouts
    client_timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=timeouts.connect, sock_read=timeouts.read
    )
    url = URL(base_url + path_qs, encoded=True)
    if deadline is None:
        deadline = timeouts.total
    try:
        async with asyncio.timeout(deadline):
            upstream = await session.request(
                method,
                url,
                headers=out_headers,
                data=data,
                allow_redirects=False,
                timeout=client_timeout,
                compress=None,
                chunked=None,
                ssl=ssl_context,
                server_hostname=server_hostname,
            )
    except BaseException as exc:
        if state.too_large:
            raise BodyTooLarge(detail="request body over the route limit") from None
        if isinstance(exc, asyncio.CancelledError):
            raise
        raise _classify(exc) from None
    record.upstream_status = upstream.status
    return upstream


async def relay(
    request: web.BaseRequest,
    upstream: aiohttp.ClientResponse,
    record: AuditRecord,
    set_cookies: Sequence[str] = (),
) -> web.StreamResponse:
    """Stream ``upstream``'s response to the client, then release it.

    ``set_cookies`` are the proxy's own cookies (a refreshed session), added
    next to whatever the upstream sets.
    """
    try:
        return await _relay(request, upstream, record, set_cookies)
    finally:
        upstream.release()


async def _relay(
    request: web.BaseRequest,
    upstream: aiohttp.ClientResponse,
    record: AuditRecord,
    set_cookies: Sequence[str],
) -> web.StreamResponse:
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
    raw = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in upstream.raw_headers]
    for name, value in filter_response_headers(raw):
        response.headers.add(name, value)
    for cookie in set_cookies:
        response.headers.add("Set-Cookie", cookie)
    if "Server" not in response.headers:
        response.headers["Server"] = "gatehouse"  # not aiohttp's default naming its version
    response.headers["X-Request-Id"] = record.request_id
    no_body = (
        request.method == "HEAD"
        or upstream.status in _NO_BODY_STATUS
        or (100 <= upstream.status < 200)
    )
    if upstream.content_length is not None and not (
        upstream.status in _NO_BODY_STATUS or 100 <= upstream.status < 200
    ):
        response.content_length = upstream.content_length
    sent = 0
    try:
        await response.prepare(request)
        if no_body:
            return response
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
            sent += len(chunk)
    except ConnectionError:
        # The client went away (reset, broken pipe, lost while draining): not a
        # failure of ours or the upstream's. The unread upstream body makes
        # aiohttp close that upstream connection on release.
        record.reason = "client_disconnected"
    except (TimeoutError, aiohttp.ClientError) as exc:
        # The status line is gone already: cut the connection so the client
        # sees a truncated response instead of a complete-looking one.
        err = _classify(exc)
        record.reason = err.reason
        upstream.close()
        if request.transport is not None:
            request.transport.close()
    finally:
        record.bytes_out = sent
    return response
