"""The benchmark machinery at tiny scale: load generator, upstream, references, cleanup."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psutil
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bench.__main__ import main as bench_main
from bench.aiohttp_passthrough import build_app
from bench.histogram import Histogram, bucket_low, bucket_of
from bench.loadgen import _Response
from bench.measure import parse_wrk
from bench.procs import free_port, wait_http_ok
from bench.profile_summary import summarize

REPO = Path(__file__).resolve().parents[2]


def _python_env(marker: str | None = None) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if marker is not None:
        env["BENCH_TEST_MARKER"] = marker
    return env


@pytest.fixture
def python_upstream() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.upstream", str(port)],
        cwd=REPO,
        env=_python_env(),
    )
    try:
        assert wait_http_ok("127.0.0.1", port, "/", timeout=20, proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def test_python_loadgen_against_python_upstream_counts_requests_and_latency(
    python_upstream: str,
) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.loadgen", python_upstream + "/", "-c", "8", "-d", "1"],
        cwd=REPO,
        env=_python_env(),
        capture_output=True,
        timeout=60,
        check=True,
    )
    result = json.loads(out.stdout)
    assert result["requests"] > 100
    assert result["status_errors"] == 0
    assert result["socket_errors"] == 0
    assert result["reconnects"] == 0
    assert result["rps"] == pytest.approx(result["requests"] / result["duration"])
    assert 0 < result["p50_ms"] <= result["p99_ms"]


def test_response_parser_frames_content_length_and_chunked_split_anywhere() -> None:
    wire = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nTrailer: x\r\n\r\n"
        b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"
    )
    for step in (1, 7, len(wire)):
        resp = _Response()
        statuses = []
        for i in range(0, len(wire), step):
            done = resp.feed(wire[i : i + step])
            while done:
                statuses.append((resp.status, resp.close))
                resp.reset()
                done = resp._advance() if resp.buf else False
        assert statuses == [(200, False), (201, False), (204, True)]
        assert not resp.buf


def test_histogram_buckets_keep_relative_error_below_a_tenth_of_a_percent() -> None:
    for us in (*range(0, 5000, 7), 123_456, 9_999_999, 2**31 + 5):
        low = bucket_low(bucket_of(us))
        assert low <= us
        assert us - low <= max(1, us // 1000)
    h = Histogram()
    for us in range(1, 1001):
        h.record_us(us)
    assert h.percentile_us(50) == 500
    assert h.percentile_us(99) == 990
    assert h.percentile_us(100) == 1000


def test_parse_wrk_reads_rate_latency_and_every_kind_of_error() -> None:
    out = """Running 5s test @ http://127.0.0.1:8080/
  1 threads and 32 connections
  Latency Distribution
     50%  346.00us
     75%  375.00us
     90%  394.00us
     99%    1.23ms
  151209 requests in 2.00s, 17.45MB read
  Socket errors: connect 1, read 2, write 3, timeout 4
  Non-2xx or 3xx responses: 10
