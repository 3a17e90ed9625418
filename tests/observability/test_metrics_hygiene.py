"""What /metrics exports beyond the request path: no state gauge that looks like an
outage without Redis, and process metrics for every worker of ``--workers N``."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import psutil
from prometheus_client.parser import text_string_to_metric_families

from proxy.identity.session import new_cookie_key
from tests.conftest import GatehouseFactory
from tests.state.redis_server import running_redis
from tests.support.gatehouse import Gatehouse, public_route


def scrape(gh: Gatehouse) -> dict[str, list[tuple[dict[str, str], float]]]:
    with urllib.request.urlopen(gh.admin_url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def test_state_available_is_exported_only_when_state_is_configured(
    gatehouse: GatehouseFactory, upstream_url: str, tmp_path: Path
) -> None:
    routes = [public_route("r", "/", "up")]
    plain = gatehouse(backends={"up": {"urls": [upstream_url]}}, routes=routes)
    samples = scrape(plain)
    assert "gatehouse_requests_total" in samples or "gatehouse_build_info" in samples
    assert "gatehouse_state_available" not in samples

    key = tmp_path / "state-key"
    key.write_text(new_cookie_key() + "\n")
    with running_redis(tmp_path / "redis") as redis:
        shared = gatehouse(
            backends={"up": {"urls": [upstream_url]}},
            routes=routes,
            extra={"state": {"redis_url": redis.url, "encryption_key_file": str(key)}},
        )
        assert scrape(shared)["gatehouse_state_available"] == [({}, 1.0)]


def test_every_worker_exports_its_process_metrics_labelled_by_pid(
    gatehouse: GatehouseFactory, upstream_url: str
) -> None:
    gh = gatehouse(
        backends={"up": {"urls": [upstream_url]}}, routes=[public_route("r", "/", "up")], workers=2
    )
    supervisor = psutil.Process(gh.process.pid)
    deadline = time.monotonic() + 20
    while True:
        samples = scrape(gh)
        by_pid = {
            labels["pid"]: value for labels, value in samples.get("process_cpu_seconds_total", [])
        }
        if len(by_pid) == 2:
            break
        assert time.monotonic() < deadline, by_pid
        time.sleep(0.2)
    children = {str(p.pid) for p in supervisor.children()}
    assert set(by_pid) <= children, "the workers, forked by the supervisor"
    memory = {labels["pid"]: value for labels, value in samples["process_resident_memory_bytes"]}
    assert set(memory) == set(by_pid)
    assert all(value > 10 * 2**20 for value in memory.values())
    for name in ("process_open_fds", "process_start_time_seconds", "process_max_fds"):
        assert {labels["pid"] for labels, _ in samples[name]} == set(by_pid)

    # A worker that dies is replaced; the export follows the live ones.
    victim = int(sorted(by_pid)[0])
    psutil.Process(victim).kill()
    while True:
        pids = {labels["pid"] for labels, _ in scrape(gh).get("process_cpu_seconds_total", [])}
        if str(victim) not in pids and len(pids) == 2:
            break
        assert time.monotonic() < deadline + 20, pids
        time.sleep(0.2)
