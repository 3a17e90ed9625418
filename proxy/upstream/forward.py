"""Forward one request upstream and stream the answer back (RFC 9110/9112).

Bodies stream in both directions with back-pressure (aiohttp's stream readers
pause the socket when their buffer fills), so memory stays bounded whatever
the body size. Failures become the phase-named errors of :mod:`proxy.errors`;
once the response has started, a failure can only cut the connection, which
is done deliberately so a truncated body is never mistaken for a whole one.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from proxy.errors import (
    BodyTooLarge,
    Failure,
    GatehouseError,
    Reason,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from proxy.http.headers import filter_response_headers
from proxy.http.protocol import Request, Written
from proxy.upstream.client import (
    ClientFailure,
    ConnectTimeout,
    MalformedResponse,
    ResponseTimeout,
    UpstreamClient,
    UpstreamResponse,
    parse_origin,
)
from proxy.upstream.config import BackendView
from proxy.upstream.tally import ExchangeTally


@dataclass(slots=True)
class _BodyState:
    limit: int
    sent: int = 0
    too_large: bool = False


async def _stream_body(
    request: Request, state: _BodyState, tally: ExchangeTally
) -> AsyncIterator[bytes]:
    async for chunk in request.body():
        state.sent += len(chunk)
        if state.sent > state.limit:
            state.too_large = True
            raise BodyTooLarge(detail="request body over the route limit")
        tally.bytes_in = state.sent
        yield chunk


def _classify(exc: BaseException) -> GatehouseError:
    """The phase error that names a client-side failure, carrying what it says about the
    request: ``failure``, and ``reached`` (whether the upstream may have seen it)."""
    if isinstance(exc, GatehouseError):
        return exc
    failure, reached = (
        (exc.failure, exc.reached) if isinstance(exc, ClientFailure) else (Failure.RESET, True)
    )
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, ResponseTimeout | ConnectTimeout | TimeoutError):
        if not isinstance(exc, ClientFailure):
            failure = Failure.TIMEOUT
        return UpstreamTimeout(detail=detail, failure=failure, reached=reached)
    if isinstance(exc, MalformedResponse):
        return UpstreamProtocolError(detail=detail, failure=failure, reached=reached)
    return UpstreamConnectError(detail=detail, failure=failure, reached=reached)


async def send(
    client: UpstreamClient,
    request: Request,
    *,
    backend: BackendView,
    base_url: str,
    method: str,
    path_qs: str,
    headers: Sequence[tuple[str, str]],
    max_body: int,
    deadline: float | None,
    tally: ExchangeTally,
    ssl_context: ssl.SSLContext | bool = True,
    server_hostname: str | None = None,
    host: str | None = None,
) -> UpstreamResponse:
    """Send the request to ``base_url + path_qs`` and return once response headers arrive.

    ``path_qs`` is the canonical path plus the raw query: it is sent exactly,
    never re-encoded. ``headers`` are the final upstream request headers
    except ``Host``: ``host`` (a preserved client Host), else the endpoint's.
    The caller must :func:`relay` or release the response.
    """
    body: AsyncIterator[bytes] | None = None
    length: int | None = None
    state: _BodyState | None = None
    if request.body_exists:
        # The HTTP layer already refused malformed, duplicate or conflicting framing.
        length = request.content_length
        if length is not None and length > max_body:
            raise BodyTooLarge(detail="declared Content-Length over the route limit")
        if request.expects_continue:
            # Only now, after authorisation, invite the client to send the body.
            request.send_continue()
        state = _BodyState(max_body)
        body = _stream_body(request, state, tally)
    timeouts = backend.timeouts
    if deadline is None:
        deadline = timeouts.total
    try:
        upstream = await client.request(
            parse_origin(base_url),
            method,
            path_qs,
            headers,
            body=body,
            body_length=length,
            connect_timeout=timeouts.connect,
            read_timeout=timeouts.read,
            deadline=deadline,
            ssl_context=ssl_context if isinstance(ssl_context, ssl.SSLContext) else None,
            server_hostname=server_hostname,
            host=host,
            max_connections=backend.max_connections,
        )
    except BaseException as exc:
        if state is not None and state.too_large:
            raise BodyTooLarge(detail="request body over the route limit") from exc
        if isinstance(exc, asyncio.CancelledError):
            raise
        raise _classify(exc) from exc
    tally.upstream_status = upstream.status
    return upstream


async def relay(
    request: Request,
    upstream: UpstreamResponse,
    tally: ExchangeTally,
    request_id: str,
    set_cookies: Sequence[str] = (),
) -> Written:
    """Stream ``upstream``'s response to the client, then release it.

    ``set_cookies`` are the proxy's own cookies (a refreshed session), added
    next to whatever the upstream sets.
    """
    status = upstream.status
    sent = 0
    try:
        lines, has_date = response_headers(upstream, request_id, set_cookies)
        whole = upstream.content_length is not None and upstream.complete
        if whole and request.method != "HEAD" and status >= 200 and status != 204 and status != 304:
            # The whole body arrived with the head (the common small answer):
            # hand the connection back first, then answer in one write. (A
            # chunked answer stays chunked: the upstream chose to stream it.)
            body = upstream.take_body()
            upstream.release()
            sent = len(body)
            return request.send_whole(status, upstream.reason, lines, body, has_date=has_date)
        length = upstream.content_length
        if not request.start_stream(status, upstream.reason, lines, length, has_date=has_date):
            return Written(status)
        async for chunk in upstream.content.iter_any():
            await request.write(chunk)
            sent += len(chunk)
        return request.end_stream(status)
    except ValueError as exc:
        # A line break in a header value (the strict parser already refuses
        # them from upstreams; this guards the head we build): nothing was
        # written yet, so the client gets a clean 502 instead.
        raise UpstreamProtocolError(detail=str(exc)) from exc
    except ConnectionError:
        # The client went away (reset, broken pipe, lost while draining): not a
        # failure of ours or the upstream's. The unread upstream body makes
        # the release close that upstream connection.
        tally.cut_reason = Reason.CLIENT_DISCONNECTED
        request.abort()
    except (TimeoutError, ClientFailure) as exc:
        # The status line is gone already: cut the connection so the client
        # sees a truncated response instead of a complete-looking one.
        tally.cut_reason = _classify(exc).reason
        upstream.close()
        request.abort()
    finally:
        tally.bytes_out = sent
        upstream.release()
    return Written(status)


def response_headers(
    upstream: UpstreamResponse, request_id: str, set_cookies: Sequence[str]
) -> tuple[list[bytes], bool]:
    """The header lines the client gets: the upstream's end-to-end ones plus the
    proxy's own; and whether the upstream sent Date."""
    lines, has_server, has_date = filter_response_headers(upstream.raw_headers)
    for cookie in set_cookies:
        lines.append(b"Set-Cookie: " + cookie.encode("latin-1"))
    if not has_server:
        lines.append(b"Server: gatehouse")  # not a default naming our software's version
    lines.append(b"X-Request-Id: " + request_id.encode("latin-1"))
    return lines, has_date
