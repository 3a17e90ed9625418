"""``make bench``'s decision scenario: nginx with the shipped snippets in front of a
decision-mode Gatehouse, and the ratio line against Gatehouse proxying the same route."""

from __future__ import annotations

import pytest

from bench.__main__ import main as bench_main
from bench.decision import machine_lines
from bench.measure import RunResult
from bench.scenarios import Outcome


def test_the_decision_scenarios_run_behind_nginx_and_print_their_ratios(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = [
        "--scenarios=full_identity,decision_nginx,decision_ceiling",
        "--duration=0.5",
        "--warmup=0.2",
        "--runs=1",
        "--no-idle",
        "--no-stream",
        "--no-policy",
        "--no-jwt",
        "--no-stages",
        "--no-path",
        "--no-write",
    ]
    assert bench_main(args) == 0
    printed = capsys.readouterr().out
    assert "skipped decision" not in printed, printed
    figures = dict(line.split("=", 1) for line in printed.splitlines() if "=" in line)
    assert float(figures["rps decision_nginx"]) > 0
    assert float(figures["ratio decision_nginx/gatehouse_proxy"]) > 0
    assert float(figures["ratio decision_ceiling/gatehouse_proxy"]) > 0
    assert float(figures["decision_cpu_us_per_req"]) > 0


def test_the_ratio_line_compares_with_gatehouse_proxying_the_same_route() -> None:
    def outcome(name: str, rps: float, cpu: float) -> Outcome:
        result = RunResult(rps=rps, p50_ms=1.0, p99_ms=2.0, requests=int(rps), errors=0)
        return Outcome(name, name, result=result, cpu_us_per_request=cpu)

    lines = machine_lines(
        [outcome("full_identity", 10_000, 80.0), outcome("decision_nginx", 25_000, 30.0)]
    )
    assert lines == ["ratio decision_nginx/gatehouse_proxy=2.50", "decision_cpu_us_per_req=30.0"]
