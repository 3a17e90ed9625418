"""Process lifecycle: one worker serving, or a supervisor forking N of them.

One worker is one asyncio loop owning its own listening socket (SO_REUSEPORT
when there are several), its own upstream connection pool and its own view of
the policy directory. The supervisor holds no event loop, so forking and
re-forking workers is always safe.

Signals: SIGTERM/SIGINT drain (stop accepting, finish in-flight requests up to
``shutdown.drain_timeout``, flush audit, exit 0); SIGHUP reloads certificates
and policies and reopens the audit file.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from proxy import __version__
from proxy.config.schema import Config
from proxy.credentials.broker import CredentialBroker
from proxy.credentials.cache import CredentialCache
from proxy.errors import StartupError
from proxy.gateway import Gateway
from proxy.http.config import Address
from proxy.http.protocol import HttpServer, RequestView
from proxy.http.server import bind_socket, start_listener
from proxy.http.tls import Listener
from proxy.identity.authenticate import Authenticator
from proxy.identity.mtls import certificate_from_der
from proxy.identity.session import clearing_cookies
from proxy.model import RequestFacts
from proxy.observability import metrics
from proxy.observability.admin import ReadinessBoard, admin_app
from proxy.observability.audit import AuditWriter
from proxy.policy_store import PolicyStore
from proxy.ratelimit import RateLimiter
from proxy.stages.local import LocalEndpoint
from proxy.upstream.client import UpstreamClient
from proxy.upstream.pool import EndpointPool
from proxy.upstream.reachability import Reachability

log = logging.getLogger("gatehouse")


def bind_or_refuse(key: str, address: Address, *, reuse_port: bool, backlog: int) -> socket.socket:
    """``bind_socket``, with a taken or forbidden address as a :class:`StartupError`."""
    try:
        return bind_socket(address, reuse_port=reuse_port, backlog=backlog)
    except OSError as exc:
        raise StartupError(key, f"cannot listen on {address}: {exc.strerror}") from None


def bind_only(key: str, address: Address) -> socket.socket:
    """A socket bound to ``address`` but not listening yet (the server's start listens)."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((address.host, address.port))
    except OSError as exc:
        sock.close()
        raise StartupError(key, f"cannot listen on {address}: {exc.strerror}") from None
    return sock


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def serve(
    config: Config,
    *,
    sock: socket.socket | None = None,
    admin_in_process: bool = True,
    board: ReadinessBoard | None = None,
    started: Callable[[], None] | None = None,
) -> None:
    """Run one worker until SIGTERM/SIGINT, then drain and return."""
    loop = asyncio.get_running_loop()
    # Handlers first: a SIGHUP or SIGTERM during start-up must not kill the
    # process with the default action before the real handlers are in place.
    stop = asyncio.Event()
    reload_requested = False

    def early_hangup() -> None:
        nonlocal reload_requested
        reload_requested = True

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, early_hangup)
    if sock is None:
        # Bind first: a taken port should fail start-up at once, before any
        # component opens connections.
        sock = bind_or_refuse(
            "listen.address", config.listen.address, reuse_port=False, backlog=config.listen.backlog
        )
    admin_sock: socket.socket | None = None
    if admin_in_process and config.admin is not None:
        # Bound now (a taken address fails start-up here), listening only once
        # everything runs: an open admin port means the worker has started.
        admin_sock = bind_only("admin.address", config.admin.address)
    audit = open_audit(config)
    gateway, closers = await build_gateway(config, audit)
    policies, pools, client = gateway.policies, gateway.pools, gateway.client
    # A decision listener never forwards: no pools, no probes, no upstream connections.
    reach = Reachability({name: config.backends[name] for name in pools})
    await reach.probe_once(limit=1.0)
    checks = readiness_checks(gateway, reach)

    # A 431 (say, a Cookie header too large) clears our cookies, or it would repeat.
    browser_cfg = config.identity.browser
    clear_on_431 = tuple(clearing_cookies(browser_cfg.cookie_name)) if browser_cfg else ()
    server = HttpServer(gateway.handle, config.listen, audit, clear_on_431)
    listener = Listener(functools.partial(start_listener, server), sock, config.listen.tls)
    await listener.start()

    admin_runner = await start_admin(admin_sock, checks) if admin_sock is not None else None

    metrics.BUILD_INFO.labels(__version__, config.config_hash).set(1)
    metrics.CONFIG_LAST_RELOAD_SUCCESS.set(time.time())

    on_hangup = hangup_handler(gateway, listener)
    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    if reload_requested:
        on_hangup()

    async def publish_readiness() -> None:
        while True:
            if board is not None:
                board.publish(checks())
            await asyncio.sleep(1.0)

    background = [
        asyncio.ensure_future(policies.watch()),
        asyncio.ensure_future(reach.run()),
        asyncio.ensure_future(publish_readiness()),
    ]
    if started is not None:
        started()
    log_started(config, policies.current.version, len(policies.current.routes))
    try:
        await stop.wait()
    finally:
        log.info("draining: no new connections, waiting up to %.0fs", config.drain_timeout)
        listener.close()
        await server.shutdown(config.drain_timeout)
        with contextlib.suppress(Exception):
            await listener.wait_closed()
        for task in background:
            task.cancel()
        for closer in closers:
            with contextlib.suppress(Exception):
                await closer()
        if admin_runner is not None:
            await admin_runner.cleanup()
        await client.close()
        if board is not None:
            board.forget(os.getpid())
        audit.close()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        log.info("stopped")


