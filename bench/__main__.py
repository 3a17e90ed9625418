"""``python -m bench`` (``make bench``): Gatehouse against its references, one machine, one run.

Scenarios (req/s, p50, p99 with 32 keep-alive connections, the proxy pinned to one
core and load generator + upstream on the other): direct, nginx, HAProxy and Caddy
as plain reverse proxies,
aiohttp pass-through, Gatehouse public route, full identity path, + assertion,
over TLS. Sections: RSS with idle connections, RSS growth while streaming, policy
and JWT micro-benchmarks. The report goes to stdout and bench/results/latest.md.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench import memory, micro
from bench.measure import Load
from bench.memory import Section
from bench.procs import ProcessGroup, cpu_layout, raise_nofile
from bench.report import RunInfo, render
from bench.scenarios import NAMES, SCENARIOS, Context, Outcome, measure_all, start_upstream
from bench.tools import find_tools

DEFAULT_OUTPUT = Path(__file__).with_name("results") / "latest.md"


def _scenario_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown scenario(s) {unknown}; choose from {NAMES}")
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="~1 s runs and smaller sections")
    p.add_argument("--duration", type=float, help="seconds per measured run (default 5)")
    p.add_argument("--warmup", type=float, help="seconds of warm-up per scenario (default 2)")
    p.add_argument("--runs", type=int, default=3, help="measured runs per scenario (median)")
    p.add_argument("-c", "--connections", type=int, default=32)
    p.add_argument("--scenarios", type=_scenario_list, default=list(NAMES))
    p.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    p.add_argument("--upstream", choices=("auto", "nginx", "python"), default="auto")
    p.add_argument("--no-install", action="store_true", help="never apt-get install wrk/nginx")
    p.add_argument("--no-scenarios", action="store_true", help="skip the req/s table")
    p.add_argument("--no-idle", action="store_true", help="skip the idle-connections section")
    p.add_argument("--no-stream", action="store_true", help="skip the streaming section")
    p.add_argument("--no-policy", action="store_true", help="skip the policy micro-benchmark")
    p.add_argument("--no-jwt", action="store_true", help="skip the JWT micro-benchmark")
    p.add_argument(
        "--no-stages", action="store_true", help="skip the per-stage CPU micro-benchmark"
    )
    p.add_argument(
        "--no-path", action="store_true", help="skip the in-process whole-path CPU benchmark"
    )
    p.add_argument("--idle-connections", type=int, default=10_000)
    p.add_argument("--stream-bytes", type=int, help="bytes each way (default 1 GiB)")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    p.add_argument("--no-write", action="store_true", help="do not write the report file")
    p.add_argument(
        "--profile",
        type=_scenario_list,
        default=[],
        help="py-spy profile of these scenarios' proxy during one extra, uncounted run "
        "(written beside --output)",
    )
    p.add_argument("--keep-workdir", action="store_true", help="keep configs and logs")
    a = p.parse_args(argv)
    if a.duration is None:
        a.duration = 1.0 if a.quick else 5.0
    if a.warmup is None:
        a.warmup = 1.0 if a.quick else 2.0
    if a.stream_bytes is None:
        a.stream_bytes = (256 if a.quick else 1024) << 20
    if a.runs < 1:
        p.error("--runs must be at least 1")
    return a


def _say(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def run(a: argparse.Namespace, workdir: Path) -> str:
    want_wrk = a.loadgen != "python"
    want_nginx = a.upstream != "python" or "nginx_proxy" in a.scenarios
    want_references = bool({"caddy", "haproxy"} & set(a.scenarios))
    tools = find_tools(
        install=not a.no_install,
        want_wrk=want_wrk,
        want_nginx=want_nginx,
        want_references=want_references,
    )
    if a.loadgen == "wrk" and not tools.wrk:
        raise SystemExit("bench: --loadgen wrk but wrk is not available")
    if a.upstream == "nginx" and not tools.nginx:
        raise SystemExit("bench: --upstream nginx but nginx is not available")
    proxy_cpus, load_cpus = cpu_layout()
    if proxy_cpus is None:
        _say("only one CPU available: running unpinned (figures will be pessimistic)")
    limit = raise_nofile(a.idle_connections + 4096)
    if limit < a.idle_connections + 1024:
        _say(f"RLIMIT_NOFILE is {limit}; the idle-connection section may fall short")
    logs = workdir / "logs"
    logs.mkdir()
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    outcomes: list[Outcome] = []
    sections: list[Section] = []
    with ProcessGroup(logs) as pg:
        ctx = Context(pg, workdir, tools, proxy_cpus, load_cpus)
        start_upstream(ctx, prefer_nginx=a.upstream != "python")
        _say(f"upstream: {ctx.upstream_kind} at {ctx.upstream_url}")
        load = Load(
            wrk=tools.wrk if a.loadgen != "python" else None,
            connections=a.connections,
            cpus=load_cpus,
        )
        if not a.no_scenarios:
            chosen = [sc for sc in SCENARIOS if sc[0] in a.scenarios]
            outcomes = measure_all(
                ctx,
                chosen,
                load,
                warmup=a.warmup,
                duration=a.duration,
                runs=a.runs,
                profile=frozenset(a.profile),
                profile_dir=a.output.parent,
            )
        if not a.no_idle:
            _say(f"section: {a.idle_connections:,} idle connections")
            sections.append(memory.idle_connections(ctx, a.idle_connections))
        if not a.no_stream:
            _say(f"section: streaming {a.stream_bytes >> 20} MiB each way")
            sections.append(memory.streaming(ctx, a.stream_bytes))
        if not a.no_policy:
            _say("section: policy micro-benchmark")
            sections.append(micro.policy(ctx, a.quick))
        if not a.no_jwt:
            _say("section: JWT verification")
            sections.append(micro.jwt(ctx, a.quick))
        if not a.no_stages:
            _say("section: per-stage CPU of the full identity path")
            sections.append(micro.stages(ctx, a.quick))
        if not a.no_path:
            _say("section: CPU per request of the whole path in process")
            sections.append(micro.path(ctx, a.quick))
    pinned = (
        f"proxy pinned to CPU {sorted(proxy_cpus)[0]}, load+upstream to CPU {sorted(load_cpus)[0]}"
        if proxy_cpus and load_cpus
        else "unpinned (one CPU)"
    )
    info = RunInfo(
        command="make bench"
        if sys.argv[1:] == []
        else "python -m bench " + shlex.join(sys.argv[1:]),
        loadgen="wrk (1 thread)" if load.wrk else "bundled Python generator",
        upstream=ctx.upstream_kind,
        connections=a.connections,
        duration=a.duration,
        runs=a.runs,
        pinned=pinned,
        load_before=load_before,
        load_after=os.getloadavg()[0],
    )
    _say(f"done in {time.monotonic() - started:.0f} s")
    return render(info, outcomes, sections)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="gatehouse-bench-"))
    try:
        text = run(a, workdir)
    except KeyboardInterrupt:
        _say("interrupted; every process it started has been stopped")
        return 130
    finally:
        if a.keep_workdir:
            _say(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(text)
    if not a.no_write:
        a.output.parent.mkdir(parents=True, exist_ok=True)
        a.output.write_text(text)
        _say(f"report written to {a.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
