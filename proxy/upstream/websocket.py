"""WebSocket upgrades: authorised like any request, then relayed message by message."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Sequence

import aiohttp
from aiohttp import WSMsgType, web
from yarl import URL

from proxy.errors import UpstreamConnectError, UpstreamTimeout
from proxy.observability.audit import AuditRecord

_HANDSHAKE_TIMEOUT = 10.0
_MAX_MESSAGE = 16 * 2**20


def new_client_session() -> aiohttp.ClientSession:
    """The aiohttp client a worker uses for websocket upgrades (plain requests use UpstreamClient).

    No cookie jar (one caller's upstream cookies must never reach another
    caller), no redirects followed, no decompression, no headers invented.
    """
    connector = aiohttp.TCPConnector(
        limit=0,
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


def is_websocket_upgrade(request: web.BaseRequest) -> bool:
    return (
        request.method == "GET"
        and request.headers.get("Upgrade", "").lower() == "websocket"
        and "upgrade" in request.headers.get("Connection", "").lower()
    )


async def _pump(
    source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    record: AuditRecord,
    counter: str,
) -> None:
    async for msg in source:
        if msg.type == WSMsgType.TEXT:
            await sink.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await sink.send_bytes(msg.data)
        else:
            break
        setattr(record, counter, getattr(record, counter) + len(msg.data))


async def proxy_websocket(
    session: aiohttp.ClientSession,
    request: web.BaseRequest,
    *,
    url: str,
    headers: Sequence[tuple[str, str]],
    record: AuditRecord,
    ssl_context: ssl.SSLContext | bool = True,
    server_hostname: str | None = None,
) -> web.StreamResponse:
    protocols = [
        p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()
    ]
    # The client library performs its own handshake; only end-to-end headers travel.
    forwarded = [(k, v) for k, v in headers if not k.lower().startswith("sec-websocket-")]
    target = URL(url, encoded=True)
    target = target.with_scheme("wss" if target.scheme == "https" else "ws")
    try:
        async with asyncio.timeout(_HANDSHAKE_TIMEOUT):
            upstream = await session.ws_connect(
                target,
                headers=forwarded,
                protocols=protocols,
                autoclose=False,
                max_msg_size=_MAX_MESSAGE,
                ssl=ssl_context,
                server_hostname=server_hostname,
            )
    except TimeoutError:
        raise UpstreamTimeout(detail="websocket handshake") from None
    except aiohttp.WSServerHandshakeError as exc:
        raise UpstreamConnectError("upstream_refused_upgrade", detail=str(exc.status)) from None
    except aiohttp.ClientError as exc:
        raise UpstreamConnectError(detail=type(exc).__name__) from None

    record.upstream_status = 101
    client = web.WebSocketResponse(
        protocols=[upstream.protocol] if upstream.protocol else (),
        autoclose=False,
        max_msg_size=_MAX_MESSAGE,
    )
    client.headers["X-Request-Id"] = record.request_id
    await client.prepare(request)
    to_upstream = asyncio.ensure_future(_pump(client, upstream, record, "bytes_in"))
    to_client = asyncio.ensure_future(_pump(upstream, client, record, "bytes_out"))
    try:
        await asyncio.wait((to_upstream, to_client), return_when=asyncio.FIRST_COMPLETED)
    finally:
        code = client.close_code or upstream.close_code or 1000
        for task in (to_upstream, to_client):
            task.cancel()
        for task in (to_upstream, to_client):
            with contextlib.suppress(BaseException):
                await task
        with contextlib.suppress(Exception):
            await upstream.close(code=code)
        with contextlib.suppress(Exception):
            await client.close(code=code)
    return client