def open_audit(config: Config) -> AuditWriter:
    try:
        return AuditWriter(config.audit.output, max_buffer=config.audit.max_buffer)
    except OSError as exc:
        raise StartupError(
            "audit.output", f"cannot open {config.audit.output}: {exc.strerror}"
        ) from None


def readiness_checks(gateway: Gateway, reach: Reachability) -> Callable[[], dict[str, bool]]:
    """What /readyz reports: each check the configuration calls for."""
    backends = gateway.config.backends
    required = [name for name in gateway.pools if backends[name].required_for_readiness]
    pools, audit = gateway.pools, gateway.audit
    authenticator, broker = gateway.authenticator, gateway.credentials

    def checks() -> dict[str, bool]:
        out = {
            "config": True,
            "upstreams": all(reach.state[n] and pools[n].ready() for n in required),
            "audit": audit.writable,
        }
        if authenticator is not None:
            out["identity"] = authenticator.ready()
        if broker is not None:
            out["credentials"] = broker.ready()
        return out

    return checks


async def start_admin(sock: socket.socket, checks: Callable[[], dict[str, bool]]) -> web.AppRunner:
    runner = web.AppRunner(admin_app(checks), access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    return runner


def hangup_handler(gateway: Gateway, listener: Listener) -> Callable[[], None]:
    """SIGHUP: reload certificates and policies, reopen the audit log."""
    reloads: set[asyncio.Future[bool]] = set()

    def on_hangup() -> None:
        log.info("SIGHUP: reloading certificates and policies, reopening audit log")
        gateway.audit.reopen()
        for pool in gateway.pools.values():
            pool.reload_tls()
        # Parsing a large policy set takes seconds: never on the event loop.
        for future in (
            asyncio.ensure_future(listener.reload()),
            asyncio.ensure_future(asyncio.to_thread(gateway.policies.reload)),
        ):
            reloads.add(future)
            future.add_done_callback(reloads.discard)

    return on_hangup


Closer = Callable[[], Awaitable[None]]


async def build_gateway(config: Config, audit: AuditWriter) -> tuple[Gateway, list[Closer]]:
    """Start every component the configuration asks for and build the gateway
    with all of them; also what closes them, in order."""
    decision = config.listen.mode == "decision"
    policies = PolicyStore(config.policy_dir, backends=set(config.backends), websocket=not decision)
    client = UpstreamClient()
    state = None
    local_limiter = RateLimiter()
    if config.state is not None:
        # Imported here: the Redis client is needed only with a state: section.
        from proxy.state.shared import SharedState

        state = SharedState(config.state)
        await state.start()
    # A decision listener never forwards: no pools, no probes, no upstream connections.
    forwarded = {} if decision else config.backends
    pools = {name: EndpointPool(b.urls, b.options, name=name) for name, b in forwarded.items()}
    closers: list[Closer] = []
    tracing: Tracing | None = None
    if config.tracing is not None:
        # Imported here: OpenTelemetry is loaded only when tracing is configured.
        from proxy.observability.tracing import Tracing

        tracing = tracer = Tracing(config.tracing)
        closers.append(lambda: asyncio.to_thread(tracer.shutdown))  # flushes queued spans
    for pool in pools.values():
        await pool.start()
        closers.append(pool.close)
    local_endpoints: list[LocalEndpoint] = []
    authenticator = None
    if config.identity.enabled:
        authenticator = Authenticator(config.identity)
        await authenticator.start()
        browser = authenticator.browser
        if browser is not None:
            if state is not None:
                browser.use_session_store(state.sessions)
            browser.use_listener_limit(config.listen.max_header_size)
            browser.use_claims_in_use(lambda: policies.current.referenced_claims)
        local_endpoints.append(authenticator.local_endpoint)
        closers.append(authenticator.close)
    broker = None
    specs = {name: b.credentials for name, b in config.backends.items() if b.credentials}
    if specs or config.assertions is not None:
        cache = CredentialCache(shared=state.credentials) if state is not None else None
        broker = CredentialBroker(specs, config.assertions, config.public_url, cache=cache)
        await broker.start()
        local_endpoints.append(jwks_endpoint(broker))
        closers.append(broker.close)
    grants = None
    if config.grants is not None:
        from proxy.grants.runtime import start_access

        access = await start_access(
            config.grants,
            policies=lambda: policies.current,
            audit=audit,
            authenticator=authenticator,
            browser=config.identity.browser,
            public_url=config.public_url,
            state=state.client if state is not None else None,
        )
        local_endpoints.append(access.endpoint)
        grants = access.lookup
        closers.append(access.close)
    gateway = Gateway(
        config=config,
        policies=policies,
        audit=audit,
        client=client,
        pools=pools,
        authenticator=authenticator,
        rate_limiter=state.rate_limiter(local_limiter) if state is not None else local_limiter,
        credentials=broker,
        local_endpoints=tuple(local_endpoints),
        certificate_reader=certificate_from_der,
        tracing=tracing,
        grants=grants,
    )
    if state is not None:
        closers.append(state.close)  # last: the authenticator and broker use it until closed
    return gateway, closers


def log_started(config: Config, policy_version: str, routes: int) -> None:
    """The one start-up line: what this worker serves, for whoever reads the logs first."""
    issuers = [i.issuer for i in config.identity.issuers]
    log.info(
        "gatehouse %s serving on %s (%d routes, %d backends, policy version %s)",
        __version__,
        config.listen.address,
        routes,
        len(config.backends),
        policy_version,
        extra={
            "version": __version__,
            "pid": os.getpid(),
            "listen": str(config.listen.address),
            "tls": config.listen.tls is not None,
            "admin": str(config.admin.address) if config.admin else None,
            "routes": routes,
            "backends": sorted(config.backends),
            "issuers": issuers,
            "policy_version": policy_version,
            "config_hash": config.config_hash,
            "state": config.state is not None,
            "tracing": config.tracing.otlp_endpoint if config.tracing else None,
        },
    )


JWKS_PATH = "/.well-known/gatehouse/jwks.json"


def jwks_endpoint(broker: CredentialBroker) -> LocalEndpoint:
    """Serve the public keys upstreams use to verify ``X-Gatehouse-Assertion``."""

    async def serve_jwks(_request: RequestView, facts: RequestFacts) -> web.Response | None:
        if facts.path != JWKS_PATH or facts.method not in ("GET", "HEAD"):
            return None
        return web.Response(
            body=broker.jwks_document(),
            content_type="application/json",
            headers={"Cache-Control": "public, max-age=300"},
        )

    return serve_jwks


def run_single(config: Config) -> int:
    _install_uvloop()
    asyncio.run(serve(config))
    return 0


def _admin_process(config: Config, board: ReadinessBoard, workers: int) -> None:
    async def main() -> None:
        assert config.admin is not None
        runner = web.AppRunner(
            admin_app(lambda: board.collect(workers), board.pids), access_log=None
        )
        await runner.setup()
        await web.TCPSite(runner, config.admin.address.host, config.admin.address.port).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(main())


def run_workers(config: Config, workers: int) -> int:
    """Supervise ``workers`` forked workers plus an admin process; re-fork any that die.

    The caller must have set ``PROMETHEUS_MULTIPROC_DIR`` before metrics were
    imported, so every process writes to shared metric files.
    """
    run_dir = Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp("-gatehouse"))
    board = ReadinessBoard(run_dir / "ready")
    # Bind once here so a taken port fails start-up loudly, before any fork.
    probe = bind_or_refuse(
        "listen.address", config.listen.address, reuse_port=True, backlog=config.listen.backlog
    )
    probe.close()
    if config.admin is not None:
        bind_or_refuse("admin.address", config.admin.address, reuse_port=False, backlog=1).close()

    def spawn(role: str) -> int:
        pid = os.fork()
        if pid != 0:
            return pid
        code = 0
        try:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            _install_uvloop()
            if role == "admin":
                _admin_process(config, board, workers)
            else:
                sock = bind_socket(
                    config.listen.address, reuse_port=True, backlog=config.listen.backlog
                )
                asyncio.run(
                    serve(
                        config,
                        sock=sock,
                        admin_in_process=False,
                        board=board,
                    )
                )
        except BaseException:
            log.exception("%s process failed", role)
            code = 1
        finally:
            sys.stdout.flush()
            os._exit(code)

    roles: dict[int, str] = {}
    for _ in range(workers):
        roles[spawn("worker")] = "worker"
    if config.admin is not None:
        roles[spawn("admin")] = "admin"

    stopping = False

    def forward(sig: int, _frame: object) -> None:
        nonlocal stopping
        if sig in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for pid in list(roles):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)

    exit_code = 0
    while roles:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        role = roles.pop(pid, None)
        if role is None:
            continue
        metrics.mark_process_dead(pid)
        board.forget(pid)
        if stopping:
            continue
        code = os.waitstatus_to_exitcode(status)
        log.error("%s %d exited with %d; starting a new one", role, pid, code)
        time.sleep(0.5)
        roles[spawn(role)] = role
        exit_code = 1 if code not in (0,) else exit_code
    return 0 if stopping else exit_code
