"""One load run (wrk or the bundled generator) and the median of several."""

from __future__ import annotations

import json
import math
import re
import statistics
import subprocess
from dataclasses import dataclass

from bench.procs import ProcessGroup, python


@dataclass(frozen=True, slots=True)
class RunResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int


@dataclass(frozen=True, slots=True)
class Load:
    """What to run and how: the same for every scenario apart from URL and headers."""

    wrk: str | None
    connections: int
    cpus: set[int] | None


class LoadError(Exception):
    pass


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text.strip())
    if not m:
        raise LoadError(f"unparsable wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> RunResult:
    """Parse ``wrk --latency`` output."""
    rps = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    if not (rps and total and p50 and p99):
        raise LoadError("unexpected wrk output:\n" + out[-800:])
    errors = 0
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock:
        errors += sum(int(x) for x in sock.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        errors += int(non2xx.group(1))
    return RunResult(
        rps=float(rps.group(1)),
        p50_ms=_ms(p50.group(1)),
        p99_ms=_ms(p99.group(1)),
        requests=int(total.group(1)),
        errors=errors,
    )


def parse_loadgen(out: str) -> RunResult:
    data = json.loads(out)
    return RunResult(
        rps=float(data["rps"]),
        p50_ms=float(data["p50_ms"]),
        p99_ms=float(data["p99_ms"]),
        requests=int(data["requests"]),
        errors=int(data["status_errors"]) + int(data["socket_errors"]),
    )


def run_once(
    pg: ProcessGroup,
    load: Load,
    url: str,
    *,
    duration: float,
    headers: tuple[tuple[str, str], ...] = (),
) -> RunResult:
    hdr_args: list[str] = []
    for name, value in headers:
        hdr_args += ["-H", f"{name}: {value}"]
    if load.wrk:
        secs = max(1, math.ceil(duration))  # wrk takes whole seconds only
        argv = [load.wrk, "-t1", f"-c{load.connections}", f"-d{secs}s", "--latency"]
        argv += ["--timeout", "5s", *hdr_args, url]
        parse = parse_wrk
    else:
        argv = [python(), "-m", "bench.loadgen", url, "-c", str(load.connections)]
        argv += ["-d", str(duration), "--insecure", *hdr_args]
        parse = parse_loadgen
    proc = pg.start("load", argv, cpus=load.cpus, capture=True)
    try:
        out, _ = proc.communicate(timeout=duration + 30)
    except subprocess.TimeoutExpired as e:
        raise LoadError("load generator did not finish") from e
    finally:
        pg.stop(proc)
    if proc.returncode != 0:
        raise LoadError(f"load generator exited {proc.returncode}: {pg.log_tail('load', 5)}")
    return parse(out.decode(errors="replace"))


def median(runs: list[RunResult]) -> RunResult:
    """Median of each figure separately: robust to one noisy run on a shared machine."""
    return RunResult(
        rps=statistics.median(r.rps for r in runs),
        p50_ms=statistics.median(r.p50_ms for r in runs),
        p99_ms=statistics.median(r.p99_ms for r in runs),
        requests=sum(r.requests for r in runs),
        errors=sum(r.errors for r in runs),
    )
