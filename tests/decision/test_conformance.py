"""Decision mode behind real data planes: nginx, Caddy and HAProxy, started from deploy/decision/.

Each case runs against both, in front of the same Gatehouse (listen.mode:
decision), the real OpenID provider, the Google metadata-server emulator and
a FastAPI upstream under uvicorn that records what it receives.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import aiohttp
import jwt
from yarl import URL

from tests.decision.stack import (
    FUNCTION_AUDIENCE,
    PUBLIC_URL,
    DataPlane,
    RawResponse,
    Stack,
    raw_request,
)
from tests.decision.upstream import Seen, seen_with
from tests.identity.browser_env import HTML, follow_login

JSON = {"Accept": "application/json"}
# Data planes that pass Gatehouse's own answer on for any status; nginx's
# auth_request knows only 2xx, 401 and 403, writes its own pages, and turns
# every other status into 500.
RELAY_ANSWERS = {"caddy", "haproxy"}


def call(
    stack: Stack, plane: DataPlane, target: str, *, token: str | None = None, **headers: str
) -> tuple[RawResponse, str]:
    """A request through ``plane`` with a fresh marker header; returns the answer and the marker."""
    marker = uuid.uuid4().hex
    sent = [("X-Test-Case", marker), ("Accept", "application/json")]
    if token:
        sent.append(("Authorization", f"Bearer {token}"))
    sent += [(k.replace("_", "-"), v) for k, v in headers.items()]
    return raw_request(plane.port, target, headers=sent, context=stack.client_ssl()), marker


def upstream_saw(marker: str) -> Seen:
    seen = seen_with("x-test-case", marker)
    assert len(seen) == 1, f"the upstream received {len(seen)} requests for one call"
    return seen[0]


def decided(stack: Stack, seen: Seen) -> dict[str, Any]:
    """The one audit record of the decision behind a request the upstream received."""
    rid = seen.header("x-request-id")
    assert rid, "the data plane sent no request id"
    records = stack.records(rid)
    assert len(records) == 1, records
    return records[0]


def gatehouse_keys(stack: Stack, plane: DataPlane) -> jwt.PyJWKSet:
    """Gatehouse's assertion keys, fetched through the data plane as an upstream would."""
    answer = raw_request(plane.port, "/.well-known/gatehouse/jwks.json", context=stack.client_ssl())
    assert answer.status == 200, answer
    return jwt.PyJWKSet.from_dict(json.loads(answer.body))


def verify_assertion(keys: jwt.PyJWKSet, token: str) -> dict[str, Any]:
    kid = jwt.get_unverified_header(token)["kid"]
    claims: dict[str, Any] = jwt.decode(
        token,
        keys[kid].key,
        algorithms=["ES256"],
        issuer=PUBLIC_URL,
        audience="fn",
        options={"require": ["iss", "aud", "exp", "iat", "jti"]},
    )
    return claims


def verify_id_token(stack: Stack, header: str | None, at: float) -> str:
    """The Google ID token a Cloud Function would accept, unexpired when it arrived."""
    assert header is not None and header.startswith("Bearer ")
    token = header.removeprefix("Bearer ")
    claims = stack.google.issuer.verify(token, audience=FUNCTION_AUDIENCE)
    assert claims["exp"] > at
    return token


# -- allow ------------------------------------------------------------------------------
async def test_an_allowed_call_reaches_the_upstream_with_the_assertion_and_a_cloud_credential(
    stack: Stack, plane: DataPlane
) -> None:
    token = stack.provider.client_credentials_token()
    answer, marker = call(stack, plane, "/echo/deploy/x?q=1", token=token)
    assert answer.status == 200, answer
    seen = upstream_saw(marker)
    assert (seen.method, seen.raw_path, seen.query) == ("GET", "/echo/deploy/x", "q=1")
    assert seen.header("x-gatehouse-subject") == "svc-ci"
    assert seen.header("x-gatehouse-groups") == "deployers"
    claims = verify_assertion(
        gatehouse_keys(stack, plane), seen.header("x-gatehouse-assertion") or ""
    )
    assert (claims["sub"], claims["groups"]) == ("svc-ci", ["deployers"])
    verify_id_token(stack, seen.header("x-serverless-authorization"), seen.at)
    # The caller's token was for Gatehouse: it never reaches the upstream.
    assert seen.header("authorization") is None
    assert token not in json.dumps(seen.headers)
    record = decided(stack, seen)
    assert record["mode"] == "decision"
    assert (record["method"], record["path"], record["host"]) == (
        "GET",
        "/echo/deploy/x",
        f"localhost:{plane.port}",
    )
    assert (record["route"], record["decision"], record["status"]) == ("deploy", "allow", 200)
    assert (record["subject"], record["auth"]) == ("svc-ci", "jwt")
    assert record["upstream_status"] is None and record["attempts"] == 0


