"""The decision-mode stack the conformance suite runs: real processes, real sockets.

* the real OpenID provider (oidc-provider on node) for API tokens and browser login;
* the Google metadata-server emulator minting short-lived ID tokens, which
  Gatehouse hands to the data plane as ``X-Serverless-Authorization``;
* a ``gatehouse run`` with ``listen.mode: decision`` (JWT, browser login,
  the assertion, 100 routes' worth of policy is the bench's business);
* the FastAPI upstream under uvicorn (``tests/support/upstream_app.py``);
* the data planes, started from the configurations shipped in
  ``deploy/decision/`` (nginx, Caddy, HAProxy), each with only its
  addresses, ports and certificate paths substituted, every substitution
  checked to apply exactly once so the shipped files cannot drift from what
  runs here.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proxy.credentials.signing import rotate_key_file
from proxy.identity.session import new_cookie_key
from tests.peers.cloud.google import GooglePeer
from tests.peers.cloud.server import PeerServer
from tests.peers.oidc_provider import RESOURCE, WEB_CLIENT, OidcProvider
from tests.support.gatehouse import Gatehouse, start_gatehouse
from tests.support.net import free_port, wait_for_port

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "decision"
FUNCTION_AUDIENCE = "https://fn.example.run.app"
PUBLIC_URL = "https://gatehouse.example"  # the assertion's iss
# Short enough that tokens expire several times during the suite: the cache
# uses a token until 10 s before its expiry, so this one serves 4 s at a time.
ID_TOKEN_LIFETIME = 14

ROUTES: list[dict[str, Any]] = [
    {
        "name": "public",
        "path": "/echo/public",
        "backend": "fn",
        "allow": [{"name": "anyone", "public": True}],
    },
    {
        "name": "deploy",
        "path": "/echo/deploy",
        "backend": "fn",
        "allow": [{"name": "deployers", "groups": ["deployers"]}],
    },
    {
        "name": "admin",
        "path": "/echo/admin",
        "backend": "fn",
        "allow": [{"name": "admins", "groups": ["admins"]}],
    },
    {
        "name": "app",
        "path": "/echo/app",
        "backend": "fn",
        "allow": [{"name": "engineers", "groups": ["eng"]}],
    },
    {
        "name": "limited",
        "path": "/echo/limited",
        "backend": "fn",
        "rate_limit": {"requests": 1, "per": "1h", "burst": 1},
        "allow": [{"name": "anyone", "public": True}],
    },
    {
        "name": "broken",
        "path": "/echo/broken",
        "backend": "dead",
        "allow": [{"name": "anyone", "public": True}],
    },
]


class PeerThread:
    """A cloud emulator served by its own event loop in a thread (module-long fixtures)."""

    def __init__(self, peer: PeerServer) -> None:
        self.peer = peer
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> PeerServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.peer.start(), self.loop).result(20)
        return self.peer

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.peer.stop(), self.loop).result(20)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@dataclass
class Stack:
    workdir: Path
    provider: OidcProvider
    google: GooglePeer
    gatehouse: Gatehouse
    upstream_port: int
    certs: dict[str, Path]
    ports: dict[str, int]  # data plane name -> its HTTPS port

    def client_ssl(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.certs["ca"]))

    def records(self, request_id: str) -> list[dict[str, Any]]:
        """The audit records Gatehouse wrote for one request id (waits for the first)."""
        deadline = time.monotonic() + 10
        while True:
            found = [r for r in self.gatehouse.audit_records() if r["request_id"] == request_id]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.02)


def gatehouse_config(
    workdir: Path, provider: OidcProvider, google: GooglePeer
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``backends``, ``listen`` and the rest of a decision-mode Gatehouse's configuration."""
    keys = workdir / "assertion-keys.json"
    rotate_key_file(keys)
    cookie_keys = workdir / "cookie-keys"
    cookie_keys.write_text(new_cookie_key() + "\n")
    secret = workdir / "client-secret"
    secret.write_text(WEB_CLIENT["client_secret"])
    backends = {
        "fn": {
            "credentials": [
                {
                    "type": "gcp",
                    "audience": FUNCTION_AUDIENCE,
                    "metadata_host": google.host,
                    "send_as": "serverless",
                },
                {"type": "assertion"},
            ]
        },
        # A metadata server nobody answers on: its routes get 503.
        "dead": {
            "credentials": {
                "type": "gcp",
                "audience": FUNCTION_AUDIENCE,
                "metadata_host": f"127.0.0.1:{free_port()}",
            }
        },
    }
    listen = {"mode": "decision", "trusted_proxies": ["127.0.0.1/32"]}
    extra = {
        "public_url": PUBLIC_URL,
        "assertions": {"signing_keys_file": str(keys)},
        "identity": {
            "issuers": [
                {"issuer": provider.issuer, "audiences": [RESOURCE], "claims": {"groups": "groups"}}
            ],
            "browser": {
                "issuer": provider.issuer,
                "client_id": WEB_CLIENT["client_id"],
                "client_secret_file": str(secret),
                "cookie_keys_file": str(cookie_keys),
                "scopes": ["openid", "email", "profile", "groups"],
            },
        },
    }
    return backends, listen, extra


