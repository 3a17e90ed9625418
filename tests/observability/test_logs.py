"""Operational logs: one JSON object per line from a real ``gatehouse run``, parsed."""

from __future__ import annotations

import io
import json
import logging
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.observability.logs import JsonFormatter, TextFormatter, configure, rfc3339
from tests.conftest import GatehouseFactory
from tests.peers.cloud.azure import TENANT, AzurePeer
from tests.peers.cloud.tls import LocalTls, make_tls
from tests.support.gatehouse import Gatehouse, public_route
from tests.support.net import free_port

APP_ID = "5e7a0c1d-0000-4000-8000-00000000a11d"


def json_lines(gh: Gatehouse) -> list[dict[str, Any]]:
    """Every line of standard error, each parsed as one JSON object (or the test fails)."""
    return [json.loads(line) for line in gh.stderr().splitlines()]


def wait_for(gh: Gatehouse, predicate: Any, timeout: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        for record in json_lines(gh):
            if predicate(record):
                return record
        assert time.monotonic() < deadline, gh.stderr()
        time.sleep(0.05)


def record_of(level: int, msg: str, **extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("gatehouse.test", level, __file__, 1, msg, None, None)
    record.__dict__.update(extra)
    return record


# -- formatters -------------------------------------------------------------------
def test_a_json_record_has_ts_level_logger_msg_and_the_extra_fields() -> None:
    record = record_of(logging.WARNING, "upstream slow", request_id="r1", route="orders")
    line = JsonFormatter().format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert list(parsed)[:4] == ["ts", "level", "logger", "msg"]
    assert parsed["level"] == "warning" and parsed["logger"] == "gatehouse.test"
    assert parsed["msg"] == "upstream slow"
    assert (parsed["request_id"], parsed["route"]) == ("r1", "orders")
    assert abs(datetime.fromisoformat(parsed["ts"]).timestamp() - record.created) < 0.001


def test_an_exception_stays_inside_its_one_line() -> None:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, None)
        import sys

        record.exc_info = sys.exc_info()
    line = JsonFormatter().format(record)
    assert line.count("\n") == 0
    assert "ValueError: boom\nsecond line" in json.loads(line)["exc"]


def test_text_lines_show_fields_as_key_value_pairs() -> None:
    record = record_of(
        logging.ERROR, "reload failed: a.yaml:3: bad", route="r 1", problems=["a.yaml:3: bad"]
    )
    text = TextFormatter().format(record)
    assert text.endswith('gatehouse.test: reload failed: a.yaml:3: bad route="r 1"')


def test_rfc3339_is_utc_with_milliseconds() -> None:
    assert rfc3339(0.0) == "1970-01-01T00:00:00.000Z"
    assert rfc3339(1795282462.9999) == "2026-11-21T17:34:22.999Z"


def test_auto_is_json_off_a_terminal_and_libraries_are_quieted() -> None:
    stream = io.StringIO()
    configure("auto", "debug", stream)
    try:
        logging.getLogger("gatehouse.x").debug("ours", extra={"backend": "b"})
        logging.getLogger("urllib3.connectionpool").info("theirs")
        logging.getLogger("azure.identity._internal").warning("body: {'error': 'x'}")
        [line] = stream.getvalue().splitlines()
        assert json.loads(line)["backend"] == "b"
    finally:
        configure("text", "warning", io.StringIO())


# -- a real process ---------------------------------------------------------------
async def test_a_running_gatehouse_writes_json_lines_with_request_context(
    gatehouse: GatehouseFactory, upstream_url: str
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    gh = gatehouse(
        backends={"up": {"urls": [upstream_url]}, "gone": {"urls": [dead]}},
        routes=[public_route("echo", "/echo", "up"), public_route("gone", "/gone", "gone")],
    )
    started = wait_for(gh, lambda r: r.get("policy_version") and r.get("listen"))
    assert started["level"] == "info" and started["logger"] == "gatehouse"
    assert started["listen"] == f"127.0.0.1:{gh.port}"
    assert started["admin"] == f"127.0.0.1:{gh.admin_port}"
    assert started["routes"] == 2 and started["backends"] == ["gone", "up"]
    assert started["issuers"] == []
    async with aiohttp.ClientSession() as s:
        async with s.get(gh.url + "/gone/x") as r:
            assert r.status == 502
            rid = r.headers["X-Request-Id"]
    failure = wait_for(gh, lambda r: r.get("request_id") == rid)
    assert failure["route"] == "gone" and failure["backend"] == "gone"
    assert "upstream_unavailable" in failure["msg"]
    [audited] = gh.wait_audit(1)
    assert audited["request_id"] == rid
    assert gh.stop() == 0
    messages = [r["msg"] for r in json_lines(gh)]
    assert messages[-1] == "stopped"
    for record in json_lines(gh):
        datetime.fromisoformat(record["ts"])
        assert record["level"] in ("debug", "info", "warning", "error", "critical")


async def test_a_failed_policy_reload_is_one_record_listing_its_problems(
    gatehouse: GatehouseFactory, upstream_url: str
) -> None:
    gh = gatehouse(backends={"up": {"urls": [upstream_url]}}, routes=[public_route("r", "/", "up")])
    wait_for(gh, lambda r: r.get("listen"))
    policy = gh.workdir / "policies" / "routes.yaml"
    policy.write_text("routes:\n  - name: r\n    path: /\n    backend: nowhere\n    colour: red\n")
    gh.signal(signal.SIGHUP)
    failed = wait_for(gh, lambda r: r["msg"].startswith("policy reload failed"))
    assert failed["level"] == "error"
    assert len(failed["problems"]) == 2, failed  # the undefined backend, the unknown key
    assert all(p.startswith(f"{policy}:") for p in failed["problems"])
    assert "\n" not in failed["msg"] and failed["problems"][0] in failed["msg"]


async def test_log_format_and_level_follow_the_configuration(
    gatehouse: GatehouseFactory, upstream_url: str
) -> None:
    quiet = gatehouse(
        backends={"up": {"urls": [upstream_url]}},
        routes=[public_route("r", "/", "up")],
        extra={"log": {"level": "warning"}},
    )
    text = gatehouse(
        backends={"up": {"urls": [upstream_url]}},
        routes=[public_route("r", "/", "up")],
        extra={"log": {"format": "text"}},
    )
    deadline = time.monotonic() + 15
    while "serving on" not in text.stderr():
        assert time.monotonic() < deadline, text.stderr()
        time.sleep(0.05)
    line = next(x for x in text.stderr().splitlines() if "serving on" in x)
    assert " INFO gatehouse: gatehouse " in line and "policy_version=" in line
    assert quiet.stop() == 0 and text.stop() == 0
    assert quiet.stderr() == "", "nothing at warning or above"


@pytest.fixture
async def entra(tmp_path: Path) -> Any:
    tls = make_tls(tmp_path)
    peer = await AzurePeer(ssl_context=tls.server_context()).start()
    yield peer, tls
    await peer.stop()


async def test_no_library_logs_a_token_endpoint_response_even_at_debug(
    gatehouse: GatehouseFactory,
    upstream_url: str,
    entra: tuple[AzurePeer, LocalTls],
    tmp_path: Path,
) -> None:
    """azure-identity logged a refused token request at WARNING, quoting Entra's answer."""
    peer, tls = entra
    peer.clients["gatehouse-client"] = "the-right-secret"
    secret = tmp_path / "secret"
    secret.write_text("a-wrong-secret")
    credentials = {
        "type": "azure",
        "mode": "client_secret",
        "app_id": APP_ID,
        "tenant_id": TENANT,
        "client_id": "gatehouse-client",
        "client_secret_file": str(secret),
        "authority": peer.url,
        "ca_bundle": str(tls.ca_file),
    }
    gh = gatehouse(
        backends={"app": {"urls": [upstream_url], "credentials": credentials}},
        routes=[public_route("app", "/", "app")],
        extra={"log": {"level": "debug", "format": "json"}},
    )
    async with aiohttp.ClientSession() as s:
        async with s.get(gh.url + "/echo") as r:
            assert r.status == 503
        secret.write_text("the-right-secret")
        deadline = time.monotonic() + 20
        while True:  # the cache retries after its backoff; the new secret file is read then
            async with s.get(gh.url + "/echo") as r:
                if r.status == 200:
                    break
            assert time.monotonic() < deadline, gh.stderr()
            time.sleep(0.5)
    assert peer.calls["entra"] >= 2
    gh.stop()
    log = gh.stderr()
    records = json_lines(gh)  # all of it JSON lines: no multi-line HTTP dumps
    assert "invalid_client" not in log, "Entra's error body"
    for token in peer.issuer.issued:
        assert token not in log
    assert "the-right-secret" not in log and "a-wrong-secret" not in log
    assert not [r for r in records if r["logger"].startswith(("azure", "msal"))]
    # What the operator gets instead: Gatehouse's own record, the error class only.
    failed = [r for r in records if r["msg"] == "credential fetch failed"]
    assert failed and failed[0]["backend"] == "app"
    assert failed[0]["error"] == "azure client_secret failed (ClientAuthenticationError)"
