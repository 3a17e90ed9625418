"""Browser login: OIDC authorization code + PKCE, sessions in encrypted cookies.

Authlib has no aiohttp integration, so its protocol helpers build the
authorization URL and the PKCE challenge here, and the token requests in
:mod:`proxy.identity.token_client`, while aiohttp carries them. The core
calls, from its aiohttp handler:

* :meth:`BrowserLogin.handle` for every ``/.gatehouse/*`` path (callback,
  login, logout); it returns None for paths it does not serve. Login and
  logout responses carry an :class:`~proxy.observability.audit.EndpointOutcome`
  (who, and how it went) for the request's audit record.
* :meth:`BrowserLogin.authenticate` (through ``Authenticator.authenticate_full``)
  to turn the session cookie into an identity, refreshing tokens shortly before
  they expire; the Set-Cookie values it returns go on the proxied response.
* :meth:`BrowserLogin.login_response` when a request needs an identity and has
  none: navigations get a redirect to the IdP, API calls a 401 JSON answer.

The login transaction (state, nonce, PKCE verifier, return path) lives in its
own encrypted cookie, so starting a login stores nothing server-side; login
starts are rate limited per client address. ``state`` is single-use: an
in-memory record per replica, and with a store a shared record written only
once a login has succeeded. A fresh session id is minted at every login.

Sessions live in the encrypted cookie itself, bounded so the Cookie header
stays within what the listener accepts, or, with a :class:`SessionStore`
(shared state in Redis, for several replicas), server-side: the cookie then
carries only the sealed session id, logout deletes the stored session on every
replica, and a refresh runs under the store's fenced lock
(:mod:`proxy.identity.stored_refresh`). An unreachable store fails those
requests closed (503).

A session not confirmed by the IdP for ``revalidate_interval`` is refreshed,
or, without a refresh token, over: the next page view goes through the IdP
again. Logout is a POST from this origin (``GET /.gatehouse/logout`` shows a
form that posts it), and a session authenticates an unsafe method only for a
request from this origin (:mod:`proxy.identity.same_origin`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri  # type: ignore[import-untyped]
from authlib.oauth2.rfc7636 import create_s256_code_challenge  # type: ignore[import-untyped]
from cachetools import TTLCache

from proxy.errors import (
    AccessDenied,
    AuditReason,
    CredentialsRequired,
    GatehouseError,
    IdentityProviderUnavailable,
    LoginFailed,
    MethodNotAllowed,
    RateLimited,
    Reason,
    StateUnavailable,
)
from proxy.http.protocol import RequestView
from proxy.http.responses import failure_response
from proxy.identity.config import BrowserConfig, IssuerConfig
from proxy.identity.discovery import ProviderDiscovery
from proxy.identity.fetch import ProviderMetadata
from proxy.identity.jwks import JwksClient
from proxy.identity.jwt_verify import identity_from_claims
from proxy.identity.overage import overage_claims
from proxy.identity.redirects import is_api_request, safe_redirect_target
from proxy.identity.same_origin import changes_state, from_this_origin
from proxy.identity.session import (
    CookieAttrs,
    CookieCodec,
    SessionStore,
    clear_all,
    clear_cookie,
    cookie_budget,
    cookie_header_bytes,
    load_cookie_keys,
    login_cookie_name,
    parse_cookie_header,
    read_chunked,
    render_set_cookie,
    write_chunked,
)
from proxy.identity.session_claims import needed_claims, session_claims, shrink
from proxy.identity.stored_refresh import refresh_stored
from proxy.identity.token_client import TokenClient
from proxy.model import Identity, RequestFacts
from proxy.observability.audit import ENDPOINT_OUTCOME, EndpointOutcome
from proxy.observability.metrics import AUTH
from proxy.policy.model import Route
from proxy.ratelimit import RateLimiter, rate_key

log = logging.getLogger(__name__)

LOGIN_TTL = 600
ID_TOKEN_MAX_BYTES = 64 * 1024
MAX_SESSION_TOKEN = 2048
PREFIX = "/.gatehouse/"
LOGOUT_PATH = "/.gatehouse/logout"
LOGIN_PATH = "/.gatehouse/login"
# The listener's default max_header_size, until the runtime says otherwise.
DEFAULT_MAX_HEADER = 8190
# The longest a refresh (token request, ID token check) may take: other replicas
# wait that long for its result, and the lock is renewed meanwhile.
REFRESH_DEADLINE = 15.0
# Clickjacking and script-free: the logout page is one form posting to itself.
LOGOUT_PAGE = (
    b"<!doctype html><html><head><meta charset=utf-8><title>Sign out</title></head>"
    b'<body><form method="post" action="/.gatehouse/logout">'
    b'<button type="submit">Sign out</button></form></body></html>'
)
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
}

Session = dict[str, Any]


@dataclass(frozen=True, slots=True)
class SessionResult:
    """``identity`` is None when the session just ended (cookies clear it)."""

    identity: Identity | None
    set_cookies: tuple[str, ...] = ()


def _outcome(response: web.StreamResponse, outcome: EndpointOutcome) -> web.StreamResponse:
    response[ENDPOINT_OUTCOME] = outcome
    return response


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
        base = issuer_config or IssuerConfig(issuer=cfg.issuer, audiences=(cfg.client_id,))
        # ID tokens are verified like bearer tokens, but their audience is this client.
        self.id_token_cfg = dataclasses.replace(
            base, audiences=(cfg.client_id,), required_claims=(), introspection=None
        )
        self.provider = ProviderDiscovery(session, self.id_token_cfg, jwks)
        self.tokens = TokenClient(
            session,
            self.provider,
            self.id_token_cfg,
            client_id=cfg.client_id,
            secret=cfg.client_secret.read() if cfg.client_secret else None,
            # ID tokens arrive from the IdP over TLS, not from clients, and carry every
            # group: allow more than the bearer-token cap so big group lists still log in.
            max_token_bytes=max(max_token_bytes, ID_TOKEN_MAX_BYTES),
            clock=clock,
        )
        self.codec = CookieCodec(load_cookie_keys(cfg.cookie_keys_file))
        self.session_cookie = cfg.cookie_name
        self.login_cookie = login_cookie_name(cfg.cookie_name)
        self._cookie_budget = cookie_budget(DEFAULT_MAX_HEADER)
        self._claims_in_use: Callable[[], Iterable[str]] = tuple
        self._logins = RateLimiter()
        self._login_route = Route(
            name="gatehouse-login",
            backend="",
            source="identity.browser.login_rate_limit",
            rate_limit=cfg.login_rate_limit,
        )
        self._consumed: TTLCache[str, bool] = TTLCache(100_000, LOGIN_TTL, timer=clock)
        # Cookie-only sessions logged out here: refused by this process from then on,
        # so a refresh in flight during the logout cannot hand the session back.
        self._logged_out: TTLCache[str, bool] = TTLCache(
            100_000, max(cfg.session_lifetime, 1.0), timer=clock
        )
        # Old refresh token hash -> refresh in flight or just done, so parallel requests
        # carrying the same session never spend a rotating refresh token twice.
        self._refreshes: TTLCache[str, asyncio.Task[Session | None]] = TTLCache(
            10_000, 60, timer=clock
        )

    # -- wiring (before serving requests) ---------------------------------------
    def use_session_store(self, store: SessionStore | None) -> None:
        """Keep sessions server-side in ``store``."""
        self._store = store

    def use_listener_limit(self, max_header_size: int) -> None:
        """Bound cookie sessions so the Cookie header fits the listener's ``max_header_size``."""
        self._cookie_budget = cookie_budget(max_header_size)

    def use_claims_in_use(self, claims: Callable[[], Iterable[str]]) -> None:
        """Claim paths the loaded policy reads: a shrinking session never drops them."""
        self._claims_in_use = claims

    # -- lifecycle -----------------------------------------------------------
    async def start(self) -> None:
        await self.provider.start()

    async def close(self) -> None:
        await self.provider.close()
        for task in list(self._refreshes.values()):
            task.cancel()

    def ready(self) -> bool:
        return self.provider.ready()

    @property
    def metadata(self) -> ProviderMetadata | None:
        return self.provider.metadata

    def redirect_uri(self, host: str) -> str:
        return f"https://{host}{self.cfg.redirect_path}"

    # -- unauthenticated requests ------------------------------------------------
    async def login_response(self, facts: RequestFacts) -> web.Response:
        """401 JSON for API calls; for page navigations a redirect to the IdP."""
        if is_api_request(facts.method, facts.headers):
            return failure_response(CredentialsRequired(), facts.request_id)
        target = facts.path + (f"?{facts.query}" if facts.query else "")
        return await self._start_login(facts, target)

    async def _start_login(self, facts: RequestFacts, return_to: str) -> web.Response:
        # Each start costs the IdP a login page; the transaction itself is only a cookie.
        if not self._logins.allow(self._login_route, rate_key(None, facts), self._clock()):
            raise RateLimited(detail="login starts from this address over login_rate_limit")
        metadata = await self.provider.get()
        if metadata.authorization_endpoint is None:
            raise IdentityProviderUnavailable(detail="IdP has no authorization endpoint")
        state = secrets.token_urlsafe(32)
        nonce = secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(48)
        target = safe_redirect_target(return_to, self.cfg.allowed_redirect_hosts) or "/"
        transaction = {
            "state": state,
            "nonce": nonce,
            "verifier": verifier,
            "rd": target,
            "exp": self._clock() + LOGIN_TTL,
        }
        url = prepare_grant_uri(
            metadata.authorization_endpoint,
            self.cfg.client_id,
            "code",
            redirect_uri=self.redirect_uri(_authority(facts)),
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
    async def handle(self, request: RequestView, facts: RequestFacts) -> web.StreamResponse | None:
        """Serve ``/.gatehouse/{callback,login,logout}``; None for any other path."""
        path = facts.path
        if not path.startswith(PREFIX):
            return None
        if path == self.cfg.redirect_path:
            return await self._callback(request, facts)
        if path == LOGOUT_PATH:
            if facts.method == "POST":
                return await self._logout(facts)
            if facts.method in ("GET", "HEAD"):
                # A page that posts the logout: a link or an image cannot log anyone out.
                page = web.Response(body=LOGOUT_PAGE, content_type="text/html")
                page.headers.update(PAGE_HEADERS)
                return page
            return failure_response(MethodNotAllowed(allow=("GET", "POST")), facts.request_id)
        if path == LOGIN_PATH:
            return await self._start_login(facts, request.query.get("rd", "/"))
        return None

    async def _callback(self, request: RequestView, facts: RequestFacts) -> web.StreamResponse:
        cookies = parse_cookie_header(facts.headers.get("cookie"))
        clear_login = clear_cookie(self.login_cookie)
        try:
            tx = self._transaction(cookies, request.query)
            session = await self._exchange(_authority(facts), request.query, tx)
            # Replicas share the consumed states, recorded only for a login that
            # succeeded: a failed or forged callback leaves nothing in the store.
            if self._store is not None and not await self._store.consume_once(
                str(tx["state"]), LOGIN_TTL
            ):
                raise LoginFailed(Reason.INVALID_STATE, detail="state already used")
            session = self._fit(session)
        except StateUnavailable:
            raise
        except GatehouseError as exc:
            AUTH.labels(issuer=self.cfg.issuer, method="session", result=exc.reason).inc()
            # Whatever failed, the answer is a failed login: 400 with the reason.
            response = failure_response(LoginFailed(exc.reason), facts.request_id)
            response.headers.add("Set-Cookie", clear_login)
            return _outcome(response, EndpointOutcome(exc.reason, "deny"))
        AUTH.labels(issuer=self.cfg.issuer, method="session", result="login").inc()
        response = web.Response(
            status=302, headers={"Location": str(tx["rd"]), "Cache-Control": "no-store"}
        )
        response.headers.add("Set-Cookie", clear_login)
        if self._store is not None:
            await self._store.save(str(session["sid"]), session)
        for value in self._session_cookies(session, cookies):
            response.headers.add("Set-Cookie", value)
        return _outcome(response, self._audited(AuditReason.LOGIN, session))

    def _audited(self, reason: str, session: Mapping[str, Any] | None) -> EndpointOutcome:
        claims: Mapping[str, Any] = (session or {}).get("claims") or {}
        subject = claims.get(self.id_token_cfg.claims.subject)
        return EndpointOutcome(
            reason,
            subject=subject if isinstance(subject, str) else None,
            issuer=self.cfg.issuer if session is not None else None,
            auth="session" if session is not None else None,
        )

    def _transaction(self, cookies: Mapping[str, str], query: Mapping[str, str]) -> Session:
        sealed = cookies.get(self.login_cookie)
        tx = self.codec.open(self.login_cookie, sealed, now=self._clock()) if sealed else None
        if tx is None:
            raise LoginFailed(Reason.LOGIN_EXPIRED, detail="no valid login transaction cookie")
        state = query.get("state", "")
        if not hmac.compare_digest(state.encode(), str(tx.get("state", "")).encode()):
            raise LoginFailed(Reason.INVALID_STATE, detail="state does not match the cookie")
        if state in self._consumed:
            raise LoginFailed(Reason.INVALID_STATE, detail="state already used")
        self._consumed[state] = True
        if "error" in query:
            raise LoginFailed(detail="IdP returned an error")
        if not query.get("code"):
            raise LoginFailed(detail="callback without code")
        return tx

    async def _exchange(
        self, host: str, query: Mapping[str, str], tx: Mapping[str, Any]
    ) -> Session:
        tokens, claims = await self.tokens.redeem_code(
            query["code"], self.redirect_uri(host), str(tx["verifier"])
        )
        nonce = claims.get("nonce")
        if not isinstance(nonce, str) or not hmac.compare_digest(
            nonce.encode(), str(tx["nonce"]).encode()
        ):
            raise LoginFailed(Reason.INVALID_NONCE, detail="ID token nonce mismatch")
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
        claims: Mapping[str, Any] | None,
        previous: Mapping[str, Any] | None,
    ) -> Session:
        """Session fields from a token response; ``claims`` None: the response had no
        ID token, and the previous claims stand."""
        previous = previous or {}
        now = self._clock()
        expires_in = tokens.get("expires_in")
        at_exp = now + float(expires_in) if isinstance(expires_in, int | float) else None
        access_token = tokens.get("access_token")
        fields: Session = {
            # Big access tokens (group lists) would push the Cookie header past what
            # servers accept; identity then carries no token for exchange.
            "at": access_token
            if isinstance(access_token, str) and len(access_token) <= MAX_SESSION_TOKEN
            else None,
            "at_exp": at_exp,
            # IdPs that rotate refresh tokens send a new one; others keep the old one valid.
            "rt": tokens.get("refresh_token") or previous.get("rt"),
            # The IdP vouched for the caller just now: the revalidation clock restarts.
            "checked": now,
        }
        if claims is None:
            fields["claims"] = previous.get("claims", {})
            fields["unknown"] = previous.get("unknown", [])
        else:
            kept, left_out = session_claims(claims)
            unknown = left_out | overage_claims(claims, self.id_token_cfg.claims.groups)
            fields["claims"] = kept
            fields["unknown"] = sorted(unknown)
        return fields

    # -- sessions ------------------------------------------------------------------
    def _sealed(self, session: Mapping[str, Any]) -> str:
        content: Mapping[str, Any] = session
        if self._store is not None:
            # Only the id travels; sealing it means ids cannot be guessed or forged.
            content = {"ref": session["sid"], "exp": session["exp"]}
        return self.codec.seal(self.session_cookie, content)

    def _fit(self, session: Session) -> Session:
        """``session`` shrunk until its cookies fit the listener's header limit (see
        :func:`~proxy.identity.session_claims.shrink`); a session that cannot fit is
        refused (``session_too_large``): every request carrying it would get 431."""
        if self._store is not None:
            return session  # the cookie is a short reference
        budget = self._cookie_budget
        needed = needed_claims(self.id_token_cfg.claims, self._claims_in_use())
        fitted = shrink(session, needed, lambda s: self._cookie_bytes(s) <= budget)
        if fitted is None:
            log.warning(
                "browser session of %d bytes does not fit the %d-byte cookie budget "
                "(listen.max_header_size): login refused; configure state: (Redis) to keep "
                "sessions server-side, or raise listen.max_header_size",
                self._cookie_bytes(session),
                budget,
            )
            raise LoginFailed(Reason.SESSION_TOO_LARGE, detail="session over the cookie budget")
        return fitted

    def _cookie_bytes(self, session: Mapping[str, Any]) -> int:
        return cookie_header_bytes(self.session_cookie, self._sealed(session))

    def _session_cookies(self, session: Mapping[str, Any], present: Mapping[str, str]) -> list[str]:
        max_age = int(float(session["exp"]) - self._clock())
        value = self._sealed(session)
        return write_chunked(self.session_cookie, value, present, CookieAttrs(max_age=max_age))

    def read_session(self, cookies: Mapping[str, str]) -> Session | None:
        """The session cookie's sealed content (a whole session, or a store reference)."""
        value = read_chunked(self.session_cookie, cookies)
        if value is None:
            return None
        return self.codec.open(self.session_cookie, value, now=self._clock())

    async def _load_session(self, cookies: Mapping[str, str]) -> Session | None:
        content = self.read_session(cookies)
        if content is None:
            return None
        ref = content.get("ref")
        if self._store is None:
            # A reference cookie from a store-backed deployment is no session by itself.
            if ref is not None or str(content.get("sid")) in self._logged_out:
                return None
            return content
        if not isinstance(ref, str):
            return None  # a whole-session cookie from before the store: log in again
        session = await self._store.load(ref)
        if session is None or session.get("sid") != ref:
            return None  # logged out (on any replica) or expired
        return session

    def _usable(self, session: Mapping[str, Any]) -> bool:
        at_exp = session.get("at_exp")
        return isinstance(at_exp, int | float) and at_exp > self._clock()

    def _lapsed(self, session: Mapping[str, Any]) -> bool:
        """Not confirmed by the IdP (login or refresh) for ``revalidate_interval``."""
        interval = self.cfg.revalidate_interval
        if interval <= 0:
            return False
        checked = session.get("checked", session.get("iat"))
        return not isinstance(checked, int | float) or self._clock() - checked >= interval

    def _refresh_due(self, session: Mapping[str, Any]) -> bool:
        if not session.get("rt"):
            return False
        at_exp = session.get("at_exp")
        expiring = (
            isinstance(at_exp, int | float) and at_exp - self._clock() < self.cfg.refresh_margin
        )
        return expiring or self._lapsed(session)

    async def authenticate(self, facts: RequestFacts) -> SessionResult | None:
        cookies = parse_cookie_header(facts.headers.get("cookie"))
        session = await self._load_session(cookies)
        if session is None:
            return None
        if changes_state(facts.method, facts.headers) and not from_this_origin(
            facts.headers, facts.scheme
        ):
            # SameSite=Lax still sends the cookie from sibling hosts of the same site.
            raise AccessDenied(
                Reason.CROSS_SITE_REQUEST, detail="session request from another origin"
            )
        set_cookies: tuple[str, ...] = ()
        if self._refresh_due(session):
            refreshed = await self._refresh_once(session)
            if refreshed is None or str(session["sid"]) in self._logged_out:
                # The IdP refused the refresh token (or a logout came first): the session is over.
                AUTH.labels(issuer=self.cfg.issuer, method="session", result="refresh_failed").inc()
                return self._ended(cookies)
            session = refreshed
            if self._store is None:
                try:
                    session = self._fit(session)
                except LoginFailed:
                    return self._ended(cookies)
                set_cookies = tuple(self._session_cookies(session, cookies))
        elif self._lapsed(session):
            # No refresh token to re-check with the IdP: the session ends, and the next
            # page view goes through the IdP (silently, while its own session lives).
            AUTH.labels(issuer=self.cfg.issuer, method="session", result="revalidate").inc()
            return self._ended(cookies)
        AUTH.labels(issuer=self.cfg.issuer, method="session", result="ok").inc()
        return SessionResult(self._identity(session), set_cookies)

    def _ended(self, cookies: Mapping[str, str]) -> SessionResult:
        return SessionResult(None, tuple(clear_all(self.session_cookie, cookies)))

    def _identity(self, session: Mapping[str, Any]) -> Identity:
        claims = dict(session.get("claims") or {})
        identity = identity_from_claims(claims, self.id_token_cfg, "session", session.get("at"))
        return dataclasses.replace(
            identity,
            expires_at=float(session["exp"]),
            unknown_claims=frozenset(session.get("unknown") or ()) | identity.unknown_claims,
        )

    async def _refresh_once(self, session: Session) -> Session | None:
        key = hashlib.sha256(str(session["rt"]).encode()).hexdigest()
        task = self._refreshes.get(key)
        if task is None:
            if self._store is None:
                refresh = self._refresh(session)
            else:
                refresh = refresh_stored(
                    self._store,
                    session,
                    self._refresh,
                    due=self._refresh_due,
                    usable=self._usable,
                    deadline=REFRESH_DEADLINE,
                )
            task = asyncio.get_running_loop().create_task(refresh)
            self._refreshes[key] = task
            task.add_done_callback(lambda t: self._forget_failed(key, t))
        return await asyncio.shield(task)

    def _forget_failed(self, key: str, task: asyncio.Task[Session | None]) -> None:
        # Only successful refreshes are shared; after an IdP error the next request retries.
        if task.cancelled() or task.exception() is not None:
            self._refreshes.pop(key, None)

    async def _refresh(self, session: Session) -> Session | None:
        """The session with fresh tokens; None when the IdP refused the refresh token;
        ``session`` itself when the IdP is away and its access token still valid."""
        try:
            async with asyncio.timeout(REFRESH_DEADLINE):
                return await self._refresh_tokens(session)
        except (IdentityProviderUnavailable, TimeoutError):
            if self._usable(session):
                return session  # still valid: try again on a later request
            raise IdentityProviderUnavailable(detail="session refresh failed") from None

    async def _refresh_tokens(self, session: Session) -> Session | None:
        answer = await self.tokens.refresh(str(session["rt"]))
        if answer is None:
            return None
        tokens, claims = answer
        previous: Mapping[str, Any] = session.get("claims") or {}
        if claims is not None and claims.get("sub") != previous.get("sub"):
            return None
        return {**session, **self._token_fields(tokens, claims, session)}

    async def _logout(self, facts: RequestFacts) -> web.StreamResponse:
        if not from_this_origin(facts.headers, facts.scheme):
            refused = AccessDenied(Reason.CROSS_SITE_REQUEST)
            response = failure_response(refused, facts.request_id)
            return _outcome(response, EndpointOutcome(refused.reason, "deny"))
        cookies = parse_cookie_header(facts.headers.get("cookie"))
        content = self.read_session(cookies)
        session: Mapping[str, Any] | None = content
        ref = content.get("ref") if content is not None else None
        if self._store is not None and isinstance(ref, str):
            session = await self._store.load(ref)
            # Revoked everywhere, or (store unreachable) a 503: never a logout that did not happen.
            await self._store.delete(ref)
        elif content is not None and ref is None:
            self._logged_out[str(content.get("sid"))] = True
        location = "/"
        metadata = self.metadata
        if metadata is not None and metadata.end_session_endpoint:
            # client_id instead of id_token_hint: ID tokens are not kept in the cookie.
            params = {
                "client_id": self.cfg.client_id,
                "post_logout_redirect_uri": f"https://{_authority(facts)}/",
            }
            location = f"{metadata.end_session_endpoint}?{urlencode(params)}"
        # 303: the browser follows a POST's redirect with a GET.
        response = web.Response(
            status=303, headers={"Location": location, "Cache-Control": "no-store"}
        )
        for value in clear_all(self.session_cookie, cookies):
            response.headers.add("Set-Cookie", value)
        if self.session_cookie not in cookies:
            response.headers.add("Set-Cookie", clear_cookie(self.session_cookie))
        return _outcome(response, self._audited(AuditReason.LOGOUT, session))


def _authority(facts: RequestFacts) -> str:
    """Host and port as the browser addressed us: callback URLs must carry the port.

    ``facts.host`` is port-less because routing ignores ports; the IdP only
    accepts the exact registered redirect URI, so a forged Host goes nowhere.
    """
    return facts.headers.get("host") or facts.host
