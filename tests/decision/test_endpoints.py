"""A decision listener called directly, as a data plane (127.0.0.1, trusted) or as
anyone else (127.0.0.2): what it answers, and the one audit record of each call."""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp

from tests.conftest import GatehouseFactory
from tests.decision.stack import FUNCTION_AUDIENCE, Stack
from tests.support.gatehouse import public_route

UNTRUSTED = "127.0.0.2"  # loopback, but not in listen.trusted_proxies (127.0.0.1/32)


async def ask(
    stack: Stack,
    path: str,
    headers: dict[str, str] | None = None,
    *,
    method: str = "GET",
    source: str = "127.0.0.1",
) -> tuple[int, dict[str, str], bytes, list[dict[str, Any]]]:
    """Call Gatehouse from ``source``; returns status, headers, body and the audit records."""
    rid = uuid.uuid4().hex
    sent = {"X-Request-Id": rid, **(headers or {})}
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    async with aiohttp.ClientSession(connector=connector) as http:
        async with http.request(
            method, stack.gatehouse.url + path, headers=sent, allow_redirects=False
        ) as r:
            body = await r.read()
            got = {k.lower(): v for k, v in r.headers.items()}
    records = stack.records(got.get("x-request-id", rid))
    return r.status, got, body, records


def forward_auth(uri: str, method: str = "GET", **extra: str) -> dict[str, str]:
    """What Caddy and Traefik send: X-Forwarded-Method, -Uri, -Host, -Proto, -For."""
    return {
        "X-Forwarded-Method": method,
        "X-Forwarded-Uri": uri,
        "X-Forwarded-Host": "app.example.com",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-For": "198.51.100.7",
        **{k.replace("_", "-"): v for k, v in extra.items()},
    }


def bearer(stack: Stack) -> str:
    return f"Bearer {stack.provider.client_credentials_token()}"


async def test_an_allowed_decision_is_200_with_the_headers_to_copy_and_one_audit_record(
    stack: Stack,
) -> None:
    status, headers, body, records = await ask(
        stack,
        "/.gatehouse/decide",
        forward_auth("/echo/deploy/x?y=1", "POST", Authorization=bearer(stack)),
    )
    assert (status, body) == (200, b"")
    assert headers["x-gatehouse-subject"] == "svc-ci"
    assert headers["x-gatehouse-groups"] == "deployers"
    assert headers["x-gatehouse-assertion"].count(".") == 2
    id_token = headers["x-serverless-authorization"].removeprefix("Bearer ")
    assert stack.google.issuer.verify(id_token, audience=FUNCTION_AUDIENCE)["aud"]
    assert headers["cache-control"] == "no-store"
    assert "authorization" not in headers  # the caller's token stays at Gatehouse
    [record] = records
    assert record["request_id"] == headers["x-request-id"]  # the data plane's id, kept
    assert record["mode"] == "decision"
    assert (record["method"], record["host"], record["path"]) == (
        "POST",
        "app.example.com",
        "/echo/deploy/x",
    )
    assert record["client_ip"] == "198.51.100.7"  # from X-Forwarded-For, trusted hop rule
    assert (record["decision"], record["status"], record["upstream_status"]) == ("allow", 200, None)


async def test_a_decision_request_from_an_untrusted_peer_is_refused_and_audited(
    stack: Stack,
) -> None:
    for path in ("/.gatehouse/decide", "/.gatehouse/auth", "/.gatehouse/ext_authz/echo/deploy"):
        status, headers, body, records = await ask(
            stack,
            path,
            forward_auth("/echo/deploy/x", Authorization=bearer(stack)),
            source=UNTRUSTED,
        )
        assert status == 403
        error = json.loads(body)
        assert error == {
            "error": "untrusted_peer",
            "status": 403,
            "request_id": error["request_id"],
        }
        assert not any(k.startswith("x-gatehouse-") for k in headers)
        assert "x-serverless-authorization" not in headers
        [record] = records
        assert (record["mode"], record["reason"], record["status"]) == (
            "decision",
            "untrusted_peer",
            403,
        )
        # Nothing the peer said is taken: not its request id, path or client address.
        assert record["path"] == path.split("?")[0]
        assert record["client_ip"] == UNTRUSTED


async def test_conflicting_or_missing_original_request_headers_are_400_and_audited(
    stack: Stack,
) -> None:
    cases = [
        forward_auth("/echo/deploy/x", X_Original_URI="/echo/public/x"),
        forward_auth("/echo/deploy/x", X_Original_Method="DELETE"),
        {k: v for k, v in forward_auth("/x").items() if k != "X-Forwarded-Uri"},
        {k: v for k, v in forward_auth("/x").items() if k != "X-Forwarded-Method"},
    ]
    for headers in cases:
        for endpoint in ("/.gatehouse/decide", "/.gatehouse/auth"):
            status, _, body, records = await ask(stack, endpoint, headers)
            assert status == 400
            assert json.loads(body)["error"] == "bad_decision_request"
            [record] = records
            assert (record["mode"], record["reason"]) == ("decision", "bad_decision_request")


