"""SIGTERM through a real process: what is still running at the drain deadline.

A request still waiting on its upstream gets 503 ``shutting_down``; one whose
answer already began is cut (its connection closed, never a fake end); one that
finishes in time is answered normally. Each has exactly one audit record, and
every record is in the file when the process has exited.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Awaitable

import pytest

from tests.conftest import GatehouseFactory
from tests.support.gatehouse import Gatehouse, public_route

DRAIN = 1.0


def traceparent(trace_id: str) -> bytes:
    return b"traceparent: 00-" + trace_id.encode() + b"-" + os.urandom(8).hex().encode() + b"-01"


async def send(
    gh: Gatehouse, target: str, trace_id: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", gh.port)
    writer.write(
        b"GET "
        + target.encode()
        + b" HTTP/1.1\r\nHost: a\r\n"
        + traceparent(trace_id)
        + b"\r\n\r\n"
    )
    await writer.drain()
    return reader, writer


async def read_all(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.read(), 15)  # to the close


def head_of(response: bytes) -> tuple[int, dict[str, str]]:
    head = response.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    fields = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return int(head[0].split(" ", 2)[1]), fields


@pytest.fixture
def gh(gatehouse: GatehouseFactory, upstream_url: str) -> Gatehouse:
    return gatehouse(
        backends={"up": {"urls": [upstream_url], "timeouts": {"total": "60s", "read": "60s"}}},
        routes=[public_route("all", "/", "up")],
        extra={"shutdown": {"drain_timeout": f"{DRAIN}s"}},
    )


async def test_sigterm_answers_what_runs_at_the_deadline_with_503_or_a_cut_and_audits_each_once(
    gh: Gatehouse,
) -> None:
    waiting, streaming, quick = (os.urandom(16).hex() for _ in range(3))
    slow_reader, slow_writer = await send(gh, "/slow?seconds=30", waiting)
    big_reader, big_writer = await send(gh, f"/download/{2**31}", streaming)
    assert (await big_reader.readexactly(65536))[:12] == b"HTTP/1.1 200"  # the answer began
    quick_reader, quick_writer = await send(gh, "/slow?seconds=0.3", quick)
    await asyncio.sleep(0.1)

    gh.signal(signal.SIGTERM)
    signalled = time.monotonic()
    quick_answer = await read_all(quick_reader)
    slow_answer = await read_all(slow_reader)
    answered_after = time.monotonic() - signalled
    cut: Awaitable[bytes] = read_all(big_reader)  # read on until the proxy closes it
    streamed = 65536 + len(await cut)
    for writer in (slow_writer, big_writer, quick_writer):
        writer.close()

    assert head_of(quick_answer)[0] == 200
    status, fields = head_of(slow_answer)
    assert status == 503 and fields["connection"] == "close"
    assert json.loads(slow_answer.partition(b"\r\n\r\n")[2])["error"] == "shutting_down"
    assert DRAIN - 0.2 < answered_after < DRAIN + 3  # at the deadline, not at the upstream's pace
    assert streamed < 2**31  # cut, not completed

    assert await asyncio.to_thread(gh.process.wait, 20) == 0
    records = {r["trace_id"]: r for r in gh.audit_records()}
    all_traces = [r["trace_id"] for r in gh.audit_records()]
    for trace in (waiting, streaming, quick):
        assert all_traces.count(trace) == 1  # exactly one record each, all flushed before exit
    assert (records[waiting]["status"], records[waiting]["reason"]) == (503, "shutting_down")
    assert (records[streaming]["status"], records[streaming]["reason"]) == (200, "shutting_down")
    assert 0 < records[streaming]["bytes_out"] < 2**31
    assert records[quick]["status"] == 200
