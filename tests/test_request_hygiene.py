"""Requests that mean different things to different readers, through a real gatehouse:
credentials sent twice, method overrides, Host values that are not hosts, client
addresses on dual-stack listeners, and identity values that cannot travel as they are."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import jwt
import pytest

from tests.peers.oidc_provider import RESOURCE, OidcProvider, oidc_provider, private_key, rsa_jwk
from tests.support.cli import gatehouse_command
from tests.support.gatehouse import Gatehouse, public_route, start_gatehouse, write_config
from tests.support.net import free_port, raw_request

SIGNING_KEY = rsa_jwk("rsa-hygiene")


def response_of(raw: bytes) -> tuple[int, dict[str, str], Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    try:
        data = json.loads(body) if body else None
    except ValueError:
        data = body
    return status, headers, data


def send(gh: Gatehouse, head_lines: list[str], body: bytes = b"", method: str = "GET") -> Any:
    """One request as written (no client-side clean-up), then the parsed answer."""
    target = head_lines[0] if head_lines and head_lines[0].startswith("/") else "/echo"
    lines = head_lines[1:] if head_lines and head_lines[0].startswith("/") else head_lines
    text = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{h}\r\n" for h in lines)
    text += "Connection: close\r\n\r\n"
    return response_of(raw_request(gh.port, text.encode("latin-1") + body))


def audited_once(gh: Gatehouse, request_id: str) -> dict[str, Any]:
    """The one audit record of ``request_id`` (waiting for the writer's batch)."""
    deadline = time.monotonic() + 10
    while not (mine := [r for r in gh.audit_records() if r["request_id"] == request_id]):
        assert time.monotonic() < deadline, f"no audit record for {request_id}"
        time.sleep(0.02)
    time.sleep(0.05)  # a second record, if one were written, would land in the same batch
    mine = [r for r in gh.audit_records() if r["request_id"] == request_id]
    assert len(mine) == 1
    return mine[0]


def upstream_saw(data: dict[str, Any]) -> dict[str, list[str]]:
    seen: dict[str, list[str]] = {}
    for name, value in data["headers"]:
        seen.setdefault(name, []).append(value)
    return seen


@pytest.fixture(scope="module")
def provider() -> Iterator[OidcProvider]:
    with oidc_provider([SIGNING_KEY]) as p:
        yield p


def token(provider: OidcProvider, **claims: Any) -> str:
    now = int(time.time())
    payload = {"iss": provider.issuer, "aud": RESOURCE, "iat": now, "exp": now + 300, **claims}
    return jwt.encode(
        payload, private_key(SIGNING_KEY), algorithm="RS256", headers={"kid": "rsa-hygiene"}
    )


@pytest.fixture(scope="module")
def gh(
    upstream_url: str, provider: OidcProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gatehouse]:
    workdir = tmp_path_factory.mktemp("hygiene")
    keys = workdir / "api-keys.yaml"
    keys.write_text("keys: []\n")
    proc = start_gatehouse(
        workdir,
        backends={"up": {"urls": [upstream_url]}},
        routes=[
            {
                "name": "passing",
                "path": "/echo/passing",
                "backend": "up",
                "pass_authorization": True,
                "allow": [{"name": "signed-in", "authenticated": True}],
            },
            {
                "name": "signed-in",
                "path": "/echo/signed-in",
                "backend": "up",
                "allow": [{"name": "signed-in", "authenticated": True}],
            },
            public_route("all", "/", "up"),
        ],
        extra={
            "identity": {
                "issuers": [
                    {
                        "issuer": provider.issuer,
                        "audiences": [RESOURCE],
                        "claims": {"groups": "groups"},
                    }
                ],
                "api_keys": {"file": str(keys), "header": "X-Api-Key"},
            }
        },
    )
    yield proc
    proc.stop()


# -- single-valued credential fields -----------------------------------------------
AMBIGUOUS = [
    ["Host: a", "Authorization: Bearer {t}", "Authorization: Bearer {t}"],
    ["Host: a", "Authorization: Bearer {t}", "authorization: Bearer forged"],
    ["Host: a", "AUTHORIZATION: Bearer forged", "Authorization: Bearer {t}"],
    ["Host: a", "Authorization: Bearer {t}", "X-Api-Key: gh_x.y", "X-Api-Key: gh_z.w"],
    ["Host: a", "Authorization: Bearer {t}", "X-Api-Key: gh_x.y", "X_Api_Key: gh_x.y"],
    ["Host: a", "Host: a"],
    ["Host: a", "host: b"],
    [
        "Host: a",
        "Authorization: Bearer {t}",
        "Cookie: __Host-gatehouse-session=a; theme=1; __Host-gatehouse-session=b",
    ],
    ["Host: a", "Cookie: gatehouse-login=a", "Cookie: gatehouse-login=b"],
    ["Host: a", "Cookie: __Host-gatehouse-session=a; __host-gatehouse-session=b"],
]


@pytest.mark.parametrize("lines", AMBIGUOUS)
async def test_a_credential_field_sent_twice_is_refused_before_authentication(
    gh: Gatehouse, provider: OidcProvider, lines: list[str]
) -> None:
    good = token(provider, sub="alice")
    status, headers, data = await asyncio.to_thread(
        send, gh, ["/echo/passing", *(line.format(t=good) for line in lines)]
    )
    assert (status, data["error"]) == (400, "ambiguous_request")
    assert headers["server"] == "gatehouse"  # answered by the proxy: nothing went upstream
    record = await asyncio.to_thread(audited_once, gh, data["request_id"])
    assert (record["reason"], record["status"]) == ("ambiguous_request", 400)
    assert record["subject"] is None  # refused before anyone was authenticated


@pytest.mark.parametrize(
    "lines",
    [
        ["Host: a", "Content-Length: 3", "Content-Length: 3"],
        ["Host: a", "Content-Length: 3", "Content_Length: 3"],
    ],
)
async def test_a_body_length_sent_twice_is_refused(gh: Gatehouse, lines: list[str]) -> None:
    status, _, data = await asyncio.to_thread(send, gh, lines, b"abc", "POST")
    assert (status, data["error"]) == (400, "ambiguous_request")


async def test_one_credential_per_field_is_forwarded_exactly_once(
    gh: Gatehouse, provider: OidcProvider
) -> None:
    good = token(provider, sub="alice")
    lines = ["/echo/passing", "Host: a", f"Authorization: Bearer {good}", "Cookie: theme=1"]
    status, _, data = await asyncio.to_thread(send, gh, lines)
    assert status == 200
    assert upstream_saw(data)["authorization"] == [f"Bearer {good}"]


# -- method override -----------------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    [
        "X-HTTP-Method-Override",
        "X-HTTP-Method",
        "X-Method-Override",
        "x-http-method-override",
        "X_HTTP_Method_Override",
    ],
)
async def test_a_method_override_never_reaches_the_upstream(gh: Gatehouse, name: str) -> None:
    status, _, data = await asyncio.to_thread(
        send, gh, ["Host: a", f"{name}: DELETE", "Content-Length: 0"], b"", "POST"
    )
    assert status == 200
    assert data["method"] == "POST"
    assert not any("method" in header for header in upstream_saw(data))