# -- deny -------------------------------------------------------------------------------
async def test_a_denied_call_never_reaches_the_upstream(stack: Stack, plane: DataPlane) -> None:
    token = stack.provider.client_credentials_token()
    answer, marker = call(stack, plane, f"/echo/admin/{marker_path()}", token=token)
    assert answer.status == 403
    assert not seen_with("x-test-case", marker)
    if plane.name in RELAY_ANSWERS:
        assert json.loads(answer.body) == {
            "error": "no_rule_matched",
            "status": 403,
            "request_id": answer.header("X-Request-Id"),
        }


def marker_path() -> str:
    return uuid.uuid4().hex


async def test_errors_keep_gatehouses_status_and_reason_in_the_answer_or_the_audit(
    stack: Stack, plane: DataPlane
) -> None:
    """404, 429 and 503 travel as they are through Caddy and HAProxy; nginx answers 500,
    while the audit record keeps the real reason."""
    cases = [
        (f"/echo/nothing/{marker_path()}", 404, "route_not_found"),
        (f"/echo/broken/{marker_path()}", 503, "upstream_credentials_unavailable"),
    ]
    limited = f"/echo/limited/{marker_path()}"
    call(stack, plane, limited)  # spends the bucket (if the other data plane did not)
    cases.append((limited, 429, "rate_limited"))
    for target, status, reason in cases:
        answer, marker = call(stack, plane, target)
        assert not seen_with("x-test-case", marker)
        if plane.name in RELAY_ANSWERS:
            assert answer.status == status
            assert json.loads(answer.body) == {
                "error": reason,
                "status": status,
                "request_id": answer.header("X-Request-Id"),
            }
        else:
            assert answer.status == 500
        rid = answer.header("X-Request-Id")
        assert rid is not None
        records = stack.records(rid)
        assert [(r["path"], r["status"], r["reason"], r["mode"]) for r in records] == [
            (target, status, reason, "decision")
        ]


