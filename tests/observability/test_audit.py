"""The audit writer: one JSON line per record, reopened for logrotate, drained on close."""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import REGISTRY

from proxy.config.load import load_config
from proxy.config.reader import ConfigError
from proxy.observability.audit import FIELDS, RETRY_EVERY, AuditRecord, AuditWriter, EndpointOutcome
from proxy.observability.config import AuditConfig
from tests.conftest import GatehouseFactory
from tests.support.gatehouse import REPO, Gatehouse, public_route


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def dropped_total() -> float:
    return REGISTRY.get_sample_value("gatehouse_audit_dropped_records_total") or 0.0


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def write_ids(writer: AuditWriter, ids: range, prefix: str = "r") -> None:
    for i in ids:
        writer.write(AuditRecord(ts_epoch=float(i), request_id=f"{prefix}{i}"))


def test_records_are_json_lines_with_every_field(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    writer = AuditWriter(str(path))
    writer.write(
        AuditRecord(ts_epoch=1.0, request_id="r1", status=200, decision="allow", reason="allowed:x")
    )
    writer.close()
    [record] = lines(path)
    assert tuple(k for k in record if k in FIELDS) == FIELDS
    assert record["request_id"] == "r1" and record["status"] == 200


def refused_total(status_class: str) -> float:
    labels = {"route": "none", "status_class": status_class}
    return REGISTRY.get_sample_value("gatehouse_requests_total", labels) or 0.0


def test_a_request_the_listener_refused_is_one_deny_record_counted_under_no_route(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.jsonl"
    writer = AuditWriter(str(path))
    before = refused_total("4xx")
    writer.rejected("192.0.2.7", 431, "headers_too_large", "r-refused")
    writer.close()
    [record] = lines(path)
    assert record["request_id"] == "r-refused"
    assert (record["client_ip"], record["decision"]) == ("192.0.2.7", "deny")
    assert (record["status"], record["reason"]) == (431, "headers_too_large")
    assert record["route"] is None and record["subject"] is None
    assert refused_total("4xx") == before + 1


def test_ts_is_rfc3339_utc_and_the_epoch_stays_in_ts_epoch(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    writer = AuditWriter(str(path))
    arrived = 1795282462.2505
    writer.write(AuditRecord(ts_epoch=arrived, request_id="r1"))
    writer.write(AuditRecord(ts_epoch=arrived + 1.0, request_id="r2"))
    writer.close()
    first, second = lines(path)
    assert first["ts"] == "2026-11-21T17:34:22.250Z"
    assert first["ts_epoch"] == arrived
    assert second["ts"] == "2026-11-21T17:34:23.250Z"
    parsed = datetime.fromisoformat(str(first["ts"]))
    assert parsed.tzinfo is not None and abs(parsed.timestamp() - arrived) < 0.001


def test_close_drains_everything_queued(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    writer = AuditWriter(str(path))
    for i in range(20_000):
        writer.write(AuditRecord(ts_epoch=float(i), request_id=f"r{i}"))
    writer.close()
    assert len(lines(path)) == 20_000


def test_write_returns_without_waiting_for_the_disk(tmp_path: Path) -> None:
    writer = AuditWriter(str(tmp_path / "audit.jsonl"))
    started = time.perf_counter()
    for i in range(10_000):
        writer.write(AuditRecord(ts_epoch=float(i), request_id="r"))
    queued = time.perf_counter() - started
    writer.close()
    # Serialising a batch is CPU only; the disk write happens in the thread.
    assert queued < 1.0


def test_reopen_follows_logrotate(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    writer = AuditWriter(str(path))
    writer.write(AuditRecord(ts_epoch=1.0, request_id="before"))
    writer.flush()
    path.rename(tmp_path / "audit.jsonl.1")
    writer.reopen()
    writer.write(AuditRecord(ts_epoch=2.0, request_id="after"))
    writer.close()
    assert [r["request_id"] for r in lines(tmp_path / "audit.jsonl.1")] == ["before"]
    assert [r["request_id"] for r in lines(path)] == ["after"]


async def rotated_after_one_request(
    gatehouse: GatehouseFactory, upstream_url: str
) -> tuple[Gatehouse, Path]:
    """A running gatehouse whose audit file, holding one record, was just renamed away."""
    gh = gatehouse(
        backends={"up": {"urls": [upstream_url]}}, routes=[public_route("all", "/", "up")]
    )
    async with aiohttp.ClientSession() as s, s.get(gh.url + "/echo") as r:
        assert r.status == 200
    assert len(gh.wait_audit(1)) == 1
    rotated = gh.audit_path.with_suffix(".jsonl.1")
    gh.audit_path.rename(rotated)
    return gh, rotated


async def test_sighup_reopens_the_audit_file_of_a_running_proxy(
    gatehouse: GatehouseFactory, upstream_url: str
) -> None:
    gh, rotated = await rotated_after_one_request(gatehouse, upstream_url)
    async with aiohttp.ClientSession() as s:
        gh.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while not gh.audit_path.exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        async with s.get(gh.url + "/echo") as r:
            assert r.status == 200
    assert len(gh.wait_audit(1)) == 1
    assert len(lines(rotated)) == 1


def test_records_are_held_while_the_path_is_a_directory_and_written_once_when_it_is_fixed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.jsonl"
    writer = AuditWriter(str(path))
    write_ids(writer, range(3), "before")
    assert writer.flush()
    path.rename(tmp_path / "audit.jsonl.1")
    path.mkdir()  # a directory at the path: open() fails, even for root
    writer.reopen()
    write_ids(writer, range(500))
    assert not writer.flush(timeout=0.3)  # held in memory, not on disk
    assert not writer.writable
    path.rmdir()
    # The next retry (every second) opens the file and writes everything held.
    assert writer.flush(timeout=RETRY_EVERY * 3)
    assert writer.writable
    writer.close()
    assert [r["request_id"] for r in lines(path)] == [f"r{i}" for i in range(500)]
    assert len(lines(tmp_path / "audit.jsonl.1")) == 3


def test_a_symlink_at_the_audit_path_is_never_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("not an audit log\n")
    path = tmp_path / "audit.jsonl"
    path.symlink_to(victim)
    writer = AuditWriter(str(path))
    assert not writer.writable
    write_ids(writer, range(10))
    assert not writer.flush(timeout=0.3)
    assert victim.read_text() == "not an audit log\n"
    path.unlink()
    assert writer.flush(timeout=RETRY_EVERY * 3)
    writer.close()
    assert not path.is_symlink()
    assert len(lines(path)) == 10


def test_records_past_max_buffer_are_dropped_counted_and_logged_once_per_interval(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "audit.jsonl"
    path.mkdir()
    before = dropped_total()
    writer = AuditWriter(str(path), max_buffer=64 * 1024)
    with caplog.at_level(logging.ERROR, logger="gatehouse.audit"):
        for start in range(0, 2000, 100):  # batches of 100 records, about 40 KiB each
            write_ids(writer, range(start, start + 100))
            writer.flush(timeout=0.0)  # hand the batch to the thread now
        time.sleep(RETRY_EVERY * 1.5)
        dropped = dropped_total() - before
        path.rmdir()
        assert writer.flush(timeout=RETRY_EVERY * 3)
    writer.close()
    kept = [r["request_id"] for r in lines(path)]
    assert dropped > 0
    assert len(kept) + dropped == 2000
    # The oldest records are the ones kept, in order.
    assert kept == [f"r{i}" for i in range(len(kept))]
    drop_lines = [r for r in caplog.records if "records dropped" in r.getMessage()]
    assert 1 <= len(drop_lines) <= 3


def test_a_failing_write_holds_records_and_close_counts_what_could_not_be_written() -> None:
    # /dev/full opens but every write fails with ENOSPC, like a full disk.
    before = dropped_total()
    writer = AuditWriter("/dev/full")
    write_ids(writer, range(25))
    assert not writer.flush(timeout=0.5)
    assert not writer.writable
    started = time.monotonic()
    writer.close(timeout=RETRY_EVERY * 2)
    assert time.monotonic() - started < RETRY_EVERY * 3
    assert dropped_total() - before == 25


def test_audit_file_is_created_owner_and_group_only(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    old = os.umask(0)
    try:
        writer = AuditWriter(str(path))
    finally:
        os.umask(old)
    writer.close()
    assert path.stat().st_mode & 0o777 == 0o640


def metric_value(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


async def admin_get(gh: Gatehouse, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(gh.admin_url + path) as r:
        return r.status, await r.text()


async def until_ready(gh: Gatehouse, ready: bool, timeout: float = 10.0) -> dict[str, bool]:
    deadline = time.monotonic() + timeout
    while True:
        status, body = await admin_get(gh, "/readyz")
        if (status == 200) == ready:
            checks: dict[str, bool] = json.loads(body)["checks"]
            return checks
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.05)


async def test_an_unopenable_audit_file_turns_readiness_false_and_requests_503_until_fixed(
    gatehouse: GatehouseFactory, upstream_url: str
) -> None:
    gh, rotated = await rotated_after_one_request(gatehouse, upstream_url)
    async with aiohttp.ClientSession() as s:
        gh.audit_path.mkdir()  # what logrotate can never open, even as root
        gh.signal(signal.SIGHUP)
        checks = await until_ready(gh, False)
        assert checks["audit"] is False
        refused = []
        for _ in range(20):
            async with s.get(gh.url + "/echo") as r:
                body = await r.json()
                assert (r.status, body["error"]) == (503, "audit_unavailable")
                refused.append(body["request_id"])
        _, text = await admin_get(gh, "/metrics")
        assert metric_value(text, "gatehouse_audit_writable") == 0.0
        assert metric_value(text, "gatehouse_audit_dropped_records_total") == 0.0
        gh.audit_path.rmdir()
        assert (await until_ready(gh, True))["audit"] is True
        async with s.get(gh.url + "/echo") as r:
            assert r.status == 200
    assert gh.stop() == 0
    records = gh.audit_records()
    # Every refused request's record was held, then written exactly once, in order.
    assert [r["request_id"] for r in records[:-1]] == refused
    assert {(r["status"], r["reason"]) for r in records[:-1]} == {(503, "audit_unavailable")}
    assert records[-1]["status"] == 200
    assert len(lines(rotated)) == 1


async def test_with_audit_not_required_requests_are_served_and_drops_past_the_bound_are_counted(
    gatehouse: GatehouseFactory, upstream_url: str, tmp_path: Path
) -> None:
    audit_path = tmp_path / "audit.jsonl"
    gh = gatehouse(
        backends={"up": {"urls": [upstream_url]}},
        routes=[public_route("all", "/", "up")],
        extra={"audit": {"output": str(audit_path), "required": False, "max_buffer": "64KiB"}},
    )
    audit_path.rename(tmp_path / "audit.jsonl.1")
    audit_path.mkdir()
    gh.signal(signal.SIGHUP)
    await until_ready(gh, False)
    sent = 600
    async with aiohttp.ClientSession() as s:

        async def one() -> str:
            async with s.get(gh.url + "/echo") as r:
                assert r.status == 200
                return r.headers["X-Request-Id"]

        served = []
        for _ in range(sent // 20):
            served += await asyncio.gather(*(one() for _ in range(20)))
    audit_path.rmdir()
    await until_ready(gh, True)
    # Every batch was handed over (or dropped) long before the file came back.
    _, text = await admin_get(gh, "/metrics")
    dropped = metric_value(text, "gatehouse_audit_dropped_records_total")
    assert dropped is not None and dropped > 0
    assert gh.stop() == 0
    kept = [r["request_id"] for r in lines(audit_path)]
    assert len(kept) == len(set(kept))
    assert set(kept) <= set(served)
    assert len(kept) + dropped == sent
    # One log line per interval, not one per dropped record.
    assert 1 <= gh.stderr().count("records dropped") <= 5


def audit_config(tmp_path: Path, section: str) -> Path:
    (tmp_path / "policies").mkdir(exist_ok=True)
    path = tmp_path / "gatehouse.yaml"
    path.write_text(f"audit:\n{section}backends:\n  up:\n    urls: [http://127.0.0.1:8000]\n")
    return path


def test_audit_is_required_by_default_with_a_64mib_buffer(tmp_path: Path) -> None:
    config = load_config(audit_config(tmp_path, "  output: audit.jsonl\n"))
    assert config.audit == AuditConfig(str(tmp_path / "audit.jsonl"), True, 64 * 2**20)
    config = load_config(audit_config(tmp_path, "  required: false\n  max_buffer: 1MiB\n"))
    assert config.audit == AuditConfig("stdout", False, 2**20)


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (
            lambda p: p.symlink_to(p.parent / "elsewhere"),
            "must not be a symlink (the file is opened with O_NOFOLLOW)",
        ),
        (lambda p: p.mkdir(), "is not a regular file"),
    ],
)
def test_an_audit_output_the_writer_could_not_open_is_refused_at_start_up(
    tmp_path: Path, make: Callable[[Path], None], problem: str
) -> None:
    make(tmp_path / "audit.jsonl")
    with pytest.raises(ConfigError) as info:
        load_config(audit_config(tmp_path, "  output: audit.jsonl\n"))
    assert [str(p) for p in info.value.problems] == [
        f"{tmp_path / 'gatehouse.yaml'}:2: audit.output: {problem}"
    ]


def test_an_audit_buffer_below_64kib_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(audit_config(tmp_path, "  max_buffer: 4KiB\n"))
    assert "gatehouse.yaml:2: audit.max_buffer: must be at least 64KiB" in str(info.value)


def test_a_full_non_blocking_stdout_pipe_is_waited_out_and_nothing_is_lost(
    tmp_path: Path,
) -> None:
    # A log collector that set O_NONBLOCK on the pipe it shares with gatehouse's
    # stdout, and reads slowly: the writer sees EAGAIN, which is not a failure.
    child = (
        "import time\n"
        "from proxy.observability.audit import AuditRecord, AuditWriter\n"
        "w = AuditWriter('stdout')\n"
        "for i in range(3000):\n"
        "    w.write(AuditRecord(ts_epoch=time.time(), request_id=f'r{i}', path='/' + 'x' * 200))\n"
        "w.close()\n"
        "assert w.writable\n"
    )
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    process = subprocess.Popen(
        [sys.executable, "-c", child], stdout=write_end, stderr=subprocess.PIPE, cwd=REPO
    )
    os.close(write_end)
    # Read nothing until the pipe is full: the writer is then meeting EAGAIN.
    eventually(lambda: _pending(read_end) >= 60 * 1024, timeout=20)
    out = b""
    with os.fdopen(read_end, "rb") as pipe:
        while chunk := pipe.read(65536):
            out += chunk
    _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err.decode()
    ids = [json.loads(line)["request_id"] for line in out.splitlines()]
    assert ids == [f"r{i}" for i in range(3000)]
    assert b"audit:" not in err


def _pending(fd: int) -> int:
    """Bytes waiting in a pipe."""
    return int.from_bytes(fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4), sys.byteorder)


async def test_the_audit_record_names_the_user_agent_within_a_bound(
    gatehouse: GatehouseFactory, upstream_url: str
) -> None:
    gh = gatehouse(
        backends={"up": {"urls": [upstream_url]}}, routes=[public_route("all", "/", "up")]
    )
    async with aiohttp.ClientSession() as s:
        async with s.get(gh.url + "/echo", headers={"User-Agent": "curl/8.5.0"}) as r:
            assert r.status == 200
        async with s.get(gh.url + "/echo", headers={"User-Agent": "x" * 5000}) as r:
            assert r.status == 200
        async with s.get(gh.url + "/echo", skip_auto_headers=["User-Agent"]) as r:
            assert r.status == 200
    first, long, none = gh.wait_audit(3)
    assert first["user_agent"] == "curl/8.5.0"
    assert long["user_agent"] == "x" * 256
    assert none["user_agent"] is None


def test_an_endpoint_outcome_names_who_asked_or_decided_and_which_grant() -> None:
    record = AuditRecord(ts_epoch=1.0, request_id="r1")
    EndpointOutcome(
        "grant_approved", subject="bob", issuer="https://idp", auth="session", grant_id="g_1"
    ).apply(record)
    assert (record.decision, record.reason, record.grant_id) == ("allow", "grant_approved", "g_1")
    assert (record.subject, record.issuer, record.auth) == ("bob", "https://idp", "session")
    refused = AuditRecord(ts_epoch=1.0, request_id="r2")
    EndpointOutcome("self_approval", decision="deny").apply(refused)
    assert (refused.decision, refused.subject) == ("deny", None)