# -- Host grammar ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "host",
    [
        "evil.com/admin",
        "a b",
        "user@evil.com",
        "evil.com:99999",
        "evil.com:8o",
        "evil.com\\x",
        "ev'il.com",
        "[::1",
        "evil.com?reset=1",
        "évil.com",
    ],
)
async def test_a_host_header_that_is_not_a_host_is_refused(gh: Gatehouse, host: str) -> None:
    status, _, data = await asyncio.to_thread(send, gh, [f"Host: {host}"])
    assert (status, data["error"]) == (400, "bad_host")
    record = await asyncio.to_thread(audited_once, gh, data["request_id"])
    assert record["reason"] == "bad_host"


@pytest.mark.parametrize("host", ["evil.com\x01", "evil.com\x7f"])
async def test_a_host_with_control_characters_never_travels(gh: Gatehouse, host: str) -> None:
    status, _, data = await asyncio.to_thread(send, gh, [f"Host: {host}"])
    assert status == 400 and data["error"] in ("bad_host", "malformed_request")


@pytest.mark.parametrize(
    ("host", "forwarded"),
    [
        ("app.example.com", "app.example.com"),
        ("App.Example.com:8443", "App.Example.com:8443"),
        ("[::1]:8080", "[::1]:8080"),
        ("10.0.0.7", "10.0.0.7"),
    ],
)
async def test_a_well_formed_host_is_forwarded_as_sent(
    gh: Gatehouse, host: str, forwarded: str
) -> None:
    status, _, data = await asyncio.to_thread(send, gh, [f"Host: {host}"])
    assert status == 200
    assert upstream_saw(data)["x-forwarded-host"] == [forwarded]


# -- identity values -------------------------------------------------------------------
async def test_identity_values_reach_the_upstream_encoded_never_merged(
    gh: Gatehouse, provider: OidcProvider
) -> None:
    claims = {"sub": "adm,in\u200b", "groups": ["eng,ops", "admins\u00e9", "plain"]}
    t = token(provider, **claims)
    status, _, data = await asyncio.to_thread(
        send, gh, ["/echo/signed-in", "Host: a", f"Authorization: Bearer {t}"]
    )
    assert status == 200
    seen = upstream_saw(data)
    assert seen["x-gatehouse-subject"] == ["adm,in%E2%80%8B"]
    assert unquote(seen["x-gatehouse-subject"][0]) == claims["sub"]
    groups = [unquote(g) for g in seen["x-gatehouse-groups"][0].split(",")]
    assert groups == sorted(claims["groups"])
    assert "x-gatehouse-groups-truncated" not in seen


