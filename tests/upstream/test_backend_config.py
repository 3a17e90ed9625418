"""Parsing the endpoint-handling keys of ``backends.<name>``: kinds, TLS, health, outliers,
retries, circuit."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config.reader import ConfigError, Mapping
from proxy.upstream.config import (
    DEFAULT_RETRY_ON,
    BackendOptions,
    CircuitOptions,
    OutlierOptions,
    RetryOptions,
    parse_backend_options,
)
from tests.support.config import backends_of, parse_yaml


def read_backends(root: Mapping) -> dict[str, BackendOptions]:
    """Our keys the way the loader reads them: urls first, then the options, then close()."""
    out: dict[str, BackendOptions] = {}
    for name, m in backends_of(root):
        out[name] = parse_backend_options(m, name, urls=m.str_list("urls"))
        m.close()
    return out


def parse(tmp_path: Path, text: str) -> dict[str, BackendOptions]:
    return parse_yaml(tmp_path, text, read_backends)


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse(tmp_path, text)
    return [f"{p.line}: {p.message}" for p in err.value.problems]


def test_a_plain_backend_gets_safe_defaults(tmp_path: Path) -> None:
    opts = parse(tmp_path, "backends:\n  app:\n    urls: [http://10.0.0.1:8000]\n")["app"]
    assert opts == BackendOptions()
    assert opts.kind == "http"
    assert opts.tls.verify is True
    assert opts.health_check.enabled is False
    od = opts.outlier_detection
    assert (od.consecutive_failures, od.failure_status) == (5, ((500, 599),))
    assert (od.base_ejection_time, od.max_ejection_time, od.max_ejection_percent) == (30, 300, 50)
    assert opts.load_balancing == "round_robin"
    assert opts.retries.attempts == 2
    assert opts.retries.retry_on == DEFAULT_RETRY_ON
    assert "timeout" not in opts.retries.retry_on
    assert (opts.circuit_breaker.enabled, opts.circuit_breaker.open_for) == (True, 10.0)


def test_kinds_set_their_defaults(tmp_path: Path) -> None:
    opts = parse(
        tmp_path,
        """