# -- API 401 versus browser sign-in ---------------------------------------------------------
async def test_api_calls_get_401_and_browsers_sign_in_through_the_data_plane_without_a_loop(
    stack: Stack, plane: DataPlane
) -> None:
    answer, marker = call(stack, plane, "/echo/app/page")
    assert answer.status == 401
    assert answer.header("WWW-Authenticate") == 'Bearer realm="gatehouse"'  # no credential sent
    assert json.loads(answer.body)["error"] == "unauthenticated"
    assert not seen_with("x-test-case", marker)

    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=stack.client_ssl()),
        cookie_jar=aiohttp.CookieJar(unsafe=True),
    ) as http:
        http.cookie_jar.update_cookies({"theme": "dark"}, URL(plane.url))
        page = f"{plane.url}/echo/app/page?tab=2"
        async with http.get(page, headers=HTML, allow_redirects=False) as r:
            assert r.status == 302
            login = r.headers["Location"]
        # On the host the user sees, never Gatehouse's own address.
        assert login == f"{plane.url}/.gatehouse/login?rd=/echo/app/page%3Ftab%3D2"
        callback = await follow_login(
            http,
            login,
            issuer=stack.provider.issuer,
            callback_prefix=f"{plane.url}/.gatehouse/callback",
        )
        async with http.get(callback, headers=HTML, allow_redirects=False) as r:
            assert r.status == 302, await r.text()
            assert r.headers["Location"] == "/echo/app/page?tab=2"
        cookies = {c.key: c for c in http.cookie_jar}
        assert any(name.startswith("__Host-gatehouse") for name in cookies)
        # Back on the page: allowed at once, no further redirect (no loop).
        marker = uuid.uuid4().hex
        async with http.get(
            page, headers={**HTML, "X-Test-Case": marker}, allow_redirects=False
        ) as r:
            assert r.status == 200, await r.text()
        # The session changes state only from a page of this origin: the data plane
        # passes the browser's Sec-Fetch-Site, Origin and Upgrade on to the decision.
        cross_site = uuid.uuid4().hex
        hijack = uuid.uuid4().hex
        same_site = uuid.uuid4().hex
        async with http.post(
            page, headers={"Sec-Fetch-Site": "cross-site", "X-Test-Case": cross_site}
        ) as r:
            assert r.status == 403
        async with http.get(
            page,
            headers={
                "Origin": "https://evil.example",
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                "Sec-WebSocket-Version": "13",
                "X-Test-Case": hijack,
            },
            allow_redirects=False,
        ) as r:
            assert r.status == 403
        async with http.post(
            page, headers={"Sec-Fetch-Site": "same-origin", "X-Test-Case": same_site}
        ) as r:
            assert r.status == 200
        assert not seen_with("x-test-case", cross_site) and not seen_with("x-test-case", hijack)
        assert upstream_saw(same_site).method == "POST"
    seen = upstream_saw(marker)
    assert seen.header("x-gatehouse-subject") == "alice"
    assert seen.header("x-gatehouse-email") == "alice@example.test"
    assert seen.header("x-gatehouse-groups") == "eng"
    # The application's own cookie arrives; Gatehouse's session never does.
    assert seen.header("cookie") == "theme=dark"
    record = decided(stack, seen)
    assert (record["auth"], record["subject"], record["path"]) == (
        "session",
        "alice",
        "/echo/app/page",
    )


# -- one path ---------------------------------------------------------------------------
CANONICAL = [
    "/echo/deploy/plain",
    "/echo/deploy/caf%C3%A9",
    "/echo/deploy/a%20b",
    "/echo/deploy/~user/a:b@c!$&'()*+,=",
    "/echo/deploy/x?next=/echo/admin/../deploy%2F",
]
CONFUSING = [
    "/echo/deploy/../admin",
    "/echo/deploy/%2e%2e/admin",
    "/echo/deploy/.%2E/admin",
    "/echo/admin/../deploy/x",
    "/echo/deploy%2F..%2Fadmin",
    "/echo/admin%2F..%2Fdeploy",
    "/echo/deploy/x%2Fy",
    "//echo/deploy/x",
    "/echo//deploy/x",
    "/echo/deploy//x",
    "/echo/./deploy/x",
    "/echo/%64eploy/x",
    "/echo/deploy;/../admin",
    "/echo/deploy/..;/admin",
    "/echo/deploy/%5c..%5cadmin",
    "/echo/deploy/x#frag",
]


async def test_the_upstream_receives_exactly_the_path_gatehouse_decided_on(
    stack: Stack, plane: DataPlane
) -> None:
    token = stack.provider.client_credentials_token()
    reached = []
    for target in CANONICAL + CONFUSING:
        answer, marker = call(stack, plane, target, token=token)
        seen = seen_with("x-test-case", marker)
        if answer.status != 200:
            assert not seen, f"{target}: refused ({answer.status}) but reached the upstream"
            continue
        assert len(seen) == 1
        record = decided(stack, seen[0])
        assert seen[0].raw_path == record["path"], target
        assert record["route"] == "deploy"
        reached.append((target, record["path"]))
    # Every canonical spelling is served as sent. Of the confusing ones only the
    # fragment, which Caddy re-encodes before asking (%23: a path of its own).
    expected = [(t, t.split("?")[0]) for t in CANONICAL]
    if plane.name == "caddy":
        expected.append(("/echo/deploy/x#frag", "/echo/deploy/x%23frag"))
    assert reached == expected