@contextmanager
def decision_stack(workdir: Path, upstream_port: int, certs: dict[str, Path]) -> Iterator[Stack]:
    ports = {name: free_port() for name in ("nginx", "caddy", "haproxy")}
    provider = OidcProvider(
        keys=[_rsa_key()],
        redirect_uris=[f"https://localhost:{p}/.gatehouse/callback" for p in ports.values()],
        accounts={"alice": {"email": "alice@example.test", "groups": ["eng"]}},
    )
    provider.start()
    try:
        with PeerThread(GooglePeer(lifetime=ID_TOKEN_LIFETIME)) as google:
            assert isinstance(google, GooglePeer)
            backends, listen, extra = gatehouse_config(workdir, provider, google)
            (workdir / "gh").mkdir()
            gh = start_gatehouse(
                workdir / "gh", backends=backends, routes=ROUTES, listen=listen, extra=extra
            )
            try:
                yield Stack(workdir, provider, google, gh, upstream_port, certs, ports)
            finally:
                gh.stop()
    finally:
        provider.close()


def _rsa_key() -> dict[str, Any]:
    from tests.peers.oidc_provider import rsa_jwk

    return rsa_jwk("rsa-1")


# -- the shipped configurations, made runnable ---------------------------------------
def substituted(text: str, replacements: Mapping[str, str | tuple[str, int]], name: str) -> str:
    """``text`` with each example value replaced; each must occur as often as stated
    (once unless a count is given), so a changed shipped file fails here."""
    for old, spec in replacements.items():
        new, expected = spec if isinstance(spec, tuple) else (spec, 1)
        count = text.count(old)
        assert count == expected, f"{name}: {old!r} occurs {count} times, expected {expected}"
        text = text.replace(old, new)
    return text


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")
    assert found is not None, f"{name} is not installed (make installs it: SYSTEM_PACKAGES)"
    return found


@dataclass
class DataPlane:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def _started(plane: DataPlane) -> DataPlane:
    try:
        wait_for_port(plane.port, timeout=20)
    except TimeoutError:
        plane.stop()
        raise RuntimeError(
            f"{plane.name} did not start:\n{plane.log.read_text(errors='replace')}"
        ) from None
    return plane


