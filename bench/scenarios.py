"""The req/s scenarios: how each target is started, probed and measured."""

from __future__ import annotations

import contextlib
import ssl
import statistics
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench import decision, gatehouse, nginx, references
from bench.aux_server import write_documents
from bench.measure import Load, LoadError, RunResult, median, run_once
from bench.procs import ProcessGroup, cpu_seconds, free_port, python, wait_http_ok, wait_tcp
from bench.profile_summary import summarize
from bench.tls import self_signed
from bench.tokens import AUDIENCE, SUBJECT, Issuer, new_issuer
from bench.tools import Tools

# Share of failed requests above which a run is reported as invalid, not as a figure.
MAX_ERROR_SHARE = 0.01


@dataclass
class Context:
    pg: ProcessGroup
    workdir: Path
    tools: Tools
    proxy_cpus: set[int] | None
    load_cpus: set[int] | None
    upstream_url: str = ""
    upstream_kind: str = ""
    _aux_url: str | None = None
    _issuer: Issuer | None = None

    def say(self, msg: str) -> None:
        print(f"bench: {msg}", file=sys.stderr, flush=True)

    def aux_url(self) -> str:
        """The helper server (JWKS, bulk bytes), started on first use."""
        if self._aux_url is None:
            port = free_port()
            docs = self.workdir / "aux"
            docs.mkdir(exist_ok=True)
            issuer = self.issuer_for(f"http://127.0.0.1:{port}")
            write_documents(docs, issuer.url, issuer.jwks())
            argv = [python(), "-m", "bench.aux_server", str(port), str(docs)]
            proc = self.pg.start("aux", argv, cpus=self.load_cpus)
            if not wait_http_ok("127.0.0.1", port, "/jwks.json", timeout=20, proc=proc):
                raise RuntimeError(f"aux server did not start: {self.pg.log_tail('aux')}")
            self._aux_url = f"http://127.0.0.1:{port}"
        return self._aux_url

    def issuer_for(self, url: str) -> Issuer:
        if self._issuer is None:
            self._issuer = new_issuer(url)
        return self._issuer


@dataclass(frozen=True, slots=True)
class Target:
    url: str
    headers: tuple[tuple[str, str], ...] = ()
    proc: subprocess.Popen[bytes] | None = None
    # After a successful probe: None if the target did what the scenario claims, else why not.
    confirm: Callable[[], str | None] | None = None


