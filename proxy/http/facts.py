"""The request as the pure decision stages see it: plain data, no I/O types."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from proxy.identity.model import ClientCertificate


class RequestFacts(NamedTuple):
    """What routing and policy may look at.

    Immutable like a frozen dataclass; a named tuple because one is built per
    request and a frozen dataclass takes more than twice as long to build.

    ``path`` is the canonical path (see :mod:`proxy.http.canonical`): the one
    used for matching and the one the upstream receives. ``client_ip`` is the
    trusted client address (the peer, or the X-Forwarded-For entry appended by
    the last trusted proxy). ``headers`` maps lower-case names to values.
    """

    method: str
    scheme: str
    host: str
    path: str
    query: str
    client_ip: str
    headers: Mapping[str, str]
    client_cert: ClientCertificate | None = None
    request_id: str = ""  # for error bodies built outside the gateway (login endpoints)
