"""Helpers for policy tests: write policy files, build requests and callers."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from proxy.model import AuthMethod, ClientCertificate, Identity, RequestFacts
from proxy.policy.evaluate import PolicySet
from proxy.policy.load import load_policies
from proxy.policy.model import Decision


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def policy(tmp_path: Path, text: str, backends: set[str] | None = None) -> PolicySet:
    directory = tmp_path / "policies"
    directory.mkdir(exist_ok=True)
    write(directory, "policy.yaml", text)
    return load_policies(directory, backends)


def decision(
    ps: PolicySet, request: RequestFacts, identity: Identity | None, now: float = 0.0
) -> Decision:
    """Match and decide, as the gateway does with one policy version."""
    route = ps.match(request.host, request.path, request.method)
    return ps.not_found if route is None else ps.decide(route, request, identity, now)


def facts(
    path: str = "/",
    method: str = "GET",
    host: str = "app.example.com",
    client_ip: str = "192.0.2.1",
    client_cert: ClientCertificate | None = None,
    query: str = "",
) -> RequestFacts:
    return RequestFacts(
        method=method,
        scheme="https",
        host=host,
        path=path,
        query=query,
        client_ip=client_ip,
        headers={},
        client_cert=client_cert,
    )


def caller(
    subject: str = "alice",
    *,
    issuer: str = "https://idp.example.com",
    method: AuthMethod = "jwt",
    email: str | None = None,
    email_verified: bool | None = None,
    groups: tuple[str, ...] = (),
    scopes: tuple[str, ...] = (),
    claims: Mapping[str, Any] | None = None,
    unknown_claims: tuple[str, ...] = (),
) -> Identity:
    return Identity(
        subject=subject,
        issuer=issuer,
        method=method,
        email=email,
        email_verified=email_verified,
        groups=frozenset(groups),
        scopes=frozenset(scopes),
        claims=dict(claims or {}),
        unknown_claims=frozenset(unknown_claims),
    )


def cert(
    *, uris: tuple[str, ...] = (), dns: tuple[str, ...] = (), fp: str = "ab" * 32
) -> ClientCertificate:
    return ClientCertificate(
        subject_cn=None, san_uris=uris, san_dns=dns, fingerprint_sha256=fp, der=b""
    )