async def test_envoy_ext_authz_decides_on_the_path_after_the_prefix_and_its_own_method(
    stack: Stack,
) -> None:
    status, headers, _, records = await ask(
        stack,
        "/.gatehouse/ext_authz/echo/deploy/x?y=1",
        {
            "Host": "app.example.com",
            "Authorization": bearer(stack),
            "X-Forwarded-Proto": "https",
            # A client's headers Envoy passed through: never the truth.
            "X-Forwarded-Uri": "/echo/public/x",
            "X-Forwarded-Host": "evil.example",
        },
        method="DELETE",
    )
    assert status == 200
    assert headers["x-gatehouse-subject"] == "svc-ci"
    # Envoy only overwrites what the answer carries: the rest it is told to remove,
    # the caller's own Authorization first of all.
    removed = headers["x-envoy-auth-headers-to-remove"].split(", ")
    assert {"authorization", "cookie", "x-gatehouse-email", "x-api-key"} <= set(removed)
    assert "x-gatehouse-subject" not in removed and "x-serverless-authorization" not in removed
    [record] = records
    assert (record["method"], record["host"], record["path"], record["route"]) == (
        "DELETE",
        "app.example.com",
        "/echo/deploy/x",
        "deploy",
    )


async def test_browsers_are_sent_to_sign_in_on_the_host_they_see(stack: Stack) -> None:
    page = {"Accept": "text/html,application/xhtml+xml"}
    status, headers, _, records = await ask(
        stack, "/.gatehouse/decide", forward_auth("/echo/app/page?tab=2", **page)
    )
    assert status == 302
    login = "https://app.example.com/.gatehouse/login?rd=/echo/app/page%3Ftab%3D2"
    assert headers["location"] == login
    assert records[0]["reason"] == "unauthenticated"
    # Envoy relays the redirect too.
    status, headers, _, _ = await ask(
        stack,
        "/.gatehouse/ext_authz/echo/app/page",
        {"Host": "app.example.com", "X-Forwarded-Proto": "https", **page},
    )
    assert (status, headers["location"]) == (
        302,
        "https://app.example.com/.gatehouse/login?rd=/echo/app/page",
    )
    # /auth never redirects (nginx takes 2xx, 401 and 403 only): it names the login URL.
    status, headers, body, _ = await ask(
        stack, "/.gatehouse/auth", forward_auth("/echo/app/page?tab=2", **page)
    )
    assert status == 401
    assert headers["x-gatehouse-login"] == login
    assert headers["www-authenticate"] == 'Bearer realm="gatehouse"'  # no credential was sent
    assert json.loads(body)["error"] == "unauthenticated"
    # API calls get the plain 401 on every endpoint.
    for endpoint in ("/.gatehouse/decide", "/.gatehouse/auth"):
        status, headers, _, _ = await ask(stack, endpoint, forward_auth("/echo/app/x"))
        assert status == 401
        assert "location" not in headers and "x-gatehouse-login" not in headers


async def test_the_login_page_uses_the_trusted_forwarded_host_and_ignores_anyone_elses(
    stack: Stack,
) -> None:
    forwarded = {"X-Forwarded-Host": "localhost:8443", "X-Forwarded-Proto": "https"}
    status, headers, _, records = await ask(stack, "/.gatehouse/login?rd=/echo/app", forwarded)
    assert status == 302
    redirect = parse_qs(urlsplit(headers["location"]).query)["redirect_uri"][0]
    assert redirect == "https://localhost:8443/.gatehouse/callback"
    assert records[0]["reason"] == "gatehouse_endpoint"
    assert records[0]["mode"] == "decision"
    status, headers, _, _ = await ask(
        stack, "/.gatehouse/login?rd=/echo/app", forwarded, source=UNTRUSTED
    )
    redirect = parse_qs(urlsplit(headers["location"]).query)["redirect_uri"][0]
    assert redirect == f"https://127.0.0.1:{stack.gatehouse.port}/.gatehouse/callback"


async def test_the_assertion_keys_are_served_and_anything_else_is_404(stack: Stack) -> None:
    status, _, body, _ = await ask(stack, "/.well-known/gatehouse/jwks.json")
    assert status == 200 and json.loads(body)["keys"]
    for path in ("/echo/deploy/x", "/", "/.gatehouse/decide/", "/.gatehouse/ext_authz"):
        status, headers, body, records = await ask(
            stack, path, forward_auth("/echo/deploy/x", Authorization=bearer(stack))
        )
        assert status == 404, path
        assert json.loads(body)["error"] == "route_not_found"
        assert "x-gatehouse-subject" not in headers
        assert records[0]["mode"] == "decision"


async def test_a_decision_about_a_gatehouse_path_is_refused(stack: Stack) -> None:
    # A data plane that sends its login pages through the decision would loop.
    for uri in ("/.gatehouse/login", "/.gatehouse/decide", "/.well-known/gatehouse/jwks.json"):
        status, _, body, _ = await ask(stack, "/.gatehouse/decide", forward_auth(uri))
        assert status == 404
        assert json.loads(body)["error"] == "route_not_found"


async def test_a_proxy_listener_answers_no_decisions(
    gatehouse: GatehouseFactory, upstream_url: str
) -> None:
    gh = gatehouse(
        backends={"up": {"urls": [upstream_url]}},
        routes=[public_route("echo", "/echo", "up")],
        listen={"trusted_proxies": ["127.0.0.1/32"]},
    )
    async with aiohttp.ClientSession() as http:
        for path in ("/.gatehouse/decide", "/.gatehouse/auth", "/.gatehouse/ext_authz/echo/x"):
            async with http.get(gh.url + path, headers=forward_auth("/echo/x")) as r:
                assert r.status == 404
                assert (await r.json())["error"] == "route_not_found"
    assert all(record["mode"] == "proxy" for record in gh.wait_audit(3))
