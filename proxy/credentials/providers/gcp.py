"""Google-signed ID tokens for Cloud Functions / Cloud Run.

* From the metadata server (``GCE_METADATA_HOST`` honoured) with one documented
  GET. Done directly rather than through google-auth, which reads the host once
  at import time and so could not honour a per-backend ``metadata_host``.
* From a service-account key file through ``google-auth`` (optional extra),
  whose blocking HTTP runs in a worker thread off the event loop.
* By impersonation: an access token of the key file's or the metadata server's
  identity calls the IAM Credentials API ``generateIdToken`` for another
  service account (google-auth fixes that endpoint's host, so it is done here).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import time
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp

from proxy.credentials.cache import Credential, CredentialFetchError
from proxy.credentials.config import GcpSpec
from proxy.credentials.providers.base import FetchingProvider, bearer
from proxy.credentials.providers.oauth import jwt_expiry
from proxy.model import Identity, RouteView
from proxy.outbound import FetchError, read_bounded

DEFAULT_METADATA_HOST = "metadata.google.internal"
IDENTITY_PATH = "/computeMetadata/v1/instance/service-accounts/default/identity"
TOKEN_PATH = "/computeMetadata/v1/instance/service-accounts/default/token"  # noqa: S105
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
METADATA_TIMEOUT = aiohttp.ClientTimeout(total=5)
# Google ID tokens live one hour; assume less if a token does not say.
DEFAULT_LIFETIME = 3000.0


def _key_file_token(path: str, audience: str) -> tuple[str, float]:
    """Blocking: exchange a self-signed JWT at the key file's ``token_uri`` for an ID token."""
    try:
        from google.auth.transport.requests import Request
        from google.oauth2 import service_account
    except ImportError:  # pragma: no cover - depends on the installed extras
        raise CredentialFetchError(
            "google-auth is not installed (pip install google-auth)"
        ) from None
    try:
        creds: Any = service_account.IDTokenCredentials.from_service_account_file(  # type: ignore[no-untyped-call]
            path, target_audience=audience
        )
        creds.refresh(Request())
    except (OSError, ValueError) as exc:
        raise CredentialFetchError(
            f"service account key file unusable ({type(exc).__name__})"
        ) from None
    except Exception as exc:
        raise CredentialFetchError(f"google token_uri failed ({type(exc).__name__})") from None
    token = str(creds.token)
    exp = jwt_expiry(token)
    if exp is None and creds.expiry is not None:
        exp = creds.expiry.replace(tzinfo=datetime.UTC).timestamp()
    return token, exp if exp is not None else time.time() + DEFAULT_LIFETIME


def _key_file_access_token(path: str) -> str:
    """Blocking: an OAuth access token for the key file's own service account."""
    try:
        from google.auth.transport.requests import Request
        from google.oauth2 import service_account
    except ImportError:  # pragma: no cover - depends on the installed extras
        raise CredentialFetchError(
            "google-auth is not installed (pip install google-auth)"
        ) from None
    try:
        creds: Any = service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
            path, scopes=[CLOUD_PLATFORM]
        )
        creds.refresh(Request())
    except (OSError, ValueError) as exc:
        raise CredentialFetchError(
            f"service account key file unusable ({type(exc).__name__})"
        ) from None
    except Exception as exc:
        raise CredentialFetchError(f"google token_uri failed ({type(exc).__name__})") from None
    return str(creds.token)


