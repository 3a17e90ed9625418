"""The audit writer: one JSON line per record, reopened for logrotate, drained on close."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import aiohttp

from proxy.observability.audit import FIELDS, AuditRecord, AuditWriter
from tests.conftest import GatehouseFactory
from tests.support.gatehouse import public_route


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_records_are_json_lines_with_every_field(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    writer = AuditWriter(str(path))
    writer.write(
        AuditRecord(ts=1.0, request_id="r1", status=200, decision="allow", reason="allowed:x")
    )
    writer.close()
    [record] = lines(path)
    assert tuple(k for k in record if k in FIELDS) == FIELDS
    assert record["request_id"] == "r1" and record["status"] == 200


def test_close_drains_everything_queued(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    writer = AuditWriter(str(path))
    for i in range(20_000):
        writer.write(AuditRecord(ts=float(i), request_id=f"r{i}"))
    writer.close()
    assert len(lines(path)) == 20_000


def test_write_returns_without_waiting_for_the_disk(tmp_path: Path) -> None:
    writer = AuditWriter(str(tmp_path / "audit.jsonl"))
    started = time.perf_counter()
    for i in range(10_000):
        writer.write(AuditRecord(ts=float(i), request_id="r"))
    queued = time.perf_counter() - started
    writer.close()
    # Serialising a batch is CPU only; the disk write happens in the thread.
    assert queued < 1.0


def test_reopen_follows_logrotate(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    writer = AuditWriter(str(path))
    writer.write(AuditRecord(ts=1.0, request_id="before"))
    writer.flush()
    path.rename(tmp_path / "audit.jsonl.1")
    writer.reopen()
    writer.write(AuditRecord(ts=2.0, request_id="after"))
    writer.close()
    assert [r["request_id"] for r in lines(tmp_path / "audit.jsonl.1")] == ["before"]
    assert [r["request_id"] for r in lines(path)] == ["after"]


async def test_sighup_reopens_the_audit_file_of_a_running_proxy(
    gatehouse: GatehouseFactory, upstream_url: str
) -> None:
    gh = gatehouse(
        backends={"up": {"urls": [upstream_url]}}, routes=[public_route("all", "/", "up")]
    )
    async with aiohttp.ClientSession() as s:
        async with s.get(gh.url + "/echo") as r:
            assert r.status == 200
        gh.wait_audit(1)
        rotated = gh.audit_path.with_suffix(".jsonl.1")
        gh.audit_path.rename(rotated)
        gh.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while not gh.audit_path.exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        async with s.get(gh.url + "/echo") as r:
            assert r.status == 200
    assert len(gh.wait_audit(1)) == 1
    assert len(lines(rotated)) == 1
