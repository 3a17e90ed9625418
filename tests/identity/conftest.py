"""Shared fixtures for identity tests: the real oidc-provider and config helpers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from proxy.identity.config import IdentityConfig, IssuerConfig, JwksCacheConfig
from proxy.model import RequestFacts
from tests.peers.oidc_provider import RESOURCE, OidcProvider, oidc_provider, rsa_jwk


@pytest.fixture(scope="module")
def provider() -> Iterator[OidcProvider]:
    with oidc_provider([rsa_jwk("rsa-1")]) as running:
        yield running


def issuer_config(issuer: str, **overrides: Any) -> IssuerConfig:
    values: dict[str, Any] = {"issuer": issuer, "audiences": (RESOURCE,)}
    values.update(overrides)
    return IssuerConfig(**values)


def identity_config(*issuers: IssuerConfig, **overrides: Any) -> IdentityConfig:
    return IdentityConfig(issuers=issuers, **overrides)


def fast_jwks(refetch_interval: float = 10.0) -> JwksCacheConfig:
    return JwksCacheConfig(refetch_interval=refetch_interval)


def facts(headers: dict[str, str] | None = None, **overrides: Any) -> RequestFacts:
    values: dict[str, Any] = {
        "method": "GET",
        "scheme": "https",
        "host": "gatehouse.test",
        "path": "/api/whoami",
        "query": "",
        "client_ip": "127.0.0.1",
        "headers": {k.lower(): v for k, v in (headers or {}).items()},
    }
    values.update(overrides)
    return RequestFacts(**values)


def bearer(token: str) -> RequestFacts:
    return facts({"Authorization": f"Bearer {token}"})
