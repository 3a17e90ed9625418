"""Browser login: OIDC authorization code + PKCE, sessions in encrypted cookies.

Authlib has no aiohttp integration, so its protocol helpers build the
authorization URL, the PKCE challenge and the token requests while aiohttp
carries them. The core calls, from its aiohttp handler:

* :meth:`BrowserLogin.handle` for every ``/.gatehouse/*`` path (callback,
  login, logout); it returns None for paths it does not serve.
* :meth:`BrowserLogin.authenticate` (through ``Authenticator.authenticate_full``)
  to turn the session cookie into an identity, refreshing tokens shortly before
  they expire; the Set-Cookie values it returns go on the proxied response.
* :meth:`BrowserLogin.login_response` when a request needs an identity and has
  none: navigations get a redirect to the IdP, API calls a 401 JSON answer.

The login transaction (state, nonce, PKCE verifier, return path) lives in its
own encrypted cookie; ``state`` is single-use (a consumed-state cache backs the
cookie being cleared). A fresh session id is minted at every login.

Sessions live in the encrypted cookie itself, or, with a :class:`SessionStore`
(shared state in Redis, for several replicas), server-side: the cookie then
carries only the sealed session id, logout deletes the stored session on every
replica, and a refresh takes the store's lock so no two replicas spend one
rotating refresh token. An unreachable store fails those requests closed (503).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web
from authlib.oauth2.rfc6749.parameters import (  # type: ignore[import-untyped]
    prepare_grant_uri,
    prepare_token_request,
)
from authlib.oauth2.rfc7636 import create_s256_code_challenge  # type: ignore[import-untyped]
from cachetools import TTLCache

from proxy.errors import (
    AuthenticationError,
    GatehouseError,
    IdentityProviderUnavailable,
    StateUnavailable,
)
from proxy.http.facts import RequestFacts
from proxy.http.protocol import RequestView
from proxy.http.responses import error_response
from proxy.identity.config import BrowserConfig, IssuerConfig
from proxy.identity.fetch import FetchError, ProviderMetadata, basic_auth, discover, post_form
from proxy.identity.jwks import JwksClient
from proxy.identity.jwt_verify import (
    UnknownKey,
    VerificationKey,
    identity_from_claims,
    parse_header,
    select_key,
    verify_signature,
)
from proxy.identity.model import Identity
from proxy.identity.redirects import is_api_request, safe_redirect_target
from proxy.identity.session import (
    CookieAttrs,
    CookieCodec,
    SessionStore,
    clear_all,
    clear_cookie,
    load_cookie_keys,
    parse_cookie_header,
    read_chunked,
    render_set_cookie,
    write_chunked,
)
from proxy.observability.metrics import AUTH

log = logging.getLogger(__name__)

LOGIN_TTL = 600
ID_TOKEN_MAX_BYTES = 64 * 1024
MAX_SESSION_TOKEN = 2048
PREFIX = "/.gatehouse/"
# How often a replica waiting for another's refresh of the same session looks again.
REFRESH_POLL = 0.05
WWW_AUTHENTICATE = 'Bearer realm="gatehouse"'
# Session claims kept from the ID token: enough for policy, small enough for a cookie.
_KEPT_CLAIMS = ("iss", "sub", "aud", "email", "email_verified", "name", "preferred_username")


@dataclass(frozen=True, slots=True)
class SessionResult:
    """``identity`` is None when the session just ended (cookies clear it)."""

    identity: Identity | None
    set_cookies: tuple[str, ...] = ()


class BrowserLogin:
    def __init__(
        self,
        cfg: BrowserConfig,
        session: aiohttp.ClientSession,
        *,
        issuer_config: IssuerConfig | None = None,
        jwks: JwksClient | None = None,
        max_token_bytes: int = 8192,
        clock: Callable[[], float] = time.time,
        store: SessionStore | None = None,
    ) -> None:
        self.cfg = cfg
        self._store = store
        self._http = session
        self._clock = clock
        # ID tokens arrive from the IdP over TLS, not from clients, and carry every group:
        # allow more than the bearer-token cap so big group lists still log in.
        self._max_token_bytes = max(max_token_bytes, ID_TOKEN_MAX_BYTES)
        base = issuer_config or IssuerConfig(issuer=cfg.issuer, audiences=(cfg.client_id,))
        # ID tokens are verified like bearer tokens, but their audience is this client.
        self.id_token_cfg = dataclasses.replace(
            base, audiences=(cfg.client_id,), required_claims=(), introspection=None
        )
        self._shared_jwks = jwks
        self.jwks: JwksClient | None = jwks
        self.metadata: ProviderMetadata | None = None
        self.codec = CookieCodec(load_cookie_keys(cfg.cookie_keys_file))
        self._secret = cfg.client_secret.read() if cfg.client_secret else None
        self.session_cookie = cfg.cookie_name
        self.login_cookie = f"{cfg.cookie_name}-login"
        self._consumed: TTLCache[str, bool] = TTLCache(100_000, LOGIN_TTL, timer=clock)
        # Old refresh token hash -> refresh in flight or just done, so parallel requests
        # carrying the same session never spend a rotating refresh token twice.
        self._refreshes: TTLCache[str, asyncio.Task[dict[str, Any] | None]] = TTLCache(
            10_000, 60, timer=clock
        )

    def use_session_store(self, store: SessionStore | None) -> None:
        """Keep sessions server-side in ``store`` (call before serving requests)."""
        self._store = store

    # -- lifecycle -----------------------------------------------------------
    async def start(self) -> None:
        try:
            self.metadata = await discover(self._http, self.cfg.issuer)
        except FetchError as exc:
            log.warning("OIDC discovery for browser login failed: %s", exc)
            return
        if self.jwks is None:
            cfg = dataclasses.replace(self.id_token_cfg, jwks_uri=self.metadata.jwks_uri)
            self.jwks = JwksClient(cfg, self._http)
            await self.jwks.refresh()

    async def close(self) -> None:
        if self.jwks is not None and self.jwks is not self._shared_jwks:
            await self.jwks.close()
        for task in list(self._refreshes.values()):
            task.cancel()

    def ready(self) -> bool:
        return self.metadata is not None and self.jwks is not None and self.jwks.ready()

    async def _metadata(self) -> ProviderMetadata:
        if self.metadata is None:
            try:
                self.metadata = await discover(self._http, self.cfg.issuer)
            except FetchError as exc:
                raise IdentityProviderUnavailable(detail=f"discovery failed: {exc}") from exc
        return self.metadata

    def _client_auth(self) -> str | None:
        return None if self._secret is None else basic_auth(self.cfg.client_id, self._secret)

    def _public_client_id(self) -> dict[str, str]:
        """Public clients (no secret) name themselves in the token request body."""
        return {} if self._secret is not None else {"client_id": self.cfg.client_id}

    def redirect_uri(self, host: str) -> str:
        return f"https://{host}{self.cfg.redirect_path}"

    # -- unauthenticated requests ------------------------------------------------
    async def login_response(self, facts: RequestFacts) -> web.Response:
        """401 JSON for API calls; for page navigations a redirect to the IdP."""
        if is_api_request(facts.method, facts.headers):
            return error_response(
                401,
                "unauthenticated",
                facts.request_id,
                {"WWW-Authenticate": WWW_AUTHENTICATE},
            )
        target = facts.path + (f"?{facts.query}" if facts.query else "")
        return await self._start_login(_authority(facts), target, facts.headers)

    async def _start_login(
        self, host: str, return_to: str, headers: Mapping[str, str]
    ) -> web.Response:
        metadata = await self._metadata()
        if metadata.authorization_endpoint is None:
            raise IdentityProviderUnavailable(detail="IdP has no authorization endpoint")
        state = secrets.token_urlsafe(32)
        nonce = secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(48)
        target = safe_redirect_target(return_to, self.cfg.allowed_redirect_hosts) or "/"
        now = self._clock()
        transaction = {
            "state": state,
            "nonce": nonce,
            "verifier": verifier,
            "rd": target,
            "exp": now + LOGIN_TTL,
        }
        url = prepare_grant_uri(
            metadata.authorization_endpoint,
            self.cfg.client_id,
            "code",
            redirect_uri=self.redirect_uri(host),
            scope=list(self.cfg.scopes),
            state=state,
            nonce=nonce,
            code_challenge=create_s256_code_challenge(verifier),
            code_challenge_method="S256",
        )
        response = web.Response(status=302, headers={"Location": url, "Cache-Control": "no-store"})
        response.headers.add(
            "Set-Cookie",
            render_set_cookie(
                self.login_cookie,
                self.codec.seal(self.login_cookie, transaction),
                CookieAttrs(max_age=LOGIN_TTL),
            ),
        )
        return response

    # -- /.gatehouse/* -----------------------------------------------------------
    async def handle(
        self, request: RequestView, facts: RequestFacts | None = None
    ) -> web.StreamResponse | None:
        """Serve ``/.gatehouse/{callback,login,logout}``; None for any other path."""
        path = facts.path if facts is not None else request.path
        if not path.startswith(PREFIX):
            return None
        host = _authority(facts) if facts is not None else request.host
        if path == self.cfg.redirect_path:
            return await self._callback(request, host, facts.request_id if facts else "")
        if path == "/.gatehouse/logout":
            return await self._logout(request, host)
        if path == "/.gatehouse/login":
            target = request.query.get("rd", "/")
            return await self._start_login(host, target, request.headers)
        return None

    async def _callback(
        self, request: RequestView, host: str, request_id: str
    ) -> web.StreamResponse:
        cookies = parse_cookie_header(request.headers.get("Cookie"))
        clear_login = clear_cookie(self.login_cookie)
        try:
            tx = await self._transaction(cookies, request.query)
            session = await self._exchange(host, request.query, tx)
        except StateUnavailable:
            raise
        except GatehouseError as exc:
            AUTH.labels(issuer=self.cfg.issuer, method="session", result=exc.reason).inc()
            # A failed login is the browser's request gone wrong, not missing
            # credentials: 400 with the reason (invalid_state, invalid_nonce...).
            response = error_response(400, exc.reason, request_id)
            response.headers.add("Set-Cookie", clear_login)
            return response
        AUTH.labels(issuer=self.cfg.issuer, method="session", result="login").inc()
        response = web.Response(
            status=302, headers={"Location": str(tx["rd"]), "Cache-Control": "no-store"}
        )
        response.headers.add("Set-Cookie", clear_login)
        if self._store is not None:
            await self._store.save(str(session["sid"]), session)
        for value in self._session_cookies(session, cookies):
            response.headers.add("Set-Cookie", value)
        return response

    async def _transaction(
        self, cookies: Mapping[str, str], query: Mapping[str, str]
    ) -> dict[str, Any]:
        sealed = cookies.get(self.login_cookie)
        tx = self.codec.open(self.login_cookie, sealed, now=self._clock()) if sealed else None
        if tx is None:
            raise AuthenticationError("login_expired", detail="no valid login transaction cookie")
        state = query.get("state", "")
        if not hmac.compare_digest(state.encode(), str(tx.get("state", "")).encode()):
            raise AuthenticationError("invalid_state", detail="state does not match the cookie")
        if state in self._consumed:
            raise AuthenticationError("invalid_state", detail="state already used")
        self._consumed[state] = True
        # Replicas share the consumed states: a replayed callback fails on every one.
        if self._store is not None and not await self._store.consume_once(state, LOGIN_TTL):
            raise AuthenticationError("invalid_state", detail="state already used")
        if "error" in query:
            raise AuthenticationError("login_failed", detail="IdP returned an error")
        if not query.get("code"):
            raise AuthenticationError("login_failed", detail="callback without code")
        return tx

    async def _exchange(
        self, host: str, query: Mapping[str, str], tx: Mapping[str, Any]
    ) -> dict[str, Any]:
        metadata = await self._metadata()
        body = prepare_token_request(
            "authorization_code",
            code=query["code"],
            redirect_uri=self.redirect_uri(host),
            code_verifier=tx["verifier"],
            **self._public_client_id(),
        )
        tokens = await self._token_request(metadata, body)
        id_token = tokens.get("id_token")
        if not isinstance(id_token, str):
            raise AuthenticationError("login_failed", detail="token response without id_token")
        claims = await self._verify_id_token(id_token)
        nonce = claims.get("nonce")
        if not isinstance(nonce, str) or not hmac.compare_digest(
            nonce.encode(), str(tx["nonce"]).encode()
        ):
            raise AuthenticationError("invalid_nonce", detail="ID token nonce mismatch")
        now = self._clock()
        return {
            # A fresh id at every login: a planted pre-login cookie never becomes a session.
            "sid": secrets.token_urlsafe(24),
            "iat": now,
            "exp": now + self.cfg.session_lifetime,
            **self._token_fields(tokens, claims, None),
        }

    def _token_fields(
        self,
        tokens: Mapping[str, Any],
        claims: Mapping[str, Any],
        previous: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        previous = previous or {}
        now = self._clock()
        expires_in = tokens.get("expires_in")
        at_exp = now + float(expires_in) if isinstance(expires_in, int | float) else None
        names = {*_KEPT_CLAIMS, *(path.split(".")[0] for path in self.id_token_cfg.claims.groups)}
        kept = {k: claims[k] for k in names if k in claims}
        access_token = tokens.get("access_token")
        return {
            "claims": kept or previous.get("claims", {}),
            # Big access tokens (group lists) would push the Cookie header past what
            # servers accept; identity then carries no token for exchange.
            "at": access_token
            if isinstance(access_token, str) and len(access_token) <= MAX_SESSION_TOKEN
            else None,
            "at_exp": at_exp,
            # IdPs that rotate refresh tokens send a new one; others keep the old one valid.
            "rt": tokens.get("refresh_token") or previous.get("rt"),
        }

    async def _token_request(self, metadata: ProviderMetadata, body: str) -> dict[str, Any]:
        if metadata.token_endpoint is None:
            raise IdentityProviderUnavailable(detail="IdP has no token endpoint")
        try:
            status, tokens = await post_form(
                self._http, metadata.token_endpoint, body, authorization=self._client_auth()
            )
        except FetchError as exc:
            raise IdentityProviderUnavailable(detail=f"token endpoint: {exc}") from exc
        if status >= 500:
            raise IdentityProviderUnavailable(detail=f"token endpoint answered HTTP {status}")
        if status != 200 or not isinstance(tokens, dict):
            error = tokens.get("error") if isinstance(tokens, dict) else None
            raise AuthenticationError("login_failed", detail=f"token endpoint refused: {error}")
        return tokens

    async def _verify_id_token(self, id_token: str) -> dict[str, Any]:
        cfg = self.id_token_cfg
        header = parse_header(id_token, self._max_token_bytes)
        jwks = self.jwks
        if jwks is None:
            raise IdentityProviderUnavailable(detail="no JWKS for the browser issuer")
        try:
            key: VerificationKey = select_key(header, cfg, jwks.current(), None)
        except UnknownKey:
            await jwks.refresh_for_unknown_kid()
            try:
                key = select_key(header, cfg, jwks.current(refresh=False), None)
            except UnknownKey:
                raise IdentityProviderUnavailable(detail="no key for ID token") from None
        claims = verify_signature(id_token, header, key, cfg, self._clock())
        aud = claims.get("aud")
        if isinstance(aud, list) and len(aud) > 1 and claims.get("azp") != self.cfg.client_id:
            raise AuthenticationError("invalid_token", detail="ID token azp is not this client")
        return claims

    # -- sessions ------------------------------------------------------------------
    def _session_cookies(self, session: Mapping[str, Any], present: Mapping[str, str]) -> list[str]:
        max_age = int(float(session["exp"]) - self._clock())
        content: Mapping[str, Any] = session
        if self._store is not None:
            # Only the id travels; sealing it means ids cannot be guessed or forged.
            content = {"ref": session["sid"], "exp": session["exp"]}
        value = self.codec.seal(self.session_cookie, content)
        return write_chunked(self.session_cookie, value, present, CookieAttrs(max_age=max_age))

    def read_session(self, cookies: Mapping[str, str]) -> dict[str, Any] | None:
        """The session cookie's sealed content (a whole session, or a store reference)."""
        value = read_chunked(self.session_cookie, cookies)
        if value is None:
            return None
        return self.codec.open(self.session_cookie, value, now=self._clock())

    async def _load_session(self, cookies: Mapping[str, str]) -> dict[str, Any] | None:
        content = self.read_session(cookies)
        if content is None:
            return None
        ref = content.get("ref")
        if self._store is None:
            # A reference cookie from a store-backed deployment is no session by itself.
            return None if ref is not None else content
        if not isinstance(ref, str):
            return None  # a whole-session cookie from before the store: log in again
        session = await self._store.load(ref)
        if session is None or session.get("sid") != ref:
            return None  # logged out (on any replica) or expired
        return session

    def _refresh_due(self, session: Mapping[str, Any]) -> bool:
        at_exp = session.get("at_exp")
        return (
            isinstance(at_exp, int | float)
            and at_exp - self._clock() < self.cfg.refresh_margin
            and bool(session.get("rt"))
        )

    async def authenticate(self, facts: RequestFacts) -> SessionResult | None:
        cookies = parse_cookie_header(facts.headers.get("cookie"))
        session = await self._load_session(cookies)
        if session is None:
            return None
        set_cookies: tuple[str, ...] = ()
        if self._refresh_due(session):
            refreshed = await self._refresh_once(session)
            if refreshed is None:
                # The IdP refused the refresh token: the session is over.
                AUTH.labels(issuer=self.cfg.issuer, method="session", result="refresh_failed").inc()
                return SessionResult(None, tuple(clear_all(self.session_cookie, cookies)))
            session = refreshed
            if self._store is None:
                set_cookies = tuple(self._session_cookies(session, cookies))
        AUTH.labels(issuer=self.cfg.issuer, method="session", result="ok").inc()
        return SessionResult(self._identity(session), set_cookies)

    def _identity(self, session: Mapping[str, Any]) -> Identity:
        claims = dict(session.get("claims") or {})
        identity = identity_from_claims(claims, self.id_token_cfg, "session", session.get("at"))
        return dataclasses.replace(identity, expires_at=float(session["exp"]))

    async def _refresh_once(self, session: dict[str, Any]) -> dict[str, Any] | None:
        key = hashlib.sha256(str(session["rt"]).encode()).hexdigest()
        task = self._refreshes.get(key)
        if task is None:
            refresh = (
                self._refresh(session) if self._store is None else self._refresh_stored(session)
            )
            task = asyncio.get_running_loop().create_task(refresh)
            self._refreshes[key] = task
            task.add_done_callback(lambda t: self._forget_failed(key, t))
        return await asyncio.shield(task)

    def _forget_failed(self, key: str, task: asyncio.Task[dict[str, Any] | None]) -> None:
        # Only successful refreshes are shared; after an IdP error the next request retries.
        if task.cancelled() or task.exception() is not None:
            self._refreshes.pop(key, None)

    async def _refresh_stored(self, session: dict[str, Any]) -> dict[str, Any] | None:
        """Refresh a stored session under the store's lock: one replica spends the token."""
        store = self._store
        assert store is not None
        sid = str(session["sid"])
        deadline = time.monotonic() + store.lock_ttl
        current = session
        while True:
            token = await store.lock(sid)
            if token is not None:
                try:
                    latest = await store.load(sid)
                    if latest is None or not self._refresh_due(latest):
                        return latest  # logged out meanwhile, or refreshed by another replica
                    refreshed = await self._refresh(latest)
                    if refreshed is None:
                        await store.delete(sid)
                    elif refreshed is not latest:
                        await store.save(sid, refreshed)
                    return refreshed
                finally:
                    await store.unlock(sid, token)
            at_exp = current.get("at_exp")
            if isinstance(at_exp, int | float) and at_exp > self._clock():
                return current  # another replica is refreshing; this token still works
            if time.monotonic() >= deadline:
                raise IdentityProviderUnavailable(detail="session refresh elsewhere did not finish")
            await asyncio.sleep(REFRESH_POLL)
            latest = await store.load(sid)
            if latest is None or not self._refresh_due(latest):
                return latest
            current = latest

    async def _refresh(self, session: dict[str, Any]) -> dict[str, Any] | None:
        metadata = await self._metadata()
        body = prepare_token_request(
            "refresh_token", refresh_token=session["rt"], **self._public_client_id()
        )
        try:
            tokens = await self._token_request(metadata, body)
        except AuthenticationError:
            return None
        except IdentityProviderUnavailable:
            at_exp = session.get("at_exp")
            if isinstance(at_exp, int | float) and at_exp > self._clock():
                return session  # still valid: try again on a later request
            raise
        claims: Mapping[str, Any] = session.get("claims") or {}
        id_token = tokens.get("id_token")
        if isinstance(id_token, str):
            fresh = await self._verify_id_token(id_token)
            if fresh.get("sub") != claims.get("sub"):
                return None
            claims = fresh
        return {**session, **self._token_fields(tokens, claims, session)}

    async def _logout(self, request: RequestView, host: str) -> web.StreamResponse:
        cookies = parse_cookie_header(request.headers.get("Cookie"))
        content = self.read_session(cookies)
        if self._store is not None and content is not None and isinstance(content.get("ref"), str):
            # Revoked everywhere, or (store unreachable) a 503: never a logout that did not happen.
            await self._store.delete(content["ref"])
        location = "/"
        metadata = self.metadata
        if metadata is not None and metadata.end_session_endpoint:
            # client_id instead of id_token_hint: ID tokens are not kept in the cookie.
            params = {
                "client_id": self.cfg.client_id,
                "post_logout_redirect_uri": f"https://{host}/",
            }
            location = f"{metadata.end_session_endpoint}?{urlencode(params)}"
        response = web.Response(
            status=302, headers={"Location": location, "Cache-Control": "no-store"}
        )
        for value in clear_all(self.session_cookie, cookies):
            response.headers.add("Set-Cookie", value)
        if self.session_cookie not in cookies:
            response.headers.add("Set-Cookie", clear_cookie(self.session_cookie))
        return response


def _authority(facts: RequestFacts) -> str:
    """Host and port as the browser addressed us: callback URLs must carry the port.

    ``facts.host`` is port-less because routing ignores ports; the IdP only
    accepts the exact registered redirect URI, so a forged Host goes nowhere.
    """
    return facts.headers.get("host") or facts.host
