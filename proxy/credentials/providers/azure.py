"""Entra ID access tokens through ``azure-identity``'s asyncio credentials (optional extra).

Managed identity is discovered the way the SDK does it on the platform:
``IDENTITY_ENDPOINT``/``IDENTITY_HEADER`` on App Service, IMDS elsewhere
(``AZURE_POD_IDENTITY_AUTHORITY_HOST`` overrides its address). A fresh SDK
credential is built per fetch so the SDK's own token cache never answers in
place of ours: after an upstream 401 the next fetch really asks Entra again.
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp

from proxy.credentials.cache import Credential, CredentialFetchError
from proxy.credentials.config import AzureSpec
from proxy.credentials.providers.base import FetchingProvider, bearer
from proxy.model import Identity


def _sdk() -> Any:
    try:
        from azure.identity import aio
    except ImportError:  # pragma: no cover - depends on the installed extras
        raise CredentialFetchError(
            "azure-identity is not installed (pip install azure-identity)"
        ) from None
    return aio


class AzureProvider(FetchingProvider):
    type = "azure"

    def __init__(self, spec: AzureSpec) -> None:
        self.spec = spec

    async def start(self, http: aiohttp.ClientSession) -> None:
        _sdk()  # fail at start, not at the first request, when the extra is missing

    def shape(self) -> tuple[str, ...]:
        s = self.spec
        return (s.mode, s.scope, s.client_id or "", s.tenant_id or "", s.authority or "")

    def _credential(self) -> Any:
        aio = _sdk()
        s = self.spec
        # Our cache retries with backoff; SDK-internal retries would only stall requests.
        # logging_enable=False: azure-core's network trace (bodies included) stays off.
        common: dict[str, Any] = {"retry_total": 0, "logging_enable": False}
        if s.ca_bundle is not None:
            common["connection_verify"] = str(s.ca_bundle)
        if s.authority is not None:
            common["authority"] = s.authority
        if s.mode == "managed_identity":
            return aio.ManagedIdentityCredential(client_id=s.client_id, **common)
        if s.mode == "client_secret":
            assert s.client_secret is not None
            try:
                secret = s.client_secret.read()
            except (OSError, KeyError):
                raise CredentialFetchError("client secret is unreadable") from None
            return aio.ClientSecretCredential(s.tenant_id, s.client_id, secret, **common)
        if s.mode == "certificate":
            return aio.CertificateCredential(
                s.tenant_id, s.client_id, certificate_path=str(s.certificate), **common
            )
        return aio.WorkloadIdentityCredential(
            tenant_id=s.tenant_id,
            client_id=s.client_id,
            token_file_path=str(s.token_file),
            **common,
        )

    async def fetch(self, identity: Identity | None) -> Credential:
        credential = self._credential()
        try:
            token = await credential.get_token(self.spec.scope)
        except CredentialFetchError:
            raise
        except Exception as exc:
            # SDK messages can quote the token endpoint's response: keep only the type.
            raise CredentialFetchError(
                f"azure {self.spec.mode} failed ({type(exc).__name__})"
            ) from None
        finally:
            await credential.close()
        expires_on = float(token.expires_on) if token.expires_on else time.time() + 300.0
        return Credential(self.spec.header, bearer(token.token), expires_on)