class GcpProvider(FetchingProvider):
    type = "gcp"

    def __init__(self, spec: GcpSpec) -> None:
        self.spec = spec
        self._http: aiohttp.ClientSession | None = None
        self._metadata_host = DEFAULT_METADATA_HOST

    async def start(self, http: aiohttp.ClientSession) -> None:
        self._http = http
        self._metadata_host = (
            self.spec.metadata_host or os.environ.get("GCE_METADATA_HOST") or DEFAULT_METADATA_HOST
        )

    def shape(self) -> tuple[str, ...]:
        s = self.spec
        return (
            s.mode,
            s.audience,
            str(s.key_file or ""),
            s.metadata_host or "",
            s.impersonate or "",
            s.iam_endpoint,
        )

    def header_for(self, route: RouteView) -> str:
        send_as = self.spec.send_as
        if send_as == "serverless" or (send_as == "auto" and route.pass_authorization):
            # Cloud Run / Functions check this header first and leave Authorization
            # to the application, so the caller's own token can pass through.
            return "X-Serverless-Authorization"
        return "Authorization"

    async def fetch(self, identity: Identity | None) -> Credential:
        if self.spec.impersonate:
            token, exp = await self._impersonated()
        elif self.spec.mode == "service_account_key":
            token, exp = await asyncio.to_thread(
                _key_file_token, str(self.spec.key_file), self.spec.audience
            )
        else:
            token, exp = await self._from_metadata()
        return Credential("Authorization", bearer(token), exp)

    async def _impersonated(self) -> tuple[str, float]:
        assert self._http is not None, "provider not started"
        if self.spec.mode == "service_account_key":
            source = await asyncio.to_thread(_key_file_access_token, str(self.spec.key_file))
        else:
            source = await self._metadata_access_token()
        name = quote(f"projects/-/serviceAccounts/{self.spec.impersonate}", safe="/@-")
        url = f"{self.spec.iam_endpoint}/v1/{name}:generateIdToken"
        try:
            async with self._http.post(
                url,
                json={"audience": self.spec.audience, "includeEmail": True},
                headers={"Authorization": bearer(source)},
                timeout=METADATA_TIMEOUT,
                allow_redirects=False,
            ) as resp:
                status = resp.status
                body = json.loads(await read_bounded(resp)) if status == 200 else None
        except FetchError as exc:
            raise CredentialFetchError(f"IAM credentials API: {exc}") from None
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            raise CredentialFetchError(
                f"IAM credentials API failed ({type(exc).__name__})"
            ) from None
        if status != 200:
            raise CredentialFetchError(f"IAM credentials API answered {status}")
        token = body.get("token") if isinstance(body, dict) else None
        exp = jwt_expiry(token) if isinstance(token, str) else None
        if not isinstance(token, str) or exp is None:
            raise CredentialFetchError("IAM credentials API returned no ID token")
        return token, exp

    async def _metadata_get(self, path: str, query: str) -> str:
        assert self._http is not None, "provider not started"
        url = f"http://{self._metadata_host}{path}" + (f"?{query}" if query else "")
        try:
            async with self._http.get(
                url,
                headers={"Metadata-Flavor": "Google"},
                timeout=METADATA_TIMEOUT,
                allow_redirects=False,
            ) as resp:
                body = (await read_bounded(resp)).decode("utf-8", "replace")
                status = resp.status
                flavor = resp.headers.get("Metadata-Flavor")
        except FetchError as exc:
            raise CredentialFetchError(f"metadata server: {exc}") from None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise CredentialFetchError(
                f"metadata server unreachable ({type(exc).__name__})"
            ) from None
        if status != 200:
            raise CredentialFetchError(f"metadata server answered {status}")
        if flavor != "Google":
            # Whatever answered is not a metadata server (a captive proxy, say).
            raise CredentialFetchError("metadata server reply lacks Metadata-Flavor: Google")
        return body

    async def _metadata_access_token(self) -> str:
        body = await self._metadata_get(TOKEN_PATH, "")
        try:
            token = json.loads(body).get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise CredentialFetchError("metadata server returned no access token")
        return token

    async def _from_metadata(self) -> tuple[str, float]:
        query = urlencode({"audience": self.spec.audience, "format": "full"})
        token = (await self._metadata_get(IDENTITY_PATH, query)).strip()
        exp = jwt_expiry(token)
        if exp is None:
            raise CredentialFetchError("metadata server returned no ID token")
        return token, exp