Requests/sec:  75569.06
Transfer/sec:      8.72MB
"""
    r = parse_wrk(out)
    assert r.rps == pytest.approx(75569.06)
    assert r.p50_ms == pytest.approx(0.346)
    assert r.p99_ms == pytest.approx(1.23)
    assert r.requests == 151209
    assert r.errors == 20


@pytest.fixture
async def echo_upstream() -> AsyncIterator[TestServer]:
    async def echo(req: web.Request) -> web.Response:
        body = await req.read()
        seen = {
            "method": req.method,
            "path_qs": req.path_qs,
            "body": body.decode(),
            "headers": [[k, v] for k, v in req.headers.items()],
        }
        resp = web.json_response(seen, status=201)
        resp.headers["Connection"] = "X-Upstream-Hop"
        resp.headers["X-Upstream-Hop"] = "secret"
        resp.headers["Keep-Alive"] = "timeout=5"
        resp.headers["Proxy-Authenticate"] = "Basic"
        resp.headers["X-End-To-End"] = "kept"
        return resp

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


async def test_aiohttp_passthrough_forwards_request_and_drops_hop_by_hop_headers(
    echo_upstream: TestServer,
) -> None:
    proxy = TestServer(build_app(str(echo_upstream.make_url(""))), host="127.0.0.1")
    await proxy.start_server()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(
            b"POST /items/42?q=a%20b HTTP/1.1\r\n"
            b"Host: public.example\r\n"
            b"Connection: keep-alive, X-Client-Hop\r\n"
            b"X-Client-Hop: drop-me\r\n"
            b"Keep-Alive: timeout=5\r\n"
            b"TE: trailers\r\n"
            b"Proxy-Authorization: Basic Zm9vOmJhcg==\r\n"
            b"X-Request-Thing: kept\r\n"
            b"Content-Length: 5\r\n\r\nhello"
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        lines = head.decode().split("\r\n")
        resp_headers = {
            k.strip().lower(): v.strip()
            for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)
        }
        body = await reader.readexactly(int(resp_headers["content-length"]))
        writer.close()
    finally:
        await proxy.close()

    assert lines[0].startswith("HTTP/1.1 201")
    assert resp_headers["x-end-to-end"] == "kept"
    for hop in ("x-upstream-hop", "keep-alive", "proxy-authenticate"):
        assert hop not in resp_headers
    seen = json.loads(body)
    assert seen["method"] == "POST"
    assert seen["path_qs"] == "/items/42?q=a%20b"
    assert seen["body"] == "hello"
    upstream_headers = {k.lower(): v for k, v in seen["headers"]}
    assert upstream_headers["x-request-thing"] == "kept"
    assert upstream_headers["host"] == f"127.0.0.1:{echo_upstream.port}"
    for hop in ("x-client-hop", "keep-alive", "te", "proxy-authorization"):
        assert hop not in upstream_headers


def _tiny_run_args() -> list[str]:
    return [
        "--loadgen=python",
        "--upstream=python",
        "--no-install",
        "--scenarios=direct,aiohttp_passthrough",
        "--duration=0.5",
        "--warmup=0.2",
        "--runs=1",
        "--connections=4",
        "--no-idle",
        "--no-stream",
        "--no-policy",
        "--no-jwt",
        "--no-stages",
        "--no-path",
    ]


def test_harness_reports_tiny_run_and_leaves_no_child_processes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "latest.md"
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    assert bench_main([*_tiny_run_args(), f"--output={output}"]) == 0
    printed = capsys.readouterr().out
    assert output.read_text().strip() == printed.strip()
    rps = dict(
        line.split(" ", 1)[1].split("=") for line in printed.splitlines() if line.startswith("rps ")
    )
    assert float(rps["direct"]) > 0
    assert float(rps["aiohttp_passthrough"]) > 0
    assert "| direct to upstream |" in printed
    assert {p.pid for p in psutil.Process().children(recursive=True)} - before == set()


def test_caddy_and_haproxy_references_run_beside_gatehouse_and_print_the_headline_ratios(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The system packages caddy and haproxy (Makefile SYSTEM_PACKAGES): a missing
    # one is a failure here, not a skip.
    args = [a for a in _tiny_run_args() if not a.startswith("--scenarios=")]
    scenarios = "--scenarios=direct,caddy,haproxy,full_identity,full_identity_tls"
    assert bench_main([*args, scenarios, f"--output={tmp_path / 'r.md'}"]) == 0
    printed = capsys.readouterr().out
    lines = dict(
        line.split("=", 1) for line in printed.splitlines() if line.startswith(("rps ", "ratio "))
    )
    for name in ("caddy", "haproxy", "full_identity", "full_identity_tls"):
        assert float(lines[f"rps {name}"]) > 0, printed
    assert float(lines["ratio full_identity/caddy"]) > 0
    assert float(lines["ratio tls/full_identity"]) > 0


def test_the_in_process_path_benchmark_answers_every_request_of_every_scenario() -> None:
    # path_micro exits non-zero when any request is not answered 200.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.path_micro",
            "--scenario=all",
            "--requests=2000",
            "--repeats=1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    figures = dict(line.split("=") for line in done.stdout.splitlines() if "=" in line)
    assert float(figures["path_cpu_us_per_req_full_identity"]) > 0
    assert float(figures["path_cpu_us_per_req_gatehouse_public"]) > 0
    assert float(figures["path_cpu_us_per_req_decision"]) > 0


def _processes_with_marker(marker: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get("BENCH_TEST_MARKER") == marker:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def test_ctrl_c_mid_run_stops_every_process_the_harness_started() -> None:
    marker = uuid.uuid4().hex
    args = [a for a in _tiny_run_args() if not a.startswith("--duration")]
    harness = subprocess.Popen(
        [sys.executable, "-m", "bench", *args, "--duration=30", "--no-write"],
        cwd=REPO,
        env=_python_env(marker),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert harness.stderr is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = harness.stderr.readline().decode()
            if "scenario direct: starting" in line:
                break
        time.sleep(1.0)  # the upstream and the load generator are running now
        assert len(_processes_with_marker(marker)) >= 3
        harness.send_signal(signal.SIGINT)
        assert harness.wait(20) == 130
    finally:
        if harness.poll() is None:
            harness.kill()
            harness.wait()
    assert _processes_with_marker(marker) == []


def test_profile_summary_ranks_functions_by_self_time_and_merges_lines() -> None:
    collapsed = "\n".join(
        [
            'process 1:"gatehouse run";main (proxy/cli.py:10);handle (proxy/gateway.py:5) 6',
            'process 1:"gatehouse run";main (proxy/cli.py:10);handle (proxy/gateway.py:9) 2',
            'process 1:"gatehouse run";main (proxy/cli.py:12);write (proxy/audit.py:3) 2',
            "garbage line without a count",
        ]
    )
    rows = summarize(collapsed, top=2)
    assert rows[0].startswith("10 samples")
    assert rows[1].split() == ["80.0%", "80.0%", "handle", "(proxy/gateway.py)"]
    assert rows[2].split() == ["20.0%", "20.0%", "write", "(proxy/audit.py)"]
    assert len(rows) == 3
