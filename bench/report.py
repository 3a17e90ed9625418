"""The benchmark report: a table, ratios, sections, and machine-readable lines."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench import decision
from bench.memory import Section
from bench.scenarios import NAMES, Outcome

REFERENCES = ("aiohttp_passthrough", "direct")
COMPARED = ("gatehouse_public", "full_identity", "full_identity_assertion", "full_identity_tls")
EXTRA_RATIOS = (
    ("full_identity_tls", "full_identity"),
    ("nginx_proxy", "direct"),
    ("full_identity", "caddy"),
    ("full_identity", "haproxy"),
    ("full_identity", "nginx_proxy"),
)
# The two headline ratios under their short names (the TLS one is full_identity_tls's).
HEADLINES = (
    ("full_identity", "caddy", "full_identity/caddy"),
    ("full_identity_tls", "full_identity", "tls/full_identity"),
)


@dataclass(frozen=True, slots=True)
class RunInfo:
    command: str
    loadgen: str
    upstream: str
    connections: int
    duration: float
    runs: int
    pinned: str
    load_before: float  # 1-minute load average when the run started
    load_after: float


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def ratios(outcomes: list[Outcome]) -> list[tuple[str, str, float]]:
    by = {o.name: o.result for o in outcomes if o.result is not None}
    pairs = [(a, b) for a in COMPARED for b in REFERENCES] + list(EXTRA_RATIOS)
    return [(a, b, by[a].rps / by[b].rps) for a, b in pairs if a in by and b in by and by[b].rps]


def cpu_ratios(outcomes: list[Outcome]) -> list[tuple[str, str, float]]:
    """Requests per proxy CPU-second of ``a`` relative to ``b`` (> 1: ``a`` is cheaper)."""
    by = {o.name: o.cpu_us_per_request for o in outcomes if o.cpu_us_per_request}
    pairs = [(a, "aiohttp_passthrough") for a in COMPARED] + [
        ("full_identity_tls", "full_identity"),
        ("full_identity", "caddy"),
        ("full_identity", "haproxy"),
    ]
    return [(a, b, by[b] / by[a]) for a, b in pairs if a in by and b in by]


def _cell_ratio(outcomes: list[Outcome], name: str, ref: str) -> str:
    for a, b, r in ratios(outcomes):
        if a == name and b == ref:
            return f"{r:.2f}x"
    return ""


def table(outcomes: list[Outcome]) -> list[str]:
    rows = [
        "| # | scenario | req/s | p50 ms | p99 ms | vs aiohttp | vs direct | proxy CPU us/req |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for o in outcomes:
        i = NAMES.index(o.name) + 1 if o.name in NAMES else "-"
        if o.result is None:
            why = (o.skipped or "").replace("|", "/")
            why = why if len(why) <= 120 else why[:117] + "..."
            rows.append(f"| {i} | {o.label} | skipped: {why} | | | | | |")
            continue
        r = o.result
        rows.append(
            f"| {i} | {o.label} | {r.rps:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | "
            f"{_cell_ratio(outcomes, o.name, 'aiohttp_passthrough')} | "
            f"{_cell_ratio(outcomes, o.name, 'direct')} | "
            f"{'' if o.cpu_us_per_request is None else f'{o.cpu_us_per_request:.0f}'} |"
        )
    return rows


def machine_lines(outcomes: list[Outcome], sections: list[Section]) -> list[str]:
    found = {(a, b): r for a, b, r in ratios(outcomes)}
    out = [f"ratio {short}={found[a, b]:.2f}" for a, b, short in HEADLINES if (a, b) in found]
    shown = {short for _, _, short in HEADLINES}
    out += [f"ratio {a}/{b}={r:.2f}" for a, b, r in ratios(outcomes) if f"{a}/{b}" not in shown]
    out += decision.machine_lines(outcomes)
    out += [f"cpu_ratio {a}/{b}={r:.2f}" for a, b, r in cpu_ratios(outcomes)]
    for o in outcomes:
        if o.result is None:
            out.append(f"skipped {o.name}")
            continue
        out.append(f"rps {o.name}={o.result.rps:.0f}")
        out.append(f"p50_ms {o.name}={o.result.p50_ms:.3f}")
        out.append(f"p99_ms {o.name}={o.result.p99_ms:.3f}")
        if o.cpu_us_per_request is not None:
            out.append(f"cpu_us_per_req {o.name}={o.cpu_us_per_request:.1f}")
    for sec in sections:
        out.extend(sec.machine)
    return out


def render(info: RunInfo, outcomes: list[Outcome], sections: list[Section]) -> str:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "## Benchmark",
        "",
        f"`{info.command}` on {now}: {cpu_model()}, {info.pinned}; load generator {info.loadgen}, "
        f"upstream {info.upstream} (~50-byte JSON), HTTP/1.1 keep-alive, "
        f"{info.connections} connections, median of {info.runs} runs of {info.duration:g} s "
        "after a warm-up (runs interleaved across scenarios). 1-minute load average "
        f"{info.load_before:.2f} before, {info.load_after:.2f} after: above ~0.5 other work "
        "shared the cores, so compare ratios and CPU per request rather than absolute req/s.",
        "",
        *table(outcomes),
        "",
    ]
    skipped = [o for o in outcomes if o.result is None]
    if skipped:
        lines += ["Skipped scenarios, with the reason in full:", ""]
        lines += [f"- {o.name}: {o.skipped}" for o in skipped]
        lines.append("")
    for o in outcomes:
        if o.profile:
            lines += [f"### Profile: {o.label} (py-spy, one extra uncounted run)", "", "```"]
            lines += [*o.profile, "```", ""]
    for sec in sections:
        lines += [f"### {sec.title}", ""]
        if sec.preformatted and sec.lines:
            lines += ["```", *sec.lines, "```"]
        else:
            lines += [f"- {line}" for line in sec.lines] or ["- (no output)"]
        lines.append("")
    lines += ["```", *machine_lines(outcomes, sections), "```", ""]
    return "\n".join(lines)