class Skip(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Outcome:
    name: str
    label: str
    result: RunResult | None = None
    skipped: str | None = None
    runs: tuple[RunResult, ...] = ()
    # Median CPU time the proxy process spent per request: steadier than req/s when
    # other work shares the machine. None for the direct scenario (no proxy).
    cpu_us_per_request: float | None = None
    profile: tuple[str, ...] = ()


# -- upstream -----------------------------------------------------------------
def start_upstream(ctx: Context, prefer_nginx: bool) -> None:
    port = free_port()
    if prefer_nginx and ctx.tools.nginx:
        conf = nginx.upstream_conf(ctx.workdir, port)
        proc = ctx.pg.start("nginx-upstream", nginx.argv(ctx.tools.nginx, conf), cpus=ctx.load_cpus)
        if wait_http_ok("127.0.0.1", port, "/", timeout=10, proc=proc):
            ctx.upstream_url, ctx.upstream_kind = f"http://127.0.0.1:{port}", "nginx"
            return
        ctx.say(f"nginx upstream failed ({ctx.pg.log_tail('nginx-upstream', 3)}); using Python")
        ctx.pg.stop(proc)
        port = free_port()
    argv = [python(), "-m", "bench.upstream", str(port)]
    proc = ctx.pg.start("py-upstream", argv, cpus=ctx.load_cpus)
    if not wait_http_ok("127.0.0.1", port, "/", timeout=20, proc=proc):
        raise RuntimeError(f"Python upstream did not start: {ctx.pg.log_tail('py-upstream')}")
    ctx.upstream_url, ctx.upstream_kind = f"http://127.0.0.1:{port}", "python"


# -- scenario set-ups -----------------------------------------------------------
def _direct(ctx: Context) -> Target:
    return Target(ctx.upstream_url + "/")


def _nginx_proxy(ctx: Context) -> Target:
    if not ctx.tools.nginx:
        raise Skip("nginx is not installed")
    port = free_port()
    upstream_port = int(ctx.upstream_url.rsplit(":", 1)[1])
    conf = nginx.proxy_conf(ctx.workdir, port, upstream_port)
    proc = ctx.pg.start("nginx-proxy", nginx.argv(ctx.tools.nginx, conf), cpus=ctx.proxy_cpus)
    if not wait_http_ok("127.0.0.1", port, "/", timeout=10, proc=proc):
        tail = ctx.pg.log_tail("nginx-proxy", 3)
        ctx.pg.stop(proc)
        raise Skip(f"nginx reverse proxy did not start: {tail}")
    return Target(f"http://127.0.0.1:{port}/", proc=proc)


def _reference(
    ctx: Context, name: str, binary: str | None, argv: Callable[[int, int], list[str]]
) -> Target:
    """A plain reverse proxy from the system (Caddy, HAProxy) on the proxy's core."""
    if not binary:
        raise Skip(f"{name} is not installed")
    port = free_port()
    upstream_port = int(ctx.upstream_url.rsplit(":", 1)[1])
    proc = ctx.pg.start(name, argv(port, upstream_port), cpus=ctx.proxy_cpus)
    if not wait_http_ok("127.0.0.1", port, "/", timeout=15, proc=proc):
        tail = ctx.pg.log_tail(name, 3)
        ctx.pg.stop(proc)
        raise Skip(f"{name} did not start: {tail}")
    return Target(f"http://127.0.0.1:{port}/", proc=proc)


def _caddy(ctx: Context) -> Target:
    caddy = ctx.tools.caddy
    return _reference(
        ctx,
        "caddy",
        caddy,
        lambda port, up: references.caddy_argv(
            caddy or "", references.caddy_conf(ctx.workdir, port, up)
        ),
    )


def _haproxy(ctx: Context) -> Target:
    haproxy = ctx.tools.haproxy
    return _reference(
        ctx,
        "haproxy",
        haproxy,
        lambda port, up: references.haproxy_argv(
            haproxy or "", references.haproxy_conf(ctx.workdir, port, up)
        ),
    )


def _aiohttp(ctx: Context) -> Target:
    port = free_port()
    argv = [python(), "-m", "bench.aiohttp_passthrough", str(port), ctx.upstream_url]
    proc = ctx.pg.start("aiohttp-passthrough", argv, cpus=ctx.proxy_cpus)
    if not wait_tcp("127.0.0.1", port, timeout=20, proc=proc):
        tail = ctx.pg.log_tail("aiohttp-passthrough", 3)
        ctx.pg.stop(proc)
        raise Skip(f"aiohttp pass-through did not start: {tail}")
    return Target(f"http://127.0.0.1:{port}/", proc=proc)


def _need_gatehouse(ctx: Context) -> str:
    if not ctx.tools.gatehouse:
        raise Skip("`gatehouse` is not installed in this environment (pip install -e .)")
    return ctx.tools.gatehouse


def _run_gatehouse(ctx: Context, setup: gatehouse.Setup) -> Target:
    try:
        proc = gatehouse.start(ctx.pg, _need_gatehouse(ctx), setup, ctx.proxy_cpus)
    except gatehouse.Unavailable as e:
        raise Skip(str(e)) from e

    def confirm() -> str | None:
        if not gatehouse.metrics_show_route(setup, "bench"):
            return (
                "metrics not recorded: admin /metrics has no gatehouse_requests_total for 'bench'"
            )
        if setup.expect_subject is None or gatehouse.audit_shows_subject(setup):
            return None
        return f"identity not exercised: no audit record with subject {setup.expect_subject!r}"

    return Target(setup.url, setup.headers, proc, confirm)


def _gatehouse_public(ctx: Context) -> Target:
    _need_gatehouse(ctx)
    return _run_gatehouse(ctx, gatehouse.public_route(ctx.workdir, "public", ctx.upstream_url))


def _identity(ctx: Context) -> gatehouse.IdentityParams:
    issuer = ctx.issuer_for(ctx.aux_url())
    return gatehouse.IdentityParams(issuer.url, AUDIENCE, issuer.token(), SUBJECT)


def _full_identity(ctx: Context) -> Target:
    _need_gatehouse(ctx)
    setup = gatehouse.full_identity(ctx.workdir, "identity", ctx.upstream_url, _identity(ctx))
    return _run_gatehouse(ctx, setup)


def _full_identity_assertion(ctx: Context) -> Target:
    _need_gatehouse(ctx)
    key = ctx.workdir / "assertion-key.pem"
    if not key.exists():
        self_signed(ctx.workdir, "assertion")  # reuse its EC key as the signing key
        (ctx.workdir / "assertion.key").rename(key)
    setup = gatehouse.full_identity(
        ctx.workdir, "assertion", ctx.upstream_url, _identity(ctx), assertion_key=key
    )
    return _run_gatehouse(ctx, setup)


def _full_identity_tls(ctx: Context) -> Target:
    _need_gatehouse(ctx)
    cert, key = self_signed(ctx.workdir, "server")
    setup = gatehouse.full_identity(
        ctx.workdir, "tls", ctx.upstream_url, _identity(ctx), tls=(cert, key)
    )
    return _run_gatehouse(ctx, setup)


def _decision_nginx(ctx: Context) -> Target:
    if not ctx.tools.nginx:
        raise Skip("nginx is not installed")
    try:
        url, headers, proc, confirm = decision.start(ctx, _need_gatehouse(ctx), _identity(ctx))
    except gatehouse.Unavailable as e:
        raise Skip(str(e)) from e
    return Target(url, headers, proc, confirm)


def _decision_ceiling(ctx: Context) -> Target:
    if not ctx.tools.nginx:
        raise Skip("nginx is not installed")
    try:
        url, proc = decision.start_ceiling(ctx)
    except gatehouse.Unavailable as e:
        raise Skip(str(e)) from e
    return Target(url, proc=proc)


Setup = Callable[[Context], Target]

SCENARIOS: tuple[tuple[str, str, Setup], ...] = (
    ("direct", "direct to upstream", _direct),
    ("nginx_proxy", "nginx reverse proxy (C reference)", _nginx_proxy),
    ("haproxy", "HAProxy reverse proxy (C reference)", _haproxy),
    ("caddy", "Caddy reverse proxy (Go reference)", _caddy),
    ("aiohttp_passthrough", "aiohttp pass-through (Python reference)", _aiohttp),
    ("gatehouse_public", "Gatehouse, public route", _gatehouse_public),
    ("full_identity", "Gatehouse, JWT RS256 + 100 routes + audit + metrics", _full_identity),
    (
        "full_identity_assertion",
        "as full_identity + assertion credential",
        _full_identity_assertion,
    ),
    ("full_identity_tls", "as full_identity over TLS", _full_identity_tls),
    (decision.NAME, decision.LABEL, _decision_nginx),
    (decision.CEILING, decision.CEILING_LABEL, _decision_ceiling),
)
NAMES = tuple(name for name, _, _ in SCENARIOS)


# -- measuring -----------------------------------------------------------------
def probe(url: str, headers: tuple[tuple[str, str], ...]) -> tuple[int, str]:
    """One request before any load: a target answering errors is skipped, not measured."""
    req = urllib.request.Request(url, headers=dict(headers))  # noqa: S310 - our own URL
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as resp:  # noqa: S310
            return int(resp.status), resp.read(200).decode(errors="replace")
    except urllib.error.HTTPError as e:
        return int(e.code), e.read(200).decode(errors="replace")
    except OSError as e:
        return 0, f"{type(e).__name__}: {e}"


def _error_share(r: RunResult) -> float:
    return r.errors / max(1, r.requests + r.errors)


@dataclass
class _Live:
    name: str
    label: str
    target: Target
    runs: list[RunResult]
    cpu_us: list[float] = field(default_factory=list)
    failed: str | None = None
    profile: list[str] = field(default_factory=list)


def _start(ctx: Context, name: str, label: str, setup: Setup) -> _Live | Outcome:
    ctx.say(f"scenario {name}: starting")
    try:
        target = setup(ctx)
    except Skip as e:
        ctx.say(f"scenario {name}: skipped: {e}")
        return Outcome(name, label, skipped=str(e))
    status, body = probe(target.url, target.headers)
    why = f"probe answered {status}: {' '.join(body.split())[:160]}" if status != 200 else None
    if why is None and target.confirm is not None:
        why = target.confirm()
    if why is not None:
        if target.proc is not None:
            ctx.pg.stop(target.proc)
        ctx.say(f"scenario {name}: skipped: {why}")
        return Outcome(name, label, skipped=why)
    return _Live(name, label, target, [])


def _finish(live: _Live) -> Outcome:
    if live.failed:
        return Outcome(
            live.name,
            live.label,
            skipped=live.failed,
            runs=tuple(live.runs),
            profile=tuple(live.profile),
        )
    bad = [r for r in live.runs if _error_share(r) > MAX_ERROR_SHARE]
    if bad:
        worst = max(bad, key=_error_share)
        why = f"invalid: {worst.errors} of {worst.requests + worst.errors} requests failed in a run"
        return Outcome(
            live.name, live.label, skipped=why, runs=tuple(live.runs), profile=tuple(live.profile)
        )
    cpu = statistics.median(live.cpu_us) if live.cpu_us else None
    return Outcome(
        live.name,
        live.label,
        result=median(live.runs),
        runs=tuple(live.runs),
        cpu_us_per_request=cpu,
        profile=tuple(live.profile),
    )


def _start_profiler(
    ctx: Context, live: _Live, secs: float, out_dir: Path
) -> subprocess.Popen[bytes] | None:
    """py-spy on the proxy for the extra run (collapsed stacks, then a top-functions summary)."""
    if ctx.tools.py_spy is None or live.target.proc is None:
        ctx.say(f"scenario {live.name}: cannot profile (py-spy missing or no proxy process)")
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"profile-{live.name}.txt"
    # Blocking sampling (the default): --nonblocking tears stacks apart while
    # they change, which scatters a third of the samples over partial stacks.
    argv = [ctx.tools.py_spy, "record", "--format", "raw", "--subprocesses"]
    argv += ["--rate", "250"]
    argv += ["--duration", str(max(1, round(secs))), "--pid", str(live.target.proc.pid)]
    argv += ["--output", str(out)]
    return ctx.pg.start(f"py-spy-{live.name}", argv, cpus=ctx.load_cpus)


def _finish_profiler(
    ctx: Context, live: _Live, spy: subprocess.Popen[bytes], out_dir: Path
) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        spy.wait(30)
    ctx.pg.stop(spy)
    raw = out_dir / f"profile-{live.name}.txt"
    if not raw.exists():
        ctx.say(f"scenario {live.name}: no profile: {ctx.pg.log_tail(f'py-spy-{live.name}', 2)}")
        return
    live.profile = [f"collapsed stacks: {raw}", *summarize(raw.read_text())]


def measure_all(
    ctx: Context,
    chosen: list[tuple[str, str, Setup]],
    load: Load,
    *,
    warmup: float,
    duration: float,
    runs: int,
    profile: frozenset[str] = frozenset(),
    profile_dir: Path | None = None,
) -> list[Outcome]:
    """Start every target, warm each up, then measure round-robin.

    Interleaving the runs (1, 2, 3, 1, 2, 3, ...) spreads any background load on
    a shared machine over all scenarios instead of penalising whichever ran
    during it, so the ratios stay honest. Idle targets cost no CPU meanwhile.
    """
    started: list[_Live | Outcome] = []
    try:
        for name, label, setup in chosen:
            started.append(_start(ctx, name, label, setup))
        live = [s for s in started if isinstance(s, _Live)]
        # Round -1 warms up; rounds 0..runs-1 count; round `runs` is an extra, uncounted
        # run for the profiled scenarios only, so the profiler never skews a figure.
        last = runs + (1 if profile and profile_dir is not None else 0)
        for rnd in range(-1 if warmup > 0 else 0, last):
            for s in live:
                profiling = rnd == runs
                if s.failed or (profiling and s.name not in profile):
                    continue
                t = s.target
                secs = warmup if rnd < 0 else duration
                cpu_before = cpu_seconds(t.proc.pid) if t.proc is not None else 0.0
                spy = (
                    _start_profiler(ctx, s, secs, profile_dir)
                    if profiling and profile_dir
                    else None
                )
                try:
                    r = run_once(ctx.pg, load, t.url, duration=secs, headers=t.headers)
                except LoadError as e:
                    s.failed = f"load generator failed: {e}"
                    ctx.say(f"scenario {s.name}: {s.failed}")
                    continue
                finally:
                    if spy is not None and profile_dir is not None:
                        _finish_profiler(ctx, s, spy, profile_dir)
                if rnd < 0 or profiling:
                    continue
                s.runs.append(r)
                if t.proc is not None and r.requests:
                    s.cpu_us.append((cpu_seconds(t.proc.pid) - cpu_before) * 1e6 / r.requests)
                ctx.say(
                    f"scenario {s.name}: run {rnd + 1}/{runs}: {r.rps:,.0f} req/s "
                    f"p50 {r.p50_ms:.2f} ms p99 {r.p99_ms:.2f} ms errors {r.errors}"
                )
    finally:
        for item in started:
            if isinstance(item, _Live) and item.target.proc is not None:
                ctx.pg.stop(item.target.proc)
    return [_finish(item) if isinstance(item, _Live) else item for item in started]