def start_nginx(stack: Stack) -> DataPlane:
    """nginx with deploy/decision/nginx: the snippets verbatim, the example site substituted."""
    d = stack.workdir / "nginx"
    (d / "gatehouse").mkdir(parents=True)
    for snippet in ("gatehouse-server.conf", "gatehouse-protect.conf", "gatehouse-pages.conf"):
        shutil.copyfile(DEPLOY / "nginx" / snippet, d / "gatehouse" / snippet)
    port = stack.ports["nginx"]
    site = substituted(
        (DEPLOY / "nginx" / "site.conf").read_text(),
        {
            "server gatehouse.internal:9000;": f"server 127.0.0.1:{stack.gatehouse.port};",
            "server app.internal:8000;": f"server 127.0.0.1:{stack.upstream_port};",
            "listen 443 ssl;": f"listen 127.0.0.1:{port} ssl;",
            "server_name app.example.com;": "server_name localhost;",
            "/etc/nginx/tls/app.example.com.crt": str(stack.certs["server_cert"]),
            "/etc/nginx/tls/app.example.com.key": str(stack.certs["server_key"]),
        },
        "site.conf",
    )
    (d / "site.conf").write_text(site)
    # As root nginx would switch workers to "nobody", who cannot read our temp dirs.
    user = "user root;\n" if os.geteuid() == 0 else ""
    temps = "".join(
        f"    {kind}_temp_path {d}/{kind}_temp;\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (d / "nginx.conf").write_text(
        f"daemon off;\nmaster_process on;\nworker_processes 1;\n{user}"
        f"pid {d}/nginx.pid;\nerror_log {d}/error.log info;\n"
        "events { worker_connections 1024; }\n"
        "http {\n"
        f"    access_log {d}/access.log;\n{temps}"
        "    include site.conf;\n"
        "}\n"
    )
    log = d / "stderr.log"
    process = subprocess.Popen(
        [_tool("nginx"), "-p", str(d), "-e", str(d / "error.log"), "-c", str(d / "nginx.conf")],
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    return _started(DataPlane("nginx", port, process, log))


def caddy_env(workdir: Path) -> dict[str, str]:
    """Caddy keeps its state under HOME/XDG dirs: a test's own, never the machine's."""
    return {
        **os.environ,
        "HOME": str(workdir),
        "XDG_DATA_HOME": str(workdir / "data"),
        "XDG_CONFIG_HOME": str(workdir / "config"),
    }


def start_caddy(stack: Stack) -> DataPlane:
    """Caddy with deploy/decision/caddy/Caddyfile, its example values substituted."""
    d = stack.workdir / "caddy"
    d.mkdir(parents=True)
    port = stack.ports["caddy"]
    caddyfile = substituted(
        (DEPLOY / "caddy" / "Caddyfile").read_text(),
        {
            "app.example.com {": f"https://localhost:{port} {{\n\ttls {stack.certs['server_cert']} "
            f"{stack.certs['server_key']}",
            "reverse_proxy app.internal:8000": f"reverse_proxy 127.0.0.1:{stack.upstream_port}",
            "\tadmin localhost:2019": "\tadmin off\n\tauto_https disable_redirects\n\tskip_install_trust",
            "gatehouse.internal:9000": (f"127.0.0.1:{stack.gatehouse.port}", 2),
        },
        "Caddyfile",
    )
    (d / "Caddyfile").write_text(caddyfile)
    log = d / "stderr.log"
    process = subprocess.Popen(
        [_tool("caddy"), "run", "--config", str(d / "Caddyfile"), "--adapter", "caddyfile"],
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
        env=caddy_env(d),
        cwd=d,
    )
    return _started(DataPlane("caddy", port, process, log))


def start_haproxy(stack: Stack) -> DataPlane:
    """HAProxy with deploy/decision/haproxy: gatehouse.lua verbatim, haproxy.cfg substituted."""
    d = stack.workdir / "haproxy"
    d.mkdir(parents=True)
    shutil.copyfile(DEPLOY / "haproxy" / "gatehouse.lua", d / "gatehouse.lua")
    pem = d / "site.pem"  # HAProxy wants the certificate and its key in one file
    pem.write_text(stack.certs["server_cert"].read_text() + stack.certs["server_key"].read_text())
    port = stack.ports["haproxy"]
    gatehouse = f"127.0.0.1:{stack.gatehouse.port}"
    config = substituted(
        (DEPLOY / "haproxy" / "haproxy.cfg").read_text(),
        {
            "lua-load /etc/haproxy/gatehouse.lua": f"lua-load {d / 'gatehouse.lua'}",
            "bind :443 ssl crt /etc/haproxy/tls/app.example.com.pem": (
                f"bind 127.0.0.1:{port} ssl crt {pem}"
            ),
            "10.0.0.5:9000": (gatehouse, 2),
            "server app app.internal:8000": f"server app 127.0.0.1:{stack.upstream_port}",
        },
        "haproxy.cfg",
    )
    (d / "haproxy.cfg").write_text(config)
    log = d / "stderr.log"
    process = subprocess.Popen(
        [_tool("haproxy"), "-db", "-f", str(d / "haproxy.cfg")],
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
        cwd=d,
    )
    return _started(DataPlane("haproxy", port, process, log))


# -- a client that sends exactly the bytes it is given ------------------------------------
@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


def raw_request(
    port: int,
    target: str,
    *,
    headers: list[tuple[str, str]] | None = None,
    method: str = "GET",
    context: ssl.SSLContext,
    host: str | None = None,
) -> RawResponse:
    """One HTTPS request with ``target`` sent as is (clients normalise dot segments)."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host or f'localhost:{port}'}"]
    lines += [f"{k}: {v}" for k, v in headers or []]
    lines += ["Connection: close", "", ""]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        with context.wrap_socket(sock, server_hostname="localhost") as tls:
            tls.sendall("\r\n".join(lines).encode("latin-1"))
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = [(k.strip(), v.strip()) for k, _, v in (h.partition(":") for h in header_lines)]
    if any(k.lower() == "transfer-encoding" and "chunked" in v.lower() for k, v in parsed):
        body = _dechunk(body)
    return RawResponse(int(status_line.split()[1]), parsed, body)


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return out
