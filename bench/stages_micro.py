"""CPU per request of each pure/own stage the gateway calls, outside any HTTP I/O.

``python -m bench.stages_micro [--quick] [--profile]``. The objects are the
real ones, built from a configuration written the way the full-identity
scenario writes it (RS256 issuer with its JWKS served by a local aiohttp
server, 100 routes, audit to a file, the ``assertion`` credential). Each stage
is timed per call (median of several repeats); the audit writer is measured
in process CPU time so its writer thread counts too. ``--profile`` runs the
whole per-request sequence under cProfile and prints the top functions.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bench.gatehouse import IdentityParams, full_identity
from bench.tokens import AUDIENCE, SUBJECT, jwks_server, new_issuer
from proxy.config.load import load_config
from proxy.credentials.broker import CredentialBroker
from proxy.http.canonical import canonicalise_target
from proxy.http.forwarding import client_address, forwarding_headers, request_id, trace_context
from proxy.http.headers import (
    COOKIE_PREFIXES,
    RequestHeaderPolicy,
    filter_request_headers,
    filter_response_headers,
    identity_headers,
)
from proxy.identity.authenticate import Authenticator
from proxy.model import RequestFacts
from proxy.observability import metrics
from proxy.observability.audit import AuditRecord, AuditWriter
from proxy.policy.model import Route
from proxy.policy_store import PolicyStore
from proxy.stages.forward import header_policy_for
from proxy.upstream.pool import EndpointPool

RAW_PATH = "/api/items?page=2"
RESPONSE_HEADERS = [
    (b"Server", b"nginx"),
    (b"Date", b"Sat, 21 Nov 2026 19:00:00 GMT"),
    (b"Content-Type", b"application/json"),
    (b"Content-Length", b"50"),
    (b"Connection", b"keep-alive"),
]


def _raw_headers(token: str) -> list[tuple[bytes, bytes]]:
    return [
        (b"Host", b"127.0.0.1:8443"),
        (b"User-Agent", b"bench-loadgen/1.0"),
        (b"Accept", b"*/*"),
        (b"Authorization", f"Bearer {token}".encode()),
        (b"Connection", b"keep-alive"),
    ]


def _first_values(headers: list[tuple[str, str]]) -> dict[str, str]:
    # The gateway's own helper, copied: the view policy and identity read.
    out: dict[str, str] = {}
    for name, value in headers:
        out.setdefault(name.lower(), value)
    return out


def _per_call(fn: Callable[[], object], n: int, repeats: int) -> float:
    """Median µs per call over ``repeats`` runs of ``n`` calls."""
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(runs)


async def _per_call_async(fn: Callable[[], Awaitable[object]], n: int, repeats: int) -> float:
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            await fn()
        runs.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(runs)


def _signing_key(path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)  # gatehouse refuses a signing key other users can read
    return path


def _record(rid: str) -> AuditRecord:
    record = AuditRecord(ts_epoch=time.time(), request_id=rid)
    record.trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    record.client_ip = "127.0.0.1"
    record.method = "GET"
    record.host = "127.0.0.1:8443"
    record.path = "/api/items"
    record.route = "bench"
    record.backend = "up"
    record.subject = SUBJECT
    record.issuer = "http://127.0.0.1"
    record.auth = "jwt"
    record.decision = "allow"
    record.reason = "allowed:engineers"
    record.status = 200
    record.upstream_status = 200
    record.duration_ms = 0.412345
    record.bytes_out = 50
    record.policy_version = "abc"
    return record


class Stages:
    """The real components, and one closure per stage."""

    def __init__(self, workdir: Path, jwks_url: str, published: dict[str, Any]) -> None:
        issuer = new_issuer(jwks_url)
        published.update(issuer.jwks())
        self.token = issuer.token()
        ident = IdentityParams(issuer.url, AUDIENCE, self.token, SUBJECT)
        key = _signing_key(workdir / "assertion.pem")
        setup = full_identity(workdir, "stages", "http://127.0.0.1:9", ident, assertion_key=key)
        self.config = load_config(setup.config)
        self.policies = PolicyStore(self.config.policy_dir, backends=set(self.config.backends))
        self.auth = Authenticator(self.config.identity)
        self.audit = AuditWriter(self.config.audit.output)
        self.pools = {
            name: EndpointPool(b.urls, b.options, name=name)
            for name, b in self.config.backends.items()
        }
        specs = {n: b.credentials for n, b in self.config.backends.items() if b.credentials}
        self.broker = CredentialBroker(specs, self.config.assertions, self.config.public_url)
        self.raw = _raw_headers(self.token)
        self.headers = {k.decode(): v.decode() for k, v in self.raw}
        self.decoded = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in self.raw]
        self.facts = RequestFacts(
            method="GET",
            scheme="http",
            host="127.0.0.1",
            path="/api/items",
            query="page=2",
            client_ip="127.0.0.1",
            headers=_first_values(self.decoded),
            request_id="r",
        )

    async def start(self) -> None:
        await self.auth.start()
        await self.broker.start()
        identity = (await self.auth.authenticate_full(self.facts)).identity
        assert identity is not None and identity.subject == SUBJECT, identity
        self.identity = identity
        route = self.policies.current.match("127.0.0.1", "/api/items", "GET")
        assert route is not None and route.name == "bench"
        self.route: Route = route

    async def close(self) -> None:
        await self.auth.close()
        await self.broker.close()
        self.audit.close()

    # -- stages ----------------------------------------------------------------
    def canonicalise(self) -> object:
        return canonicalise_target(RAW_PATH, self.config.listen.path)

    def decode_headers(self) -> object:
        raw = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in self.raw]
        return _first_values(raw)

    def ids(self) -> object:
        trusted = self.config.listen.trusted_proxies
        rid = request_id(self.headers.get("X-Request-Id"), False)
        trace = trace_context(self.headers.get("traceparent"), self.headers.get("tracestate"))
        return rid, trace, client_address("127.0.0.1", None, trusted)

    async def authenticate(self) -> object:
        return await self.auth.authenticate_full(self.facts)

    def policy(self) -> object:
        policy = self.policies.current
        route = policy.match("127.0.0.1", "/api/items", "GET")
        assert route is not None
        return policy.decide(route, self.facts, self.identity, time.time())

    def request_headers(self) -> object:
        # The gateway builds the per-route policy once (lru_cache); so does this.
        return self._request_headers(header_policy_for(self.route, frozenset(), COOKIE_PREFIXES))

    def _request_headers(self, policy: RequestHeaderPolicy) -> object:
        out = filter_request_headers(self.decoded, policy)
        out += forwarding_headers(
            peer_ip="127.0.0.1",
            peer_trusted=False,
            chain=["127.0.0.1"],
            client_headers=self.facts.headers,
            scheme="http",
            host="127.0.0.1:8443",
        )
        identity = self.identity
        out += identity_headers(identity.subject, identity.email, identity.groups)
        return out

    def response_headers(self) -> object:
        return filter_response_headers(RESPONSE_HEADERS)

    def metrics(self) -> object:
        metrics.INFLIGHT.inc()
        metrics.child(metrics.DECISIONS, "bench", "allow", "allowed:engineers").inc()
        metrics.child(metrics.UPSTREAM_DURATION, "up").observe(0.0003)
        metrics.INFLIGHT.dec()
        metrics.child(metrics.REQUESTS, "bench", "2xx").inc()
        metrics.child(metrics.REQUEST_DURATION, "bench").observe(0.0004)
        return None

    def upstream_pick(self) -> object:
        pool = self.pools["up"]
        pool.budget.record_request()
        permit = pool.circuit.admit()
        endpoint = pool.pick(())
        pool.balancer.acquire(endpoint)
        pool.board.record_traffic(endpoint, ok=True)
        pool.circuit.record(permit, _SUCCESS)  # type: ignore[arg-type]
        pool.balancer.release(endpoint)
        return endpoint

    async def credentials(self) -> object:
        return await self.broker.headers("up", self.route, self.identity)

    async def audit_cpu(self, n: int) -> float:
        """µs of process CPU per record: the loop's share plus the writer thread's."""

        async def loop_only(write: bool) -> float:
            t0 = time.process_time()
            for i in range(n):
                if write:
                    self.audit.write(_record(f"r{i}"))
                else:
                    _record(f"r{i}")
                if i % 16 == 0:
                    await asyncio.sleep(0)  # let the hand-off timer run, as serving would
            if write:
                await asyncio.to_thread(self.audit.flush)
            return (time.process_time() - t0) / n * 1e6

        base = statistics.median([await loop_only(False) for _ in range(3)])
        full = statistics.median([await loop_only(True) for _ in range(3)])
        # The record itself is built by the gateway; count only what writing adds,
        # and report the record's cost apart.
        self.record_us = base
        return full - base

    async def one_request(self) -> None:
        """The whole sequence once, for profiling."""
        self.canonicalise()
        self.decode_headers()
        self.ids()
        await self.authenticate()
        self.policy()
        await self.credentials()
        self.request_headers()
        self.upstream_pick()
        self.response_headers()
        self.metrics()
        self.audit.write(_record("r"))


from proxy.upstream.circuit import Outcome as _Outcome  # noqa: E402

_SUCCESS = _Outcome.SUCCESS


async def run(quick: bool, profile: bool) -> int:
    published: dict[str, Any] = {}
    async with jwks_server(published) as jwks_url:
        return await _measure(quick, profile, jwks_url, published)


async def _measure(quick: bool, profile: bool, jwks_url: str, published: dict[str, Any]) -> int:
    n, repeats = (2000, 3) if quick else (20000, 5)
    with tempfile.TemporaryDirectory(prefix="gatehouse-stages-") as tmp:
        stages = Stages(Path(tmp), jwks_url, published)
        try:
            await stages.start()
            if profile:
                prof = cProfile.Profile()
                prof.enable()
                for _ in range(n):
                    await stages.one_request()
                prof.disable()
                await asyncio.to_thread(stages.audit.flush)
                pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(35)
                return 0
            rows: list[tuple[str, float]] = [
                ("canonicalise_target", _per_call(stages.canonicalise, n, repeats)),
                ("decode_headers", _per_call(stages.decode_headers, n, repeats)),
                ("request_id+trace+client_addr", _per_call(stages.ids, n, repeats)),
                ("authenticate_full_hot", await _per_call_async(stages.authenticate, n, repeats)),
                ("policy_match_decide", _per_call(stages.policy, n, repeats)),
                ("request_headers", _per_call(stages.request_headers, n, repeats)),
                ("response_headers", _per_call(stages.response_headers, n, repeats)),
                ("metrics", _per_call(stages.metrics, n, repeats)),
                ("upstream_pick", _per_call(stages.upstream_pick, n, repeats)),
                ("audit_write_cpu", await stages.audit_cpu(n)),
            ]
            identity_total = sum(v for _, v in rows)
            rows.append(("credentials_assertion", await _per_call_async(stages.credentials, n, 3)))
        finally:
            await stages.close()
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value:8.2f} us/call")
    print(f"{'(audit record build, gateway)':<{width}}  {stages.record_us:8.2f} us/call")
    print(f"{'sum full identity (no assertion)':<{width}}  {identity_total:8.2f} us")
    for name, value in rows:
        print(f"stage_{name}_us={value:.2f}")
    print(f"stages_full_identity_us={identity_total:.2f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.stages_micro")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--profile", action="store_true")
    a = p.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    return asyncio.run(run(a.quick, a.profile))


if __name__ == "__main__":
    raise SystemExit(main())
