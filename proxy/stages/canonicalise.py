"""Canonicalise: the one path and host every later stage and the upstream see.

The target is canonicalised once (:func:`proxy.http.canonical.canonicalise_target`:
a request the rules cannot make unambiguous is 400) and the Host obeys
``host [":" port]`` (400 ``bad_host``); the policy, the audit and the upstream
all get these, never the raw spelling.
"""

from __future__ import annotations

from collections.abc import Callable

from proxy.errors import BadHost
from proxy.http.canonical import canonicalise_target
from proxy.http.config import ListenConfig
from proxy.http.host import parse_host
from proxy.http.protocol import Request
from proxy.model import ClientCertificate, RequestFacts
from proxy.stages.context import Edge, RequestContext

CertificateReader = Callable[[bytes], ClientCertificate]


def canonical_target(ctx: RequestContext, listen: ListenConfig) -> tuple[str, str]:
    """The request's canonical path and its raw query."""
    path, query = canonicalise_target(ctx.request.raw_path, listen.path)
    ctx.path = path
    return path, query


def request_facts(
    ctx: RequestContext,
    edge: Edge,
    path: str,
    query: str,
    listen: ListenConfig,
    reader: CertificateReader | None,
) -> RequestFacts:
    """What the policy and the identity stages read about the request."""
    host = parse_host(edge.first.get("host", ""))
    if host is None:
        raise BadHost(detail="Host header breaks host[:port]")
    request = ctx.request
    facts = RequestFacts(
        method=request.method,
        scheme=listen.scheme,
        host=host,
        path=path,
        query=query,
        client_ip=edge.client_ip,
        headers=edge.first,
        client_cert=client_certificate(request, reader) if listen.tls is not None else None,
        request_id=edge.request_id,
    )
    if ctx.span is not None:
        ctx.span.stage("canonicalise")
    return facts


def client_certificate(
    request: Request, reader: CertificateReader | None
) -> ClientCertificate | None:
    """The TLS client's certificate, when it sent one."""
    transport = request.transport
    if reader is None or transport is None:
        return None
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return reader(der) if der else None
