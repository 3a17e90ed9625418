"""Just-in-time access end to end: real gatehouse processes, the real OpenID provider,
the FastAPI upstream, a real redis-server, and a local webhook receiver."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import GatehouseFactory
from tests.grants.access_env import ACCESS, Deployment, deployment, wait_for
from tests.grants.webhook_receiver import webhook_receiver
from tests.state.redis_server import RedisServer


def _records(d: Deployment, replica: int = 0) -> list[dict[str, Any]]:
    return d.replicas[replica].audit_records()


async def test_a_pipeline_asks_an_sre_approves_the_call_succeeds_until_the_grant_ends(
    gatehouse: GatehouseFactory,
    tmp_path: Path,
    upstream_url: str,
    certs: dict[str, Path],
    redis_server: RedisServer,
    state_key: Path,
) -> None:
    async with (
        webhook_receiver() as hooks,
        deployment(
            gatehouse,
            tmp_path,
            upstream_url=upstream_url,
            certs=certs,
            redis=(redis_server, state_key),
            webhook_url=hooks.url,
        ) as d,
    ):
        token = d.service_token()
        async with d.browser() as pipeline, d.browser() as bob:
            status, body = await d.call(pipeline, "GET", "/echo/backfill/run", token=token)
            assert (status, body["error"]) == (403, "no_rule_matched")

            status, grant = await d.call(
                pipeline,
                "POST",
                f"{ACCESS}/api/requests",
                token=token,
                body={"route": "backfill", "justification": "backfill 2026-11-02 (OPS-12)"},
            )
            assert status == 201, grant
            assert (grant["state"], grant["rule"], grant["duration"]) == (
                "pending",
                "backfill-window",
                2.0,
            )
            assert grant["requester"]["subject"] == "svc-ci"

            await d.log_in(bob, "bob")
            status, listed = await d.call(bob, "GET", f"{ACCESS}/api/approvals")
            assert status == 200
            assert [g["id"] for g in listed["requests"]] == [grant["id"]]

            status, approved = await d.call(
                bob,
                "POST",
                f"{ACCESS}/api/requests/{grant['id']}/approve",
                body={"reason": "OPS-12 signed off"},
            )
            assert status == 200, approved
            assert approved["state"] == "active"
            assert approved["decided_by"]["subject"] == "bob"
            ends_at = approved["ends_at"]

            status, echoed = await d.call(pipeline, "GET", "/echo/backfill/run", token=token)
            assert status == 200, echoed

            # The sensor's view: the grant is active, with its window.
            status, seen = await d.call(
                pipeline, "GET", f"{ACCESS}/api/requests/{grant['id']}", token=token
            )
            assert (status, seen["state"]) == (200, "active")

            # After max_duration (2 s) the same call is denied again.
            while time.time() < ends_at + 0.05:
                await asyncio.sleep(0.05)
            status, body = await d.call(pipeline, "GET", "/echo/backfill/run", token=token)
            assert (status, body["error"]) == (403, "no_rule_matched")

        # Every step is an audit record; the admitted call names its grant.
        await wait_for(lambda: [r for r in _records(d) if r["reason"] == "grant_expired"])
        records = _records(d)
        by_reason = {r["reason"]: r for r in records}
        assert by_reason["grant_requested"]["grant_id"] == grant["id"]
        assert by_reason["grant_requested"]["subject"] == "svc-ci"
        assert by_reason["grant_approved"]["subject"] == "bob"
        assert by_reason["grant_approved"]["auth"] == "session"
        admitted = [r for r in records if r["reason"] == "allowed:backfill-window"]
        assert [r["grant_id"] for r in admitted] == [grant["id"]]
        expired = by_reason["grant_expired"]
        assert (expired["decision"], expired["grant_id"], expired["subject"]) == (
            "event",
            grant["id"],
            "svc-ci",
        )
        denied = [r for r in records if r["route"] == "backfill" and r["decision"] == "deny"]
        assert len(denied) == 2 and all(r["grant_id"] is None for r in denied)

        # The webhook heard every step, each delivery signed.
        deliveries = await hooks.wait_for(3)
        assert [d_.json["event"] for d_ in deliveries] == [
            "grant.requested",
            "grant.approved",
            "grant.expired",
        ]
        assert all(d_.signature_valid() for d_ in deliveries)
        assert all(d_.json["grant"]["id"] == grant["id"] for d_ in deliveries)


async def test_nobody_approves_their_own_request_and_only_approvers_decide(
    gatehouse: GatehouseFactory,
    tmp_path: Path,
    upstream_url: str,
    certs: dict[str, Path],
) -> None:
    async with deployment(gatehouse, tmp_path, upstream_url=upstream_url, certs=certs) as d:
        async with d.browser() as bob, d.browser() as alice, d.browser() as pipeline:
            await d.log_in(bob, "bob")
            await d.log_in(alice, "alice")
            status, mine = await d.call(
                bob,
                "POST",
                f"{ACCESS}/api/requests",
                body={"route": "prod", "duration": "1h", "justification": "hotfix INC-7"},
            )
            assert status == 201, mine
            # Bob is an SRE, and still cannot approve his own request.
            status, refused = await d.call(
                bob, "POST", f"{ACCESS}/api/requests/{mine['id']}/approve", body={"reason": "me"}
            )
            assert (status, refused["error"]) == (403, "self_approval")
            status, listed = await d.call(bob, "GET", f"{ACCESS}/api/approvals")
            assert listed["requests"] == []
            # Alice is not an approver: she cannot decide it, nor even see it.
            status, refused = await d.call(
                alice, "POST", f"{ACCESS}/api/requests/{mine['id']}/approve", body={"reason": "ok"}
            )
            assert (status, refused["error"]) == (404, "grant_not_found")
            # The pipeline asks too, and cannot approve its own request either.
            token = d.service_token()
            status, its = await d.call(
                pipeline,
                "POST",
                f"{ACCESS}/api/requests",
                token=token,
                body={"route": "prod", "justification": "nightly"},
            )
            assert status == 201
            status, refused = await d.call(
                pipeline,
                "POST",
                f"{ACCESS}/api/requests/{its['id']}/approve",
                token=token,
                body={"reason": "self"},
            )
            assert (status, refused["error"]) == (403, "self_approval")
            status, seen = await d.call(bob, "GET", f"{ACCESS}/api/requests/{mine['id']}")
            assert seen["state"] == "pending"
        refusals = await wait_for(
            lambda: (
                (found := [r for r in _records(d) if r["reason"] == "self_approval"])
                and len(found) == 2
                and found
            )
        )
        assert {(r["subject"], r["decision"]) for r in refusals} == {
            ("bob", "deny"),
            ("svc-ci", "deny"),
        }


@pytest.mark.parametrize("cache_ttl", ["250ms", "0s"])
async def test_revocation_reaches_every_replica_within_a_second(
    gatehouse: GatehouseFactory,
    tmp_path: Path,
    upstream_url: str,
    certs: dict[str, Path],
    redis_server: RedisServer,
    state_key: Path,
    cache_ttl: str,
) -> None:
    async with deployment(
        gatehouse,
        tmp_path,
        upstream_url=upstream_url,
        certs=certs,
        redis=(redis_server, state_key),
        replicas=2,
        grants={"cache_ttl": cache_ttl},
    ) as d:
        token = d.service_token()
        async with d.browser() as pipeline, d.browser() as carol:
            status, grant = await d.call(
                pipeline,
                "POST",
                f"{ACCESS}/api/requests",
                token=token,
                body={"route": "prod", "duration": "1h", "justification": "replay job 4411"},
            )
            assert status == 201
            await d.log_in(carol, "carol")
            status, _ = await d.call(
                carol, "POST", f"{ACCESS}/api/requests/{grant['id']}/approve", body={"reason": "ok"}
            )
            assert status == 200

            async def on_two() -> int:
                status, _ = await d.call(pipeline, "GET", "/echo/prod/x", token=token, replica=1)
                return status

            # Replica two sees the approval made through replica one.
            deadline = time.monotonic() + 1.0
            while await on_two() != 200:
                assert time.monotonic() < deadline, "approval did not reach replica two"
            status, _ = await d.call(
                carol,
                "POST",
                f"{ACCESS}/api/requests/{grant['id']}/revoke",
                body={"reason": "job finished"},
            )
            assert status == 200
            revoked_at = time.monotonic()
            while await on_two() != 403:
                assert time.monotonic() - revoked_at < 1.0, "revocation slower than 1 s"
            propagation = time.monotonic() - revoked_at
        print(
            f"cache_ttl {cache_ttl}: revocation reached the other replica in {propagation * 1000:.0f} ms"
        )
        assert propagation < 1.0


async def test_grants_kept_in_the_file_survive_a_restart(
    gatehouse: GatehouseFactory,
    tmp_path: Path,
    upstream_url: str,
    certs: dict[str, Path],
) -> None:
    async with deployment(gatehouse, tmp_path, upstream_url=upstream_url, certs=certs) as d:
        token = d.service_token()
        async with d.browser() as pipeline, d.browser() as carol:
            _, grant = await d.call(
                pipeline,
                "POST",
                f"{ACCESS}/api/requests",
                token=token,
                body={"route": "prod", "duration": "1h", "justification": "contractor afternoon"},
            )
            await d.log_in(carol, "carol")
            status, _ = await d.call(
                carol, "POST", f"{ACCESS}/api/requests/{grant['id']}/approve", body={"reason": "ok"}
            )
            assert status == 200
            assert (await d.call(pipeline, "GET", "/echo/prod/a", token=token))[0] == 200
            d.restart()
            status, echoed = await d.call(pipeline, "GET", "/echo/prod/b", token=token)
            assert status == 200, echoed
            status, seen = await d.call(
                pipeline, "GET", f"{ACCESS}/api/requests/{grant['id']}", token=token
            )
            assert seen["state"] == "active"
            assert [(e["event"], e["reason"]) for e in seen["history"]] == [
                ("request", "contractor afternoon"),
                ("approve", "ok"),
                ("start", ""),
            ]


pytestmark = pytest.mark.timeout(120)


async def test_malformed_or_unauthorised_api_calls_get_short_json_errors(
    gatehouse: GatehouseFactory,
    tmp_path: Path,
    upstream_url: str,
    certs: dict[str, Path],
) -> None:
    async with deployment(gatehouse, tmp_path, upstream_url=upstream_url, certs=certs) as d:
        token = d.service_token()
        bearer = {"Authorization": f"Bearer {token}"}
        api = f"{d.base}{ACCESS}/api/requests"
        async with d.browser() as http:
            async with http.get(api) as r:
                assert (r.status, (await r.json())["error"]) == (401, "unauthenticated")
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
            async with http.get(f"{d.base}{ACCESS}/", allow_redirects=False) as r:
                assert r.status == 401  # an API client gets 401, never a login redirect
            async with http.get(
                f"{d.base}{ACCESS}/", headers={"Accept": "text/html"}, allow_redirects=False
            ) as r:
                assert r.status == 302 and r.headers["Location"].startswith(d.provider.issuer)
            cases: list[tuple[str, dict[str, Any], Any, int, str]] = [
                ("POST", {"Content-Type": "text/plain"}, b'{"route":"prod"}', 400, "json_required"),
                ("POST", {"Content-Type": "application/json"}, b"x" * 20000, 413, "body_too_large"),
                ("PUT", {}, None, 405, "method_not_allowed"),
                ("POST", {"Content-Type": "application/json"}, b"[1]", 400, "invalid_request"),
            ]
            for method, headers, data, status, reason in cases:
                async with http.request(method, api, headers={**bearer, **headers}, data=data) as r:
                    body = await r.json()
                    assert (r.status, body["error"]) == (status, reason), body
                    assert set(body) == {"error", "status", "request_id"}
                    if status == 405:  # RFC 9110 §15.5.6: a 405 names what is served
                        assert r.headers["Allow"] == "GET, POST"
            for body, status, reason in (
                (
                    {"route": "prod", "duration": "9h", "justification": "x"},
                    400,
                    "duration_too_long",
                ),
                ({"route": "prod"}, 400, "justification_required"),
                ({"route": "nowhere", "justification": "x"}, 400, "no_such_grant_rule"),
                (
                    {"route": "prod", "duration": "soon", "justification": "x"},
                    400,
                    "invalid_duration",
                ),
            ):
                got = await d.call(http, "POST", f"{ACCESS}/api/requests", token=token, body=body)
                assert (got[0], got[1]["error"]) == (status, reason)
            first = await d.call(
                http, "POST", f"{ACCESS}/api/requests", token=token,
                body={"route": "prod", "justification": "x"},
            )  # fmt: skip
            assert first[0] == 201
            again = await d.call(
                http, "POST", f"{ACCESS}/api/requests", token=token,
                body={"route": "prod", "justification": "x"},
            )  # fmt: skip
            assert (again[0], again[1]["error"]) == (409, "request_pending")
            missing = await d.call(http, "GET", f"{ACCESS}/api/requests/g_nosuchgrant", token=token)
            assert (missing[0], missing[1]["error"]) == (404, "grant_not_found")
            routes = await d.call(http, "GET", f"{ACCESS}/api/routes", token=token)
            assert [(r["route"], r["rule"]) for r in routes[1]["routes"]] == [
                ("prod", "prod-writers-on-approval"),
                ("backfill", "backfill-window"),
            ]
