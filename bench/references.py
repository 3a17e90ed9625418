"""Caddy and HAProxy as plain reverse proxies: the Go and C references beside nginx.

Each is configured like ``bench/nginx.py``'s proxy: one listener on loopback,
one upstream reached over pooled HTTP/1.1 keep-alive connections, no access
log, no TLS, nothing else. Pinned by the harness to the proxy's core, Caddy's
Go runtime sizes itself to that one CPU (GOMAXPROCS follows the affinity) and
HAProxy runs one thread.
"""

from __future__ import annotations

from pathlib import Path


def caddy_conf(workdir: Path, port: int, upstream_port: int) -> Path:
    conf = (
        "{\n"
        "  admin off\n"
        "  auto_https off\n"
        "  servers {\n    protocols h1\n  }\n"
        "}\n"
        f"http://127.0.0.1:{port} {{\n"
        f"  reverse_proxy 127.0.0.1:{upstream_port} {{\n"
        "    transport http {\n"
        "      keepalive 300s\n"
        "      keepalive_idle_conns 64\n"
        # Without it Go keeps 2 idle connections per host: with 32 clients
        # nearly every request would open a new upstream connection.
        "      keepalive_idle_conns_per_host 64\n"
        "    }\n"
        "  }\n"
        "}\n"
    )
    path = workdir / "Caddyfile"
    path.write_text(conf)
    return path


def caddy_argv(caddy: str, conf: Path) -> list[str]:
    return [caddy, "run", "--config", str(conf), "--adapter", "caddyfile"]


def haproxy_conf(workdir: Path, port: int, upstream_port: int) -> Path:
    conf = (
        "global\n"
        "  nbthread 1\n"
        "  maxconn 4096\n"
        "defaults\n"
        "  mode http\n"
        "  timeout connect 5s\n"
        "  timeout client 300s\n"
        "  timeout server 300s\n"
        "  timeout http-keep-alive 300s\n"
        "  http-reuse always\n"
        "frontend bench\n"
        f"  bind 127.0.0.1:{port}\n"
        "  default_backend up\n"
        "backend up\n"
        f"  server up 127.0.0.1:{upstream_port}\n"
    )
    path = workdir / "haproxy.cfg"
    path.write_text(conf)
    return path


def haproxy_argv(haproxy: str, conf: Path) -> list[str]:
    # -db: stay in the foreground (the harness owns the process).
    return [haproxy, "-db", "-f", str(conf)]