# -- forged headers -------------------------------------------------------------------------
async def test_client_forged_original_request_headers_never_become_the_decision(
    stack: Stack, plane: DataPlane
) -> None:
    token = stack.provider.client_credentials_token()
    forged = {
        "X-Forwarded-Uri": "/echo/deploy/x",
        "X-Original-URI": "/echo/deploy/x",
        "X-Forwarded-Method": "GET",
        "X-Original-Method": "GET",
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-Proto": "http",
    }
    answer, marker = call(stack, plane, f"/echo/admin/{marker_path()}", token=token, **forged)
    assert answer.status == 403
    assert not seen_with("x-test-case", marker)
    # And the other way round: the forged target does not take the real one's place.
    for name in ("X-Forwarded-Uri", "X-Original-URI"):
        answer, marker = call(
            stack, plane, "/echo/deploy/real", token=token, **{name: "/echo/admin/x"}
        )
        assert answer.status == 200
        seen = upstream_saw(marker)
        record = decided(stack, seen)
        assert (record["path"], record["host"]) == ("/echo/deploy/real", f"localhost:{plane.port}")
        assert seen.header(name.lower()) is None  # and never reaches the upstream either


async def test_identity_headers_a_client_sends_never_reach_the_upstream(
    stack: Stack, plane: DataPlane
) -> None:
    forged = [
        ("X-Gatehouse-Subject", "admin"),
        ("X-Gatehouse-Groups", "admins"),
        ("X-Gatehouse-Assertion", "forged"),
        ("X-Serverless-Authorization", "Bearer forged"),
        ("Authorization", "Bearer forged"),
        ("X-Forwarded-User", "admin"),
        ("X-Auth-Request-Email", "admin@example.test"),
        ("X-Api-Key", "forged"),
    ]
    # A public route never looks at the caller (the forged token is not even verified):
    # nothing the client claimed about who it is reaches the upstream.
    marker = uuid.uuid4().hex
    answer = raw_request(
        plane.port,
        "/echo/public/anonymous",
        headers=[("X-Test-Case", marker), *forged],
        context=stack.client_ssl(),
    )
    assert answer.status == 200
    seen = upstream_saw(marker)
    values = {v for _, v in seen.headers}
    for name, value in forged:
        assert value not in values, name
    assert seen.header("x-gatehouse-subject") is None
    # What Gatehouse vouches for arrives instead: the assertion and the credential.
    assert seen.header("x-gatehouse-assertion") not in (None, "forged")
    verify_id_token(stack, seen.header("x-serverless-authorization"), seen.at)


async def test_the_decision_endpoints_cannot_be_reached_through_the_data_plane(
    stack: Stack, plane: DataPlane
) -> None:
    token = stack.provider.client_credentials_token()
    for target in (
        "/.gatehouse/decide",
        "/.gatehouse/auth",
        "/.gatehouse/ext_authz/echo/deploy/x",
        "/_gatehouse/auth",
    ):
        answer, _ = call(
            stack,
            plane,
            target,
            token=token,
            X_Forwarded_Uri="/echo/deploy/x",
            X_Forwarded_Method="GET",
        )
        assert answer.status != 200, target
        names = {k.lower() for k, _ in answer.headers}
        assert not names & {"x-serverless-authorization", "x-gatehouse-assertion"}, target


# -- credentials that expire ------------------------------------------------------------------
async def test_an_expiring_upstream_credential_is_refreshed_without_the_data_plane_noticing(
    stack: Stack, plane: DataPlane
) -> None:
    """ID tokens live 14 s and are used until 10 s before expiry: over 9 s of traffic the
    upstream sees at least two, each valid when it arrives, and no call fails."""
    tokens: list[str] = []
    deadline = time.monotonic() + 9
    while time.monotonic() < deadline:
        answer, marker = call(stack, plane, f"/echo/public/{marker_path()}")
        assert answer.status == 200, answer
        seen = upstream_saw(marker)
        tokens.append(verify_id_token(stack, seen.header("x-serverless-authorization"), seen.at))
        time.sleep(0.25)
    assert len(set(tokens)) >= 2
    assert set(tokens) <= set(stack.google.issuer.issued)
