"""CPU per request of the whole proxy path in one process, without sockets.

``python -m bench.path_micro [--scenario full_identity|gatehouse_public|decision|all]
[--requests N] [--profile] [--tracing]``. The real listener
protocol, gateway, upstream client and relay of the full-identity scenario
(JWT RS256, 100 routes, audit to a file, metrics; or the public route; or the same
configuration as a decision listener answering nginx's auth subrequest) run on uvloop; only the
transports are in memory: 32 client connections each send their next request
as soon as the previous answer is written, and the upstream connections answer
every request head with a canned nginx response on the next loop turn. So the
figure is the Python (and event-loop) work per request with no system calls,
the part of ``make bench``'s proxy CPU that code changes move; it is far
steadier than the socket benchmark on a shared machine, which makes it the
tool for A/B-ing a change. ``--profile`` runs it under cProfile instead.
``--tracing [RATIO]`` turns OpenTelemetry on (sample_ratio RATIO, default 1),
exporting to a sink in another process, so the figure includes the SDK's
export thread.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import cProfile
import dataclasses
import gc
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvloop

from bench.decision import decision_config
from bench.gatehouse import IdentityParams, full_identity, public_route
from bench.tokens import AUDIENCE, SUBJECT, jwks_server, new_issuer
from proxy.config.load import load_config
from proxy.config.schema import Config
from proxy.gateway import Gateway
from proxy.http.protocol import HttpServer
from proxy.identity.authenticate import Authenticator
from proxy.observability.audit import AuditWriter
from proxy.observability.config import TracingConfig
from proxy.policy_store import PolicyStore
from proxy.upstream.client import UpstreamClient, parse_origin
from proxy.upstream.client import _Connection as UpstreamConnection
from proxy.upstream.pool import EndpointPool

CONNECTIONS = 32
UPSTREAM = "http://127.0.0.1:9"  # never dialled: its pool is filled with in-memory connections
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Sat, 21 Nov 2026 20:00:00 GMT\r\n"
    b"Content-Type: application/json\r\nContent-Length: 50\r\nConnection: keep-alive\r\n\r\n"
    + b'{"ok":true,"service":"bench","padding":"xxxxxxx"}\n'
)


class _Transport(asyncio.Transport):
    """An in-memory transport: ``on_write`` sees every write."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_write: Any) -> None:
        super().__init__()
        self._loop = loop
        self._on_write = on_write
        self._closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._on_write(bytes(data))

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._closing = True

    def abort(self) -> None:
        self._closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


# What nginx's auth subrequest sends (deploy/decision/nginx) for the same request.
DECISION_REQUEST = (
    b"GET /.gatehouse/auth HTTP/1.1\r\nHost: gatehouse\r\nX-Forwarded-Method: GET\r\n"
    b"X-Forwarded-Uri: /api/items\r\nX-Forwarded-Host: 127.0.0.1:8080\r\n"
    b"X-Forwarded-Proto: http\r\nX-Forwarded-For: 127.0.0.1\r\n"
    b"X-Request-Id: 0123456789abcdef0123456789abcdef\r\n"
)


class Run:
    def __init__(
        self, server: HttpServer, client: UpstreamClient, token: str | None, decision: bool = False
    ):
        self.loop = asyncio.get_running_loop()
        # The request the socket benchmark's load generator sends for the scenario.
        credential = b"Authorization: Bearer " + token.encode() + b"\r\n" if token else b""
        head = (
            DECISION_REQUEST if decision else b"GET /api/items HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
        )
        self.request = head + credential + b"\r\n"
        self.answered = 0
        self.failed = 0
        self.target = 0
        self.done: asyncio.Future[None] | None = None
        origin = parse_origin(UPSTREAM)
        key = (origin.host, origin.port, None, None)
        idle = client._idle.setdefault(key, collections.deque())
        for _ in range(CONNECTIONS):
            conn = UpstreamConnection(self.loop, key)
            conn.connection_made(_Transport(self.loop, self._upstream_write(conn)))
            conn.on_lost = client._lost
            conn.idle_since = time.monotonic() + 1e9
            idle.append(conn)
        client._open[key] = CONNECTIONS
        self.clients = []
        for _ in range(CONNECTIONS):
            proto = server()
            proto.connection_made(_Transport(self.loop, self._client_write(proto)))
            self.clients.append(proto)

    def _upstream_write(self, conn: Any) -> Any:
        call_soon = self.loop.call_soon

        def on_write(data: bytes) -> None:
            call_soon(conn.data_received, RESPONSE)

        return on_write

    def _client_write(self, proto: Any) -> Any:
        call_soon = self.loop.call_soon

        def on_write(data: bytes) -> None:
            if data.startswith(b"HTTP/1.1 200 "):
                self.answered += 1
            else:
                self.failed += 1
            if self.answered + self.failed >= self.target:
                if self.done is not None and not self.done.done():
                    self.done.set_result(None)
                return
            call_soon(proto.data_received, self.request)

        return on_write

    async def go(self, n: int) -> float:
        """CPU µs per request over ``n`` requests."""
        self.answered = self.failed = 0
        self.target = n
        self.done = self.loop.create_future()
        started = time.process_time()
        for proto in self.clients:
            proto.data_received(self.request)
        await self.done
        spent = time.process_time() - started
        await asyncio.sleep(0.05)  # let the last in-flight requests finish
        if self.failed:
            raise SystemExit(f"{self.failed} of {n} requests were not answered 200")
        return spent / n * 1e6


