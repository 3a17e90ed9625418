"""Micro-benchmark sections, each run in its own process pinned to the proxy's core."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from bench.memory import Section
from bench.procs import python
from bench.scenarios import Context

_MACHINE = re.compile(r"^[a-z][a-z0-9_./-]*=\S+$")


def run_module(ctx: Context, title: str, module: str, args: list[str], timeout: float) -> Section:
    sec = Section(title)
    path = Path(__file__).with_name(module.rsplit(".", 1)[1] + ".py")
    if not path.exists():
        sec.lines.append(f"skipped: {path.name} is not present")
        return sec
    name = module.rsplit(".", 1)[1]
    proc = ctx.pg.start(name, [python(), "-m", module, *args], cpus=ctx.proxy_cpus, capture=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        sec.lines.append(f"skipped: did not finish within {timeout:.0f} s")
        return sec
    finally:
        ctx.pg.stop(proc)
    if proc.returncode != 0:
        tail = ctx.pg.log_tail(name, 3).replace("\n", " | ")
        sec.lines.append(f"skipped: exited {proc.returncode}: {tail}")
        return sec
    sec.preformatted = True
    for line in out.decode(errors="replace").splitlines():
        line = line.rstrip()
        if not line:
            continue
        (sec.machine if _MACHINE.match(line) else sec.lines).append(line)
    return sec


def policy(ctx: Context, quick: bool) -> Section:
    return run_module(
        ctx,
        "Policy decision micro-benchmark (10 and 10,000 routes)",
        "bench.policy_micro",
        ["--quick"] if quick else [],
        timeout=300,
    )


def jwt(ctx: Context, quick: bool) -> Section:
    return run_module(
        ctx,
        "JWT RS256 verification (identity package): cold vs hot",
        "bench.jwt_micro",
        ["--quick"] if quick else [],
        timeout=180,
    )


def stages(ctx: Context, quick: bool) -> Section:
    return run_module(
        ctx,
        "Per-stage CPU of the full identity path (real components, no HTTP I/O)",
        "bench.stages_micro",
        ["--quick"] if quick else [],
        timeout=300,
    )


def path(ctx: Context, quick: bool) -> Section:
    return run_module(
        ctx,
        "CPU per request of the whole proxy path in process (no sockets: the part code moves)",
        "bench.path_micro",
        ["--scenario", "all", *(["--quick"] if quick else [])],
        timeout=300,
    )
