"""Memory sections: RSS with many idle connections, RSS growth while streaming 1 GiB each way."""

from __future__ import annotations

import json
import select
import subprocess
import time
from dataclasses import dataclass, field

import psutil

from bench import gatehouse
from bench.procs import python
from bench.scenarios import Context, Skip, probe

MiB = 1 << 20


@dataclass
class Section:
    title: str
    lines: list[str] = field(default_factory=list)
    machine: list[str] = field(default_factory=list)
    preformatted: bool = False  # lines are a fixed-width table printed by a module


def rss_tree(pid: int) -> int:
    """RSS of a process and all its descendants (forked workers count too)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


def _start_public(
    ctx: Context, name: str, upstream: str, listen: dict[str, object] | None = None
) -> tuple[gatehouse.Setup, subprocess.Popen[bytes]]:
    if not ctx.tools.gatehouse:
        raise Skip("`gatehouse` is not installed in this environment")
    setup = gatehouse.public_route(ctx.workdir, name, upstream, listen=listen)
    try:
        proc = gatehouse.start(ctx.pg, ctx.tools.gatehouse, setup, ctx.proxy_cpus)
    except gatehouse.Unavailable as e:
        raise Skip(str(e)) from e
    return setup, proc


def idle_connections(ctx: Context, count: int) -> Section:
    sec = Section(f"RSS with {count:,} idle keep-alive connections (Gatehouse, one worker)")
    try:
        setup, proc = _start_public(
            ctx, "idle", ctx.upstream_url, listen={"backlog": 4096, "keepalive_timeout": "300s"}
        )
    except Skip as e:
        sec.lines.append(f"skipped: {e}")
        return sec
    try:
        for _ in range(50):  # warm the request path so the baseline is steady-state
            probe(setup.url, ())
        baseline = rss_tree(proc.pid)
        argv = [python(), "-m", "bench.idle_client", "127.0.0.1", str(setup.port), str(count)]
        client = ctx.pg.start("idle-client", argv, cpus=ctx.load_cpus, capture=True, stdin=True)
        assert client.stdout is not None
        assert client.stdin is not None
        ready, _, _ = select.select([client.stdout], [], [], 180)
        line = client.stdout.readline() if ready else b""
        if not line:
            sec.lines.append(f"skipped: idle client failed: {ctx.pg.log_tail('idle-client', 3)}")
            ctx.pg.stop(client)
            return sec
        report = json.loads(line)
        time.sleep(1.0)  # let the proxy settle with every connection idle
        peak = 0
        for _ in range(10):
            peak = max(peak, rss_tree(proc.pid))
            time.sleep(0.1)
        client.stdin.close()
        ctx.pg.stop(client)
        per_conn = (peak - baseline) / max(1, report["open"])
        sec.lines.append(
            f"{report['open']:,} connections open after one request each "
            f"(failed {report['failed']}{f' {errors}' if (errors := report.get('errors')) else ''}"
            f", statuses {report['statuses']})"
        )
        sec.lines.append(
            f"RSS {peak / MiB:.1f} MiB (baseline {baseline / MiB:.1f} MiB, "
            f"+{(peak - baseline) / MiB:.1f} MiB, {per_conn / 1024:.1f} KiB per connection); "
            "target <= 250 MiB"
        )
        sec.machine.append(f"rss_idle_mib={peak / MiB:.1f}")
        sec.machine.append(f"idle_open={report['open']}")
    finally:
        ctx.pg.stop(proc)
    return sec


def _transfer(
    ctx: Context, pid: int, mode: str, port: int, size: int, timeout: float
) -> tuple[dict[str, object], int, int]:
    """Run one transfer while sampling the proxy's RSS; (client report, baseline, peak)."""
    baseline = rss_tree(pid)
    argv = [python(), "-m", "bench.stream_client", mode, "127.0.0.1", str(port), str(size)]
    client = ctx.pg.start(f"stream-{mode}", argv, cpus=ctx.load_cpus, capture=True)
    peak = baseline
    deadline = time.monotonic() + timeout
    while client.poll() is None and time.monotonic() < deadline:
        peak = max(peak, rss_tree(pid))
        time.sleep(0.02)
    if client.poll() is None:
        ctx.pg.stop(client)
        return {"error": f"did not finish within {timeout:.0f} s"}, baseline, peak
    assert client.stdout is not None
    out = client.stdout.read().decode(errors="replace").strip()
    ctx.pg.stop(client)
    if not out:
        return {"error": ctx.pg.log_tail(f"stream-{mode}", 2)}, baseline, peak
    report: dict[str, object] = json.loads(out)
    return report, baseline, peak


def streaming(ctx: Context, size: int, timeout: float = 150.0) -> Section:
    sec = Section(f"RSS growth streaming {size / MiB:,.0f} MiB up and down through Gatehouse")
    try:
        aux = ctx.aux_url()
        # Body limits are per-route policy; lift the default so 1 GiB may pass.
        setup, proc = _start_public(ctx, "stream", aux, listen={"max_body": 4 * size})
    except (Skip, RuntimeError) as e:
        sec.lines.append(f"skipped: {e}")
        return sec
    try:
        probe(f"http://127.0.0.1:{setup.port}/bytes/1024", ())
        for mode in ("upload", "download"):
            report, baseline, peak = _transfer(ctx, proc.pid, mode, setup.port, size, timeout)
            if "error" in report or report.get("status") != 200 or report.get("bytes") != size:
                sec.lines.append(f"{mode}: failed: {report}")
                continue
            secs = float(str(report["seconds"]))
            growth = (peak - baseline) / MiB
            sec.lines.append(
                f"{mode}: {size / MiB:,.0f} MiB in {secs:.1f} s ({size / MiB / secs:,.0f} MiB/s), "
                f"RSS {baseline / MiB:.1f} -> peak {peak / MiB:.1f} MiB "
                f"(growth {growth:.1f} MiB; target <= 32 MiB)"
            )
            sec.machine.append(f"rss_growth_{mode}_mib={growth:.1f}")
    finally:
        ctx.pg.stop(proc)
    return sec