SCENARIOS = ("full_identity", "gatehouse_public", "decision")


# An OTLP/HTTP endpoint in its own process that accepts and drops every export.
_SINK = """
import http.server, sys, threading
class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
print(server.server_address[1], flush=True)
threading.Thread(target=server.serve_forever, daemon=True).start()
sys.stdin.read()  # ends with the benchmark, however it ends
"""


@contextlib.contextmanager
def _otlp_sink() -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _SINK], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        yield f"http://127.0.0.1:{proc.stdout.readline().strip()}"
    finally:
        proc.terminate()
        proc.wait(5)


async def _measure(
    n: int,
    repeats: int,
    profile: bool,
    scenarios: list[str],
    tracing: TracingConfig | None = None,
) -> int:
    published: dict[str, Any] = {}
    async with jwks_server(published) as jwks_url:
        issuer = new_issuer(jwks_url)
        published.update(issuer.jwks())
        token = issuer.token()
        for scenario in scenarios:
            with tempfile.TemporaryDirectory(prefix="gatehouse-path-") as tmp:
                if scenario == "gatehouse_public":
                    setup = public_route(Path(tmp), "path", UPSTREAM)
                else:
                    ident = IdentityParams(issuer.url, AUDIENCE, token, SUBJECT)
                    setup = full_identity(Path(tmp), "path", UPSTREAM, ident)
                    if scenario == "decision":
                        decision_config(setup)
                config = load_config(setup.config)
                if tracing is not None:
                    config = dataclasses.replace(config, tracing=tracing)
                runs = await _scenario(config, token, n, repeats, profile)
            if runs:
                print(f"{scenario}: runs " + " ".join(f"{r:.1f}" for r in runs) + " us/request")
                print(f"path_cpu_us_per_req_{scenario}={statistics.median(runs):.1f}")
    return 0


async def _scenario(config: Config, token: str, n: int, repeats: int, profile: bool) -> list[float]:
    """CPU µs per request of each measured run (none when profiling)."""
    audit = AuditWriter(config.audit.output)
    client = UpstreamClient()
    auth = Authenticator(config.identity)
    tracing = None
    if config.tracing is not None:
        from proxy.observability.tracing import Tracing

        tracing = Tracing(config.tracing)
    try:
        await auth.start()
        gateway = Gateway(
            config=config,
            policies=PolicyStore(config.policy_dir, backends=set(config.backends)),
            audit=audit,
            client=client,
            pools={
                name: EndpointPool(b.urls, b.options, name=name)
                for name, b in config.backends.items()
            },
            authenticator=auth if config.identity.enabled else None,
            local_endpoints=(auth.local_endpoint,) if config.identity.enabled else (),
            tracing=tracing,
        )
        server = HttpServer(gateway.handle, config.listen, audit)
        decision = config.listen.mode == "decision"
        run = Run(server, client, token if config.identity.enabled else None, decision)
        await run.go(max(1000, n // 10))  # warm-up: caches, JWT verified once
        # Start-up objects (modules, keys, policies) out of the collector's sight:
        # in process with its own load loop, the collector runs far more often
        # than in the proxy (measured), and would dominate.
        gc.collect()
        gc.freeze()
        if profile:
            prof = cProfile.Profile()
            prof.enable()
            await run.go(n)
            prof.disable()
            pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(40)
            return []
        return [await run.go(n) for _ in range(repeats)]
    finally:
        gc.unfreeze()
        if tracing is not None:
            await asyncio.to_thread(tracing.shutdown)
        await auth.close()
        audit.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.path_micro", description=__doc__)
    parser.add_argument("--requests", type=int, default=50000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="10,000 requests, 3 repeats")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--scenario", choices=(*SCENARIOS, "all"), default="full_identity")
    parser.add_argument(
        "--tracing",
        type=float,
        nargs="?",
        const=1.0,
        metavar="RATIO",
        help="OpenTelemetry on (sample_ratio RATIO, default 1), exporting to a local sink",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.repeats = 10000, 3
    scenarios = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    uvloop.install()
    if args.tracing is None:
        return asyncio.run(_measure(args.requests, args.repeats, args.profile, scenarios))
    with _otlp_sink() as sink:
        tracing = TracingConfig(sink, sample_ratio=args.tracing)
        return asyncio.run(_measure(args.requests, args.repeats, args.profile, scenarios, tracing))


if __name__ == "__main__":
    sys.exit(main())
