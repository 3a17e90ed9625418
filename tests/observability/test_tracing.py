"""OpenTelemetry traces from a real ``gatehouse run``: the SDK's OTLP/HTTP exporter,
pointed at a local receiver that decodes the protobuf payload."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.conftest import GatehouseFactory
from tests.peers.otlp import OtlpReceiver, ReceivedSpan
from tests.support.gatehouse import Gatehouse, public_route

STATUS_ERROR = 2  # opentelemetry.proto.trace.v1.Status.STATUS_CODE_ERROR
ROUTES = [
    public_route("echo", "/echo", "up"),
    {
        "name": "staff",
        "path": "/staff",
        "backend": "up",
        "allow": [{"name": "staff", "groups": ["staff"]}],
    },
]


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    server = await OtlpReceiver().start()
    yield server
    await server.stop()


async def get(gh: Gatehouse, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s:
        async with s.get(gh.url + path, headers=headers or {}) as r:
            return r.status, await r.json()


def by_kind(spans: list[ReceivedSpan], trace_id: str) -> dict[str, ReceivedSpan]:
    return {s.kind: s for s in spans if s.trace_id == trace_id}


async def test_a_request_is_a_server_span_continuing_the_traceparent_with_an_upstream_child(
    gatehouse: GatehouseFactory, upstream_url: str, receiver: OtlpReceiver
) -> None:
    gh = gatehouse(
        backends={"up": {"urls": [upstream_url]}},
        routes=ROUTES,
        extra={"tracing": {"otlp_endpoint": receiver.url, "service_name": "gatehouse-test"}},
    )
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    status, echoed = await get(
        gh, "/echo/x", {"traceparent": f"00-{trace_id}-{caller_span}-01", "User-Agent": "t/1"}
    )
    assert status == 200
    status, _ = await get(gh, "/staff/x")
    assert status == 401
    await asyncio.to_thread(gh.stop)  # SIGTERM: queued spans are exported before exit
    spans = await receiver.wait_for(3)

    traced = by_kind(spans, trace_id)
    server, client = traced["server"], traced["client"]
    assert server.parent_span_id == caller_span, "continues the caller's trace"
    assert server.name == "GET echo"
    assert server.resource["service.name"] == "gatehouse-test"
    attributes = server.attributes
    assert attributes["gatehouse.route"] == "echo" and attributes["gatehouse.backend"] == "up"
    assert attributes["gatehouse.decision"] == "allow"
    assert attributes["gatehouse.reason"] == "allowed:anyone"
    assert attributes["http.response.status_code"] == 200
    assert attributes["user_agent.original"] == "t/1"
    assert server.event_names() == [
        "canonicalise",
        "route",
        "authenticate",
        "authorise",
        "upstream",
    ]
    marks = [server.start_ns] + [at for _, at, _ in server.events]
    assert marks == sorted(marks), "each stage's timing is the gap to the previous mark"
    assert server.events[-1][1] - server.events[-2][1] >= client.end_ns - client.start_ns

    assert client.parent_span_id == server.span_id, "the upstream call is a child span"
    assert client.name == "GET up"
    assert client.attributes["http.response.status_code"] == 200
    assert server.start_ns <= client.start_ns <= client.end_ns <= server.end_ns
    # The upstream was told the child's span id: its own spans hang under it.
    sent = dict((k.lower(), v) for k, v in echoed["headers"])
    assert sent["traceparent"] == f"00-{trace_id}-{client.span_id}-01"
    audit = gh.audit_records()
    assert audit[0]["trace_id"] == trace_id

    # Refused before any upstream call: a server span with the decision, no child.
    [denied] = [s for s in spans if s.trace_id == audit[1]["trace_id"]]
    assert denied.kind == "server" and denied.parent_span_id == ""
    assert denied.attributes["gatehouse.decision"] == "deny"
    assert denied.attributes["gatehouse.reason"] == "unauthenticated"
    assert denied.attributes["http.response.status_code"] == 401
    assert "upstream" not in denied.event_names()


async def test_the_standard_otel_variable_alone_turns_tracing_on(
    gatehouse: GatehouseFactory, upstream_url: str, receiver: OtlpReceiver
) -> None:
    gh = gatehouse(
        backends={"up": {"urls": [upstream_url]}},
        routes=ROUTES,
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_SERVICE_NAME": "from-env"},
    )
    assert (await get(gh, "/echo"))[0] == 200
    await asyncio.to_thread(gh.stop)
    spans = await receiver.wait_for(2)
    [record] = gh.audit_records()
    traced = by_kind(spans, record["trace_id"])
    assert set(traced) == {"server", "client"}, "the audit names the exported trace"
    assert traced["server"].resource["service.name"] == "from-env"


async def test_sample_ratio_zero_exports_only_traces_a_sampled_caller_started(
    gatehouse: GatehouseFactory, upstream_url: str, receiver: OtlpReceiver
) -> None:
    gh = gatehouse(
        backends={"up": {"urls": [upstream_url]}},
        routes=ROUTES,
        extra={"tracing": {"otlp_endpoint": receiver.url, "sample_ratio": 0}},
    )
    sampled, unsampled = secrets.token_hex(16), secrets.token_hex(16)
    parent = secrets.token_hex(8)
    for _ in range(5):
        assert (await get(gh, "/echo"))[0] == 200
    _, echoed = await get(gh, "/echo", {"traceparent": f"00-{unsampled}-{parent}-00"})
    sent = dict((k.lower(), v) for k, v in echoed["headers"])
    assert sent["traceparent"].startswith(f"00-{unsampled}-") and sent["traceparent"].endswith(
        "-00"
    )
    assert (await get(gh, "/echo", {"traceparent": f"00-{sampled}-{parent}-01"}))[0] == 200
    await asyncio.to_thread(gh.stop)
    spans = await receiver.wait_for(2)
    await asyncio.sleep(0.2)
    assert {s.trace_id for s in spans} == {sampled}
    assert len(spans) == 2


async def test_an_upstream_failure_marks_both_spans_as_errors(
    gatehouse: GatehouseFactory, receiver: OtlpReceiver
) -> None:
    gh = gatehouse(
        backends={"up": {"urls": ["http://127.0.0.1:9"]}},
        routes=ROUTES,
        extra={"tracing": {"otlp_endpoint": receiver.url}},
    )
    assert (await get(gh, "/echo"))[0] == 502
    await asyncio.to_thread(gh.stop)
    spans = await receiver.wait_for(2)
    traced = by_kind(spans, gh.audit_records()[0]["trace_id"])
    assert traced["server"].status_code == STATUS_ERROR
    assert traced["server"].attributes["gatehouse.reason"] == "upstream_unavailable"
    assert traced["client"].status_code == STATUS_ERROR
    assert "http.response.status_code" not in traced["client"].attributes
