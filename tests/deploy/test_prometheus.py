"""deploy/prometheus and deploy/grafana: rules parse and fire, names match what the code exports.

The metric names in proxy/observability/metrics.py are the contract: every
series an alert or a dashboard panel reads must be one the code exports
(with the client library's ``_total``/``_bucket``/``_sum``/``_count``
suffixes), or Prometheus's own ``up``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from proxy.observability import metrics
from tests.deploy.manifests import DEPLOY

ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts.test.yaml"
DASHBOARD = DEPLOY / "grafana" / "gatehouse-dashboard.json"
README = DEPLOY / "README.md"
# Series Prometheus itself records for every target.
PROMETHEUS_OWN = {"up"}

_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gauge": ("",),
    "summary": ("", "_sum", "_count"),
    "info": ("_info",),
}


# Metric modules: the public contract, plus shared state's until the core moves
# those into it (they register in the same default registry either way).
def exported_names() -> set[str]:
    """Every series name the metrics module exposes, suffixes included."""
    names: set[str] = set()
    # Registered on first use (only with the configuration that needs them).
    lazy = [metrics.state_available()]
    for value in [*vars(metrics).values(), *lazy]:
        if not isinstance(value, MetricWrapperBase | metrics.LoopFamily):
            continue
        for family in value.describe():
            names.update(family.name + s for s in _SUFFIXES[family.type])
    return names


_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "without", "by", "on"}
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (functions, labels and keywords removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "{}", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "[]", text)  # ranges and subqueries
    text = _GROUPING.sub(" ", text)
    names = set()
    for m in re.finditer(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", text):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in _KEYWORDS:
            continue
        names.add(word)
    return names


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _dashboard_queries() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", var["definition"])
            assert inner, var["definition"]
            exprs.append(inner.group(1))
    return exprs


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def readme_anchors() -> set[str]:
    return {
        github_anchor(m.group(1))
        for m in re.finditer(r"^#{1,6}\s+(.+)$", README.read_text(), flags=re.MULTILINE)
    }


# -- the cross-check machinery is itself checked --------------------------------


def test_exported_names_carry_the_client_library_suffixes() -> None:
    names = exported_names()
    assert {
        "gatehouse_requests_total",
        "gatehouse_request_duration_seconds_bucket",
        "gatehouse_request_duration_seconds_count",
        "gatehouse_inflight_requests",
        "gatehouse_build_info",
        "gatehouse_credential_fetch_total",
    } <= names
    assert "gatehouse_requests" not in names
    assert "gatehouse_inflight_requests_total" not in names


def test_promql_name_extraction_ignores_functions_labels_and_keywords() -> None:
    expr = (
        'sum by (route, le) (rate(gatehouse_x_bucket{job="a", route=~"$route"}[$__rate_interval]))'
        " / on (route) group_left (le) max without (pod) (other_metric offset 5m) > bool 0"
        ' and absent(up{job="x"} == 1) unless vector(1) or time() - last_ts'
    )
    assert promql_metric_names(expr) == {"gatehouse_x_bucket", "other_metric", "up", "last_ts"}


# -- alerts ------------------------------------------------------------------------


def test_alert_rules_reference_only_exported_metrics() -> None:
    exported = exported_names()
    used: set[str] = set()
    for rule in _rules():
        names = promql_metric_names(rule["expr"])
        assert names, f"{rule['alert']}: no metric found in its expression"
        unknown = names - exported - PROMETHEUS_OWN
        assert not unknown, f"{rule['alert']} uses metrics the code does not export: {unknown}"
        used |= names
    assert len(used & exported) >= 8


def test_every_alert_has_severity_summary_and_a_runbook_section() -> None:
    anchors = readme_anchors()
    rules = _rules()
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], rule["alert"]
        url = annotations["runbook_url"]
        assert url == f"deploy/README.md#{rule['alert'].lower()}", url
        assert url.split("#", 1)[1] in anchors, f"no README section for {rule['alert']}"
    # The failure modes the issue asks alerts for.
    exprs = {rule["alert"]: rule["expr"] for rule in rules}
    needed = {
        'decision="deny"': "high deny rate",
        "gatehouse_upstream_errors_total": "upstream errors",
        'gatehouse_credential_fetch_total{job="gatehouse", result="error"}': "credential fetches",
        'gatehouse_config_reload_total{job="gatehouse", result="error"}': "reload failures",
        'gatehouse_jwks_refresh_total{job="gatehouse", result="error"}': "JWKS refresh",
        'absent(up{job="gatehouse"} == 1)': "no replica up",
        "gatehouse_state_unreachable_total": "shared state unreachable",
    }
    for fragment, what in needed.items():
        assert any(fragment in e for e in exprs.values()), f"no alert for {what}"


def _promtool() -> str:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.skip("promtool not on PATH (Debian package 'prometheus'); structure checked above")
    return exe


def test_promtool_accepts_the_alert_rules() -> None:
    out = subprocess.run(
        [_promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in out.stdout


def test_alerts_fire_on_their_failures_and_stay_quiet_on_healthy_series() -> None:
    """promtool's rule unit tests (deploy/prometheus/alerts.test.yaml)."""
    out = subprocess.run(
        [_promtool(), "test", "rules", str(ALERT_TESTS)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ALERT_TESTS.parent,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    tested = set(re.findall(r"alertname: (\w+)", ALERT_TESTS.read_text()))
    assert tested == {rule["alert"] for rule in _rules()}, "every alert has a unit test"


def test_promtool_rejects_a_rule_with_an_unknown_function(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(ALERTS.read_text().replace("absent(", "absnt(", 1))
    out = subprocess.run(
        [_promtool(), "check", "rules", str(broken)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode != 0


# -- dashboard ---------------------------------------------------------------------


def test_dashboard_references_only_exported_metrics() -> None:
    exported = exported_names()
    used: set[str] = set()
    for expr in _dashboard_queries():
        names = promql_metric_names(expr)
        assert names, f"no metric in {expr}"
        unknown = names - exported - PROMETHEUS_OWN
        assert not unknown, f"dashboard uses metrics the code does not export: {unknown} in {expr}"
        used |= names
    # Every exported family is on the dashboard except the never-set health gauge.
    families = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in used}
    missing = (
        {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in exported}
        - families
        - {"gatehouse_upstream_healthy"}
    )
    assert not missing, f"metrics not on the dashboard: {missing}"


def test_dashboard_is_importable_grafana_json() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] and isinstance(dash["schemaVersion"], int)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    occupied: set[tuple[int, int]] = set()
    for panel in dash["panels"]:
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, panel["title"]
        cells = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & occupied, f"panel {panel['title']!r} overlaps another"
        occupied |= cells
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            for var in re.findall(r"\$(\w+)", target["expr"]):
                assert var in variables or var.startswith("__"), f"undefined ${var}"
