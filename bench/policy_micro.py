"""Policy micro-benchmark: route match + decision per request, at 10 and 10,000 routes.

``python -m bench.policy_micro [--quick]``. Routes are generated as a
realistic mix (exact hosts, wildcard hosts, host-less routes; prefixes of
several depths, exact paths, a few regexes per host; deny and allow rules
with groups, claims, scopes and source ranges), written as YAML and loaded
through the real loader, so the timed objects are exactly what the proxy
uses. Each sample times one ``match`` + ``decide`` for a request drawn from
a mix of hits, method fall-throughs and misses. Budget: p99 <= 20 us at
10,000 routes.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from proxy.model import Identity, RequestFacts
from proxy.policy.evaluate import PolicySet
from proxy.policy.load import load_policies

BUDGET_P99_US = 20.0


def _policy_yaml(count: int, rng: random.Random) -> str:
    hosts = max(1, count // 40)
    lines = ["routes:"]
    for i in range(count):
        h = i % hosts
        kind = rng.random()
        if i % 10 == 0:
            host = f'"*.zone{h}.example.com"'
        elif i % 10 == 1:
            host = None
        else:
            host = f"svc{h}.example.com"
        lines.append(f"  - name: route-{i}")
        if host is not None:
            lines.append(f"    host: {host}")
        if kind < 0.05:
            lines.append(f"    path_regex: ^/r{i}/v[0-9]+/items/[a-z0-9-]+$")
        elif kind < 0.25:
            lines.append(f"    path_exact: /api/v{i % 3}/res{i}/status")
        else:
            depth = rng.randint(1, 4)
            segments = ["api", f"v{i % 3}", f"res{i}", "sub"][:depth]
            lines.append(f"    path: /{'/'.join(segments)}")
        if i % 3 == 0:
            lines.append("    methods: [GET, HEAD]")
        lines.append("    backend: b")
        lines.append("    deny:")
        lines.append("      - {name: no-interns, groups: [interns]}")
        lines.append("      - {name: blocked-range, source_ip: [203.0.113.0/24, 198.51.100.0/24]}")
        lines.append("    allow:")
        lines.append(f"      - {{name: owners, groups: [team-{i % 50}, admins]}}")
        lines.append(
            f"      - {{name: service, all: [{{scope: [res{i}:read]}}, "
            f"{{claim: {{path: azp, starts_with: svc-}}}}]}}"
        )
        lines.append("      - {name: readers, authenticated: true, method: [GET]}")
    return "\n".join(lines) + "\n"


def _requests(count: int, rng: random.Random, n: int) -> list[tuple[RequestFacts, Identity | None]]:
    hosts = max(1, count // 40)
    identities: list[Identity | None] = [
        None,
        Identity("alice", "https://idp", "jwt", groups=frozenset({"team-3", "eng"})),
        Identity("bob", "https://idp", "jwt", groups=frozenset({"interns"})),
        Identity(
            "svc",
            "https://idp",
            "jwt",
            scopes=frozenset({"res7:read"}),
            claims={"azp": "svc-orders"},
        ),
        Identity("carol", "https://idp", "session", groups=frozenset({"admins"})),
    ]
    out = []
    for _ in range(n):
        i = rng.randrange(count)
        h = i % hosts
        host = rng.choice([f"svc{h}.example.com", f"a.zone{h}.example.com", "unknown.example.org"])
        path = rng.choice(
            [
                f"/api/v{i % 3}/res{i}/sub/item/42",
                f"/api/v{i % 3}/res{i}/status",
                f"/api/v{i % 3}/res{i}",
                f"/r{i}/v2/items/abc-1",
                "/nothing/here",
            ]
        )
        facts = RequestFacts(
            method=rng.choice(["GET", "GET", "GET", "POST"]),
            scheme="https",
            host=host,
            path=path,
            query="",
            client_ip=rng.choice(["10.1.2.3", "203.0.113.7", "2001:db8::1"]),
            headers={},
        )
        out.append((facts, rng.choice(identities)))
    return out


def _pct(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))]


def _measure(
    policy: PolicySet, requests: list[tuple[RequestFacts, Identity | None]]
) -> list[float]:
    match, decide, clock = policy.match, policy.decide, time.perf_counter_ns
    now = time.time()
    samples: list[float] = []
    append = samples.append
    for facts, identity in requests:
        t0 = clock()
        route = match(facts.host, facts.path, facts.method)
        if route is not None:
            decide(route, facts, identity, now)
        append((clock() - t0) / 1000)
    return samples


def run(
    route_counts: tuple[int, ...] = (10, 10_000), samples: int = 200_000
) -> dict[int, dict[str, float]]:
    """p50/p99 (µs) of one match + decide, plus load time and hit ratio, per route count."""
    results: dict[int, dict[str, float]] = {}
    for count in route_counts:
        rng = random.Random(count)
        with tempfile.TemporaryDirectory(prefix="gatehouse-policy-bench-") as tmp:
            path = Path(tmp) / "routes.yaml"
            path.write_text(_policy_yaml(count, rng), encoding="utf-8")
            t0 = time.perf_counter()
            policy = load_policies(path, {"b"})
            load_s = time.perf_counter() - t0
        requests = _requests(count, rng, samples)
        _measure(policy, requests[: min(len(requests), 5000)])  # warm caches
        timed = sorted(_measure(policy, requests))
        hits = sum(1 for f, _ in requests if policy.match(f.host, f.path, f.method) is not None)
        results[count] = {
            "p50_us": statistics.median(timed),
            "p99_us": _pct(timed, 99),
            "p999_us": _pct(timed, 99.9),
            "load_s": load_s,
            "hit_ratio": hits / len(requests),
            "samples": float(len(timed)),
        }
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.policy_micro")
    p.add_argument("--quick", action="store_true", help="fewer samples")
    a = p.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    results = run(samples=20_000 if a.quick else 200_000)
    print(f"{'routes':>8} {'p50 us':>8} {'p99 us':>8} {'p99.9 us':>9} {'load s':>7} {'routed':>7}")
    for count, r in results.items():
        print(
            f"{count:>8,} {r['p50_us']:>8.2f} {r['p99_us']:>8.2f} {r['p999_us']:>9.2f} "
            f"{r['load_s']:>7.2f} {r['hit_ratio']:>7.0%}"
        )
    worst = max(r["p99_us"] for r in results.values())
    verdict = "within" if worst <= BUDGET_P99_US else "OVER"
    print(f"budget: p99 <= {BUDGET_P99_US:.0f} us per decision: {verdict} ({worst:.2f} us)")
    for count, r in results.items():
        print(f"policy_routes{count}_p50_us={r['p50_us']:.2f}")
        print(f"policy_routes{count}_p99_us={r['p99_us']:.2f}")
        print(f"policy_routes{count}_load_s={r['load_s']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