backends:
  api:
    kind: fastapi
    urls: [http://10.0.0.1:8000]
  web:
    kind: azure_app_service
    urls: [https://contoso.azurewebsites.net]
  fn:
    kind: gcp_cloud_function
    urls: [https://europe-west1-p.cloudfunctions.net/fn]
""",
    )
    api = opts["api"].health_check
    # Probes what every app has: an answer from its router, whatever routes it serves.
    assert (api.enabled, api.path, api.expected_status) == (True, "/", ((200, 499),))
    assert (api.interval, api.timeout) == (10.0, 2.0)
    # Outliers, retries and the breaker do not depend on the kind.
    assert {(o.outlier_detection, o.retries, o.circuit_breaker) for o in opts.values()} == {
        (OutlierOptions(), RetryOptions(), CircuitOptions())
    }
    assert opts["web"].https_only and not opts["web"].health_check.enabled
    assert opts["fn"].https_only and not opts["fn"].health_check.enabled


def test_a_written_key_overrides_the_kind_default(tmp_path: Path) -> None:
    opts = parse(
        tmp_path,
        """
backends:
  fn:
    kind: gcp_cloud_function
    urls: [https://fn.example.run.app]
    health_check: {path: /ping, interval: 30s}
""",
    )["fn"]
    assert opts.health_check.enabled is True
    assert opts.health_check.path == "/ping"
    assert opts.health_check.interval == 30.0


def test_every_key_parses(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    cert = tmp_path / "client.pem"
    key = tmp_path / "client.key"
    for f in (ca, cert, key):
        f.write_text("x", encoding="utf-8")
    opts = parse(
        tmp_path,
        f"""
backends:
  app:
    urls: [https://a.internal:8443, https://b.internal:8443]
    tls:
      ca_file: {ca}
      client_cert_file: {cert}
      client_key_file: {key}
      server_name: app.internal
      min_version: "1.3"
    health_check:
      path: /healthz
      interval: 2s
      timeout: 500ms
      healthy_threshold: 3
      unhealthy_threshold: 1
      expected_status: [200, 3xx, 401-403]
    outlier_detection:
      consecutive_failures: 3
      failure_status: [502-504]
      base_ejection_time: 10s
      max_ejection_time: 1m
      max_ejection_percent: 34
    load_balancing: least_request
    retries:
      attempts: 3
      backoff_base: 10ms
      backoff_max: 1s
      budget_ratio: 0.1
      budget_window: 30s
      budget_min_retries: 2
      retry_on: [connect_error, 503, "504", timeout]
    circuit_breaker:
      enabled: true
      open_for: 20s
      half_open_probes: 2
""",
    )["app"]
    assert opts.tls.ca_file == ca and opts.tls.client_cert_file == cert
    assert opts.tls.client_key_file == key
    assert opts.tls.server_name == "app.internal" and opts.tls.min_version == "1.3"
    hc = opts.health_check
    assert (hc.enabled, hc.path, hc.interval, hc.timeout) == (True, "/healthz", 2.0, 0.5)
    assert (hc.healthy_threshold, hc.unhealthy_threshold) == (3, 1)
    assert hc.expected_status == ((200, 200), (300, 399), (401, 403))
    assert hc.status_ok(302) and hc.status_ok(403) and not hc.status_ok(204)
    od = opts.outlier_detection
    assert (od.consecutive_failures, od.failure_status) == (3, ((502, 504),))
    assert (od.base_ejection_time, od.max_ejection_time, od.max_ejection_percent) == (10, 60, 34)
    assert opts.load_balancing == "least_request"
    r = opts.retries
    assert (r.attempts, r.backoff_base, r.backoff_max) == (3, 0.01, 1.0)
    assert (r.budget_ratio, r.budget_window, r.budget_min_retries) == (0.1, 30.0, 2)
    assert r.retry_on == frozenset({"connect_error", "503", "504", "timeout"})
    cb = opts.circuit_breaker
    assert (cb.enabled, cb.open_for, cb.half_open_probes) == (True, 20.0, 2)


def test_verify_false_is_allowed_but_leaves_a_loud_note(tmp_path: Path) -> None:
    opts = parse(
        tmp_path,
        "backends:\n  app:\n    urls: [https://a:8443]\n    tls: {verify: false}\n",
    )["app"]
    assert opts.tls.verify is False
    assert any("NOT checked" in note for note in opts.notes)


def test_problems_are_reported_with_their_lines(tmp_path: Path) -> None:
    cert = tmp_path / "client.pem"
    cert.write_text("x", encoding="utf-8")
    found = problems(
        tmp_path,
        f"""
backends:
  fn:
    kind: gcp_cloud_function
    urls: [http://fn.example.com]
  app:
    kind: lambda
    urls: [https://a:8443]
    tls:
      client_cert_file: {cert}
      verify: maybe
      sni: app.internal
    health_check:
      interval: 1s
      timeout: 5s
      expected_status: [ok, 700]
    load_balancing: random
    retries:
      attempts: 0
      budget_ratio: 2
      retry_on: [connect_error, 500]
    circuit_breaker:
      open_for: 0s
      consecutive_failures: 5
    outlier_detection:
      failure_status: [abc]
      base_ejection_time: 1m
      max_ejection_time: 10s
      max_ejection_percent: 101
      consecutive_failures: 0
  plain:
    urls: [http://a:80]
    tls: {{server_name: a}}
""",
    )
    assert found == [
        "5: backends.fn: kind gcp_cloud_function is served over https only: 'http://fn.example.com'",
        "7: backends.app.kind: must be one of http, fastapi, azure_app_service, gcp_cloud_function, got 'lambda'",
        "10: backends.app.tls: client_cert_file and client_key_file go together",
        "11: backends.app.tls.verify: expected true or false, got a string",
        "12: backends.app.tls: unknown key 'sni' (known keys: ca_file, client_cert_file, client_key_file, min_version, server_name, verify)",
        "15: backends.app.health_check.timeout: must not exceed interval (1s)",
        "16: backends.app.health_check.expected_status: expected a status like 200, 2xx or 200-299, got 'ok'",
        "16: backends.app.health_check.expected_status: not a status range: '700'",
        "17: backends.app.load_balancing: must be one of round_robin, least_request, got 'random'",
        "19: backends.app.retries.attempts: must be at least 1",
        "20: backends.app.retries.budget_ratio: must be between 0 and 1",
        "21: backends.app.retries.retry_on: must be among connect_error, reset, timeout, 502, 503, 504, got '500'",
        "23: backends.app.circuit_breaker.open_for: must be greater than zero",
        "24: backends.app.circuit_breaker: unknown key 'consecutive_failures' (known keys: enabled, half_open_probes, open_for)",
        "26: backends.app.outlier_detection.failure_status: expected a status like 200, 2xx or 200-299, got 'abc'",
        "28: backends.app.outlier_detection.max_ejection_time: must be at least base_ejection_time",
        "29: backends.app.outlier_detection.max_ejection_percent: at most 100",
        "30: backends.app.outlier_detection.consecutive_failures: must be at least 1",
        "33: backends.plain.tls: applies to https URLs, and every URL is http",
    ]


def test_a_probe_path_the_operator_names_expects_2xx_or_3xx_even_for_fastapi(
    tmp_path: Path,
) -> None:
    opts = parse(
        tmp_path,
        """
backends:
  named:
    kind: fastapi
    urls: [http://10.0.0.1:8000]
    health_check: {path: /healthz}
  tuned:
    kind: fastapi
    urls: [http://10.0.0.1:8000]
    health_check: {interval: 3s}
""",
    )
    assert opts["named"].health_check.expected_status == ((200, 399),)
    tuned = opts["tuned"].health_check
    assert (tuned.path, tuned.expected_status, tuned.interval) == ("/", ((200, 499),), 3.0)


def test_a_short_interval_shortens_the_default_probe_timeout(tmp_path: Path) -> None:
    opts = parse(
        tmp_path,
        "backends:\n  app:\n    urls: [http://10.0.0.1:8000]\n"
        "    health_check: {interval: 500ms}\n",
    )["app"]
    assert (opts.health_check.interval, opts.health_check.timeout) == (0.5, 0.5)


def test_cloud_kinds_accept_plain_http_to_loopback_emulators(tmp_path: Path) -> None:
    opts = parse(
        tmp_path,
        "backends:\n  fn:\n    kind: gcp_cloud_function\n    urls: [http://127.0.0.1:8080]\n",
    )["fn"]
    assert opts.kind == "gcp_cloud_function"
