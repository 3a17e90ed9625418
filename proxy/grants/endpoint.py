"""``/.gatehouse/access/``: the access page for people and the JSON API for programs.

Both are called with the caller's own credentials, authenticated by the
proxy's Authenticator exactly as a proxied request would be (bearer token,
API key, client certificate, browser session). The page needs browser login.

Cross-site requests: page forms carry a CSRF token (:mod:`proxy.grants.csrf`)
and must come from this site (``Origin``/``Sec-Fetch-Site``); JSON API calls
that change anything must be ``Content-Type: application/json``, which no
cross-site form can send without a CORS preflight this endpoint never
answers, so ambient credentials (session cookie, client certificate) cannot
be ridden either way.

Every response carries an EndpointOutcome: the request's one audit record names
the caller, what was decided (``grant_requested``, ``grant_approved``,
``self_approval``...) and the grant.

API (JSON in and out; every body below is an object)::

    GET  /.gatehouse/access/api/routes                  what can be requested
    POST /.gatehouse/access/api/requests                {route, rule?, duration?,
                                                          justification?, start?}
    GET  /.gatehouse/access/api/requests                my requests
    GET  /.gatehouse/access/api/approvals               requests I may decide
    GET  /.gatehouse/access/api/requests/{id}           one (its state, window, audit trail)
    POST /.gatehouse/access/api/requests/{id}/approve   {reason}   (also deny, revoke)
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from importlib import resources
from typing import Any, cast
from urllib.parse import parse_qs, urlencode

import orjson
from aiohttp import web

from proxy.config.reader import parse_duration
from proxy.errors import (
    AuditReason,
    AuthenticationError,
    BodyTooLarge,
    GatehouseError,
    GrantError,
    GrantForbidden,
    MethodNotAllowed,
    Reason,
    RouteNotFound,
)
from proxy.grants import csrf, page
from proxy.grants.model import Action, Grant, actor_dict
from proxy.grants.service import GrantService, actor_of
from proxy.http.protocol import Request, RequestView
from proxy.http.responses import failure_response
from proxy.identity.authenticate import Authenticator
from proxy.identity.same_origin import from_this_origin
from proxy.identity.session import CookieAttrs, parse_cookie_header, render_set_cookie
from proxy.model import Identity, RequestFacts
from proxy.observability.audit import ENDPOINT_OUTCOME, EndpointOutcome
from proxy.policy.criteria.base import describe_tree

PREFIX = page.PREFIX
MAX_BODY = 16 * 1024
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
_PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # "no-referrer" would make form posts send Origin: null
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
}
_ID = r"g_[A-Za-z0-9_-]{1,64}"
_ACTIONS: dict[str, Action] = {"approve": "approve", "deny": "deny", "revoke": "revoke"}
_PAGE_ONE = re.compile(rf"^{PREFIX}/requests/({_ID})$")
_PAGE_ACT = re.compile(rf"^{PREFIX}/requests/({_ID})/(approve|deny|revoke)$")
_API_ONE = re.compile(rf"^{PREFIX}/api/requests/({_ID})$")
_API_ACT = re.compile(rf"^{PREFIX}/api/requests/({_ID})/(approve|deny|revoke)$")
# Credentials a browser attaches by itself: unsafe page requests need the CSRF token.
_AMBIENT = frozenset({"session", "mtls"})


class _Reply(Exception):
    """A finished response, raised from deep inside a handler (a login redirect)."""

    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__("reply")
        self.response = response


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(data),
        content_type="application/json",
        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
    )


def _html(body: str, status: int = 200) -> web.Response:
    return web.Response(
        status=status, text=body, content_type="text/html", charset="utf-8", headers=_PAGE_HEADERS
    )


def _see(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})


def public(grant: Grant, now: float) -> dict[str, Any]:
    """A grant as the API shows it (its state as of now)."""
    remaining = None
    if grant.state == "active" and grant.ends_at is not None:
        remaining = max(0.0, grant.ends_at - now)
    return {
        "id": grant.id,
        "route": grant.route,
        "rule": grant.rule,
        "state": grant.state,
        "requester": actor_dict(grant.requester),
        "duration": grant.duration,
        "justification": grant.justification,
        "requested_at": grant.requested_at,
        "decide_by": grant.decide_by,
        "start_at": grant.start_at,
        "starts_at": grant.starts_at,
        "ends_at": grant.ends_at,
        "remaining": remaining,
        "decided_by": actor_dict(grant.decided_by),
        "decided_at": grant.decided_at,
        "history": [
            {"at": e.at, "event": e.action, "actor": actor_dict(e.actor), "reason": e.reason}
            for e in grant.history
        ],
    }


def _duration(value: object) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        seconds = parse_duration(value)
        if seconds is not None:
            return seconds
    raise GrantError(Reason.INVALID_DURATION, detail="duration must be seconds or like 2h")


def _instant(value: object) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            moment = None
        if moment is not None and moment.tzinfo is not None:
            return moment.timestamp()
    raise GrantError(Reason.INVALID_START, detail="start must be a Unix time or ISO 8601 with zone")


def _text(value: object) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise GrantError(Reason.INVALID_REQUEST, detail="expected a string")
    return value


async def _body(request: RequestView) -> bytes:
    """The request body, at most MAX_BODY bytes (413 beyond)."""
    if not isinstance(request, Request):
        return b""
    length = request.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > MAX_BODY:
        raise BodyTooLarge(detail="access API body over 16 KiB")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.body():
        size += len(chunk)
        if size > MAX_BODY:
            raise BodyTooLarge(detail="access API body over 16 KiB")
        chunks.append(chunk)
    return b"".join(chunks)


def _form(body: bytes) -> dict[str, str]:
    try:
        fields = parse_qs(body.decode("utf-8"), max_num_fields=16, keep_blank_values=True)
    except (UnicodeDecodeError, ValueError):
        raise GrantError(Reason.INVALID_REQUEST, detail="form is not UTF-8 urlencoded") from None
    return {name: values[0] for name, values in fields.items() if len(values) == 1}


class AccessEndpoint:
    """The local endpoint for ``/.gatehouse/access/*`` (None for every other path)."""

    def __init__(
        self,
        service: GrantService,
        authenticator: Authenticator | None,
        *,
        csrf_keys: list[bytes] | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.service = service
        self.authenticator = authenticator
        self._csrf_keys = csrf_keys
        self._clock = clock
        self._style = resources.files("proxy.grants").joinpath("access.css").read_bytes()

    async def __call__(
        self, request: RequestView, facts: RequestFacts
    ) -> web.StreamResponse | None:
        path = facts.path
        if path != PREFIX and not path.startswith(PREFIX + "/"):
            return None
        note: list[EndpointOutcome] = []
        cookies: list[str] = []
        try:
            response = await self._route(request, facts, path, note, cookies)
        except _Reply as reply:
            response = reply.response
        except AuthenticationError as exc:
            response = failure_response(exc, facts.request_id)
            note.append(EndpointOutcome(exc.reason, decision="deny"))
        except GatehouseError as exc:
            response = failure_response(exc, facts.request_id)
            note.append(self._refusal(note, exc.reason))
        for value in cookies:
            response.headers.add("Set-Cookie", value)
        if note:
            response[ENDPOINT_OUTCOME] = note[-1]
        return response

    @staticmethod
    def _refusal(note: list[EndpointOutcome], reason: str) -> EndpointOutcome:
        """The refusal, keeping who the caller was when that is already known."""
        who = note[-1] if note else None
        return EndpointOutcome(
            reason,
            decision="deny",
            subject=who.subject if who else None,
            issuer=who.issuer if who else None,
            auth=who.auth if who else None,
            grant_id=who.grant_id if who else None,
        )

    # -- dispatch ------------------------------------------------------------------------
    async def _route(
        self,
        request: RequestView,
        facts: RequestFacts,
        path: str,
        note: list[EndpointOutcome],
        cookies: list[str],
    ) -> web.StreamResponse:
        method = facts.method
        if path == f"{PREFIX}/style.css":
            self._only(method, "GET")
            note.append(EndpointOutcome(AuditReason.GATEHOUSE_ENDPOINT))
            return web.Response(
                body=self._style,
                content_type="text/css",
                headers={
                    "Cache-Control": "public, max-age=3600",
                    "X-Content-Type-Options": "nosniff",
                },
            )
        if path.startswith(f"{PREFIX}/api/"):
            return await self._api(request, facts, path, note, cookies)
        if self._csrf_keys is None:
            raise RouteNotFound(detail="the access page needs browser login")
        if path in (PREFIX, PREFIX + "/"):
            self._only(method, "GET")
            return await self._overview(facts, note, cookies)
        if path == f"{PREFIX}/requests":
            self._only(method, "POST")
            return await self._form_request(request, facts, note, cookies)
        match = _PAGE_ONE.match(path)
        if match:
            self._only(method, "GET")
            return await self._detail(facts, match.group(1), note, cookies)
        match = _PAGE_ACT.match(path)
        if match:
            self._only(method, "POST")
            action = _ACTIONS[match.group(2)]
            return await self._form_decide(request, facts, match.group(1), action, note, cookies)
        raise RouteNotFound()

    async def _api(
        self,
        request: RequestView,
        facts: RequestFacts,
        path: str,
        note: list[EndpointOutcome],
        cookies: list[str],
    ) -> web.StreamResponse:
        method, service, now = facts.method, self.service, self._clock()
        if path == f"{PREFIX}/api/routes":
            self._only(method, "GET")
            await self._who(facts, note, cookies, api=True)
            return _json({"routes": self._requestable()})
        if path == f"{PREFIX}/api/requests":
            self._only(method, "GET", "POST")
            caller = await self._who(facts, note, cookies, api=True)
            if method == "GET":
                return _json({"requests": [public(g, now) for g in await service.mine(caller)]})
            data = await self._json_body(request)
            outcome = await service.request(
                caller,
                route=_text(data.get("route")),
                rule=_text(data.get("rule")) or None,
                duration=_duration(data.get("duration")),
                justification=_text(data.get("justification")),
                start_at=_instant(data.get("start")),
            )
            self._noted(note, outcome.reason, outcome.grant)
            return _json(public(outcome.grant, now), 201)
        if path == f"{PREFIX}/api/approvals":
            self._only(method, "GET")
            caller = await self._who(facts, note, cookies, api=True)
            found = await service.decidable(caller, facts)
            return _json({"requests": [public(g, now) for g in found]})
        match = _API_ONE.match(path)
        if match:
            self._only(method, "GET")
            caller = await self._who(facts, note, cookies, api=True)
            self._noted(note, AuditReason.GATEHOUSE_ENDPOINT, None, match.group(1))
            return _json(public(await service.view(caller, facts, match.group(1)), now))
        match = _API_ACT.match(path)
        if match:
            self._only(method, "POST")
            caller = await self._who(facts, note, cookies, api=True)
            grant_id, action = match.group(1), _ACTIONS[match.group(2)]
            self._noted(note, AuditReason.GATEHOUSE_ENDPOINT, None, grant_id)
            data = await self._json_body(request)
            outcome = await service.decide(
                caller, facts, grant_id, action, _text(data.get("reason"))
            )
            self._noted(note, outcome.reason, outcome.grant)
            return _json(public(outcome.grant, self._clock()))
        raise RouteNotFound()

    @staticmethod
    def _only(method: str, *allowed: str) -> None:
        if method not in allowed:
            raise MethodNotAllowed(allow=allowed, detail=f"use {', '.join(allowed)}")

    async def _json_body(self, request: RequestView) -> Mapping[str, object]:
        kind = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if kind != "application/json":
            # Also the CSRF defence: a cross-site form cannot send this type.
            raise GrantError(Reason.JSON_REQUIRED, detail="send Content-Type: application/json")
        try:
            data = orjson.loads(await _body(request))
        except orjson.JSONDecodeError:
            raise GrantError(Reason.INVALID_REQUEST, detail="body is not JSON") from None
        if not isinstance(data, dict):
            raise GrantError(Reason.INVALID_REQUEST, detail="body must be a JSON object")
        return cast(dict[str, object], data)

    def _requestable(self) -> list[dict[str, object]]:
        return [
            {
                "route": item.route.name,
                "rule": item.spec.rule,
                "max_duration": item.spec.max_duration,
                "justification": item.spec.justification,
                "approvers": describe_tree(item.spec.approvers),
            }
            for item in self.service.requestable()
        ]

    # -- who is calling ------------------------------------------------------------------
    async def _who(
        self, facts: RequestFacts, note: list[EndpointOutcome], cookies: list[str], *, api: bool
    ) -> Identity:
        authenticator = self.authenticator
        if authenticator is None:
            raise RouteNotFound(detail="grants need identity configured")
        auth = authenticator.cached(facts) or await authenticator.authenticate_full(facts)
        cookies.extend(auth.set_cookies)
        if auth.identity is None:
            if not api:
                login = await authenticator.login_response(facts)
                if login is not None:
                    note.append(EndpointOutcome(Reason.UNAUTHENTICATED, decision="deny"))
                    raise _Reply(login)
            raise AuthenticationError()
        identity = auth.identity
        note.append(
            EndpointOutcome(
                AuditReason.GATEHOUSE_ENDPOINT,
                subject=identity.subject,
                issuer=identity.issuer,
                auth=identity.method,
            )
        )
        return identity

    @staticmethod
    def _noted(
        note: list[EndpointOutcome], reason: str, grant: Grant | None, grant_id: str | None = None
    ) -> None:
        who = note[-1]
        note.append(
            EndpointOutcome(
                reason,
                subject=who.subject,
                issuer=who.issuer,
                auth=who.auth,
                grant_id=grant.id if grant is not None else grant_id,
            )
        )

    # -- the page --------------------------------------------------------------------------
    def _nonce(self, facts: RequestFacts, cookies: list[str]) -> str:
        """This browser's CSRF nonce, set now when it has none."""
        nonce = parse_cookie_header(facts.headers.get("cookie")).get(csrf.COOKIE)
        if nonce and 20 <= len(nonce) <= 64:
            return nonce
        nonce = csrf.new_nonce()
        cookies.append(
            render_set_cookie(
                csrf.COOKIE, nonce, CookieAttrs(max_age=csrf.MAX_AGE, same_site="Strict")
            )
        )
        return nonce

    def _viewer(self, identity: Identity, nonce: str) -> page.Viewer:
        keys = self._csrf_keys
        assert keys is not None
        token = csrf.token(keys, nonce, identity.issuer, identity.subject, self._clock())
        return page.Viewer(actor_of(identity), tuple(sorted(identity.groups)), token)

    async def _overview(
        self, facts: RequestFacts, note: list[EndpointOutcome], cookies: list[str]
    ) -> web.Response:
        identity = await self._who(facts, note, cookies, api=False)
        viewer = self._viewer(identity, self._nonce(facts, cookies))
        query = parse_qs(facts.query, max_num_fields=4)
        service = self.service
        data = page.Overview(
            viewer=viewer,
            to_decide=await service.decidable(identity, facts),
            overseen=await service.overseen(identity, facts),
            mine=await service.mine(identity),
            requestable=service.requestable(),
            now=self._clock(),
            done=next(iter(query.get("done", [])), None),
            problem=next(iter(query.get("problem", [])), None),
        )
        return _html(page.overview(data))

    async def _detail(
        self, facts: RequestFacts, grant_id: str, note: list[EndpointOutcome], cookies: list[str]
    ) -> web.Response:
        identity = await self._who(facts, note, cookies, api=False)
        self._noted(note, AuditReason.GATEHOUSE_ENDPOINT, None, grant_id)
        viewer = self._viewer(identity, self._nonce(facts, cookies))
        grant = await self.service.view(identity, facts, grant_id)
        spec = self.service.catalogue().spec(grant.route, grant.rule)
        approver = self.service.is_approver(spec, identity, facts)
        mine = viewer.actor.same_person(grant.requester)
        open_ = grant.state in ("pending", "approved", "active")
        return _html(
            page.detail(
                grant,
                viewer,
                self._clock(),
                can_decide=grant.state == "pending" and approver and not mine,
                can_revoke=open_ and (approver or viewer.actor.same_identity(grant.requester)),
            )
        )

    async def _checked_form(
        self,
        request: RequestView,
        facts: RequestFacts,
        note: list[EndpointOutcome],
        cookies: list[str],
    ) -> tuple[Identity, dict[str, str]]:
        """The caller and the form they sent, after the cross-site checks."""
        identity = await self._who(facts, note, cookies, api=False)
        form = _form(await _body(request))
        if identity.method in _AMBIENT:
            keys = self._csrf_keys
            assert keys is not None
            nonce = parse_cookie_header(facts.headers.get("cookie")).get(csrf.COOKIE)
            if not from_this_origin(facts.headers, facts.scheme) or not csrf.valid(
                keys,
                form.get(csrf.FIELD, ""),
                nonce,
                identity.issuer,
                identity.subject,
                self._clock(),
            ):
                raise GrantForbidden(Reason.CSRF_FAILED, detail="missing or wrong CSRF token")
        return identity, form

    async def _form_request(
        self,
        request: RequestView,
        facts: RequestFacts,
        note: list[EndpointOutcome],
        cookies: list[str],
    ) -> web.Response:
        identity, form = await self._checked_form(request, facts, note, cookies)
        route, _, rule = form.get("target", "").partition(" ")
        return await self._after_form(
            note,
            lambda: self.service.request(
                identity,
                route=route,
                rule=rule or None,
                duration=_duration(form.get("duration", "").strip()),
                justification=form.get("justification", ""),
            ),
            "requested",
        )

    async def _form_decide(
        self,
        request: RequestView,
        facts: RequestFacts,
        grant_id: str,
        action: Action,
        note: list[EndpointOutcome],
        cookies: list[str],
    ) -> web.Response:
        identity, form = await self._checked_form(request, facts, note, cookies)
        self._noted(note, AuditReason.GATEHOUSE_ENDPOINT, None, grant_id)
        done = {"approve": "approved", "deny": "denied", "revoke": "revoked"}[action]
        return await self._after_form(
            note,
            lambda: self.service.decide(identity, facts, grant_id, action, form.get("reason", "")),
            done,
        )

    async def _after_form(
        self, note: list[EndpointOutcome], step: Callable[[], Awaitable[Any]], done: str
    ) -> web.Response:
        """Post/redirect/get: back to the page with what happened (or what went wrong)."""
        try:
            outcome = await step()
        except GrantError as exc:
            if exc.reason == Reason.CSRF_FAILED:
                raise
            note.append(self._refusal(note, exc.reason))
            return _see(f"{PREFIX}/?{urlencode({'problem': exc.reason})}")
        self._noted(note, outcome.reason, outcome.grant)
        return _see(f"{PREFIX}/?{urlencode({'done': done})}#{outcome.grant.id}")