async def test_a_cut_group_list_says_so(gh: Gatehouse, provider: OidcProvider) -> None:
    groups = [f"group-{i:03d}-{'x' * 38}" for i in range(95)] + ["zz-contractors"]
    t = token(provider, sub="alice", groups=groups)
    status, _, data = await asyncio.to_thread(
        send, gh, ["/echo/signed-in", "Host: a", f"Authorization: Bearer {t}"]
    )
    assert status == 200
    seen = upstream_saw(data)
    assert seen["x-gatehouse-groups-truncated"] == ["true"]
    sent = seen["x-gatehouse-groups"][0].split(",")
    assert len(",".join(sent)) <= 4096 and sent == sorted(groups)[: len(sent)]


# -- client addresses on a dual-stack listener ----------------------------------------
@pytest.fixture(scope="module")
def dual_stack(upstream_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gatehouse]:
    workdir = tmp_path_factory.mktemp("dual-stack")
    port = free_port()
    proc = start_gatehouse(
        workdir,
        port=port,
        backends={"up": {"urls": [upstream_url]}},
        listen={"address": f"[::]:{port}", "trusted_proxies": ["127.0.0.0/8"]},
        routes=[
            {
                "name": "partners",
                "path": "/echo/partners",
                "backend": "up",
                "deny": [{"name": "blocked-range", "source_ip": ["203.0.113.0/24"]}],
                "allow": [{"name": "anyone", "public": True}],
            },
            public_route("limited", "/echo/limited", "up", rate_limit={"requests": 2, "per": "1h"}),
            public_route("all", "/", "up"),
        ],
    )
    yield proc
    proc.stop()


async def test_an_ipv4_proxy_on_a_dual_stack_listener_is_trusted_and_its_client_seen(
    dual_stack: Gatehouse,
) -> None:
    before = len(dual_stack.audit_records())
    status, _, data = await asyncio.to_thread(
        send, dual_stack, ["/echo/partners", "Host: a", "X-Forwarded-For: 203.0.113.9"]
    )
    assert (status, data["error"]) == (403, "denied:blocked-range")
    status, _, data = await asyncio.to_thread(
        send, dual_stack, ["/echo/partners", "Host: a", "X-Forwarded-For: 198.51.100.4"]
    )
    assert status == 200
    assert upstream_saw(data)["x-forwarded-for"] == ["198.51.100.4, 127.0.0.1"]
    status, _, _ = await asyncio.to_thread(send, dual_stack, ["/echo/partners", "Host: a"])
    assert status == 200
    records = dual_stack.wait_audit(before + 3)[before:]
    assert [r["client_ip"] for r in records] == ["203.0.113.9", "198.51.100.4", "127.0.0.1"]


async def test_a_trusted_proxys_own_forwarded_for_line_is_read_after_the_clients(
    dual_stack: Gatehouse,
) -> None:
    status, _, data = await asyncio.to_thread(
        send,
        dual_stack,
        [
            "/echo/partners",
            "Host: a",
            "X-Forwarded-For: 198.51.100.4",
            "X-Forwarded-For: 203.0.113.9",
        ],
    )
    assert (status, data["error"]) == (403, "denied:blocked-range")


async def test_anonymous_ipv6_clients_share_a_rate_limit_per_64(dual_stack: Gatehouse) -> None:
    async def status_for(address: str) -> int:
        lines = ["/echo/limited", "Host: a", f"X-Forwarded-For: {address}"]
        result = await asyncio.to_thread(send, dual_stack, lines)
        return int(result[0])

    same_64 = ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::3"]
    assert [await status_for(a) for a in same_64] == [200, 200, 429]
    assert await status_for("2001:db8:1:3::1") == 200
    assert await status_for("::ffff:192.0.2.1") == 200
    assert await status_for("192.0.2.1") == 200
    assert await status_for("192.0.2.1") == 429  # the mapped and plain forms are one client


def test_an_ipv6_rate_limit_prefix_out_of_range_is_refused_at_start(tmp_path: Path) -> None:
    config, *_ = write_config(
        tmp_path,
        backends={"up": {"urls": ["http://127.0.0.1:9"]}},
        routes=[public_route("all", "/", "up")],
        listen={"ipv6_rate_limit_prefix": 129},
    )
    result = gatehouse_command("check", "--config", str(config))
    assert result.returncode == 2
    assert "ipv6_rate_limit_prefix: an IPv6 prefix length is at most 128" in result.stderr
    assert "Traceback" not in result.stderr
