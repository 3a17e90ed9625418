"""nginx configurations for the benchmark: the upstream and the plain reverse-proxy reference."""

from __future__ import annotations

import os
from pathlib import Path

from bench.upstream import BODY


def main_context(workdir: Path, name: str) -> str:
    d = workdir / f"nginx-{name}"
    d.mkdir(parents=True, exist_ok=True)
    # As root nginx would switch workers to "nobody", who cannot use our temp dirs.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return (
        f"daemon off;\nmaster_process on;\nworker_processes 1;\n{user}"
        f"pid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n"
        "events { worker_connections 16384; multi_accept on; }\n"
    )


def http_context(workdir: Path, name: str) -> str:
    d = workdir / f"nginx-{name}"
    temps = "\n".join(
        f"  {kind}_temp_path {d}/{kind}_temp;"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        "  access_log off;\n"
        # Default keepalive_requests (1000) would make clients reconnect mid-run.
        "  keepalive_requests 100000000;\n  keepalive_timeout 300s;\n"
        "  client_max_body_size 0;\n"
        f"{temps}\n"
    )


def upstream_conf(workdir: Path, port: int) -> Path:
    body = BODY.decode().replace("\n", "\\n")
    conf = (
        main_context(workdir, "upstream")
        + "http {\n"
        + http_context(workdir, "upstream")
        + f"  server {{\n    listen 127.0.0.1:{port} backlog=4096;\n"
        + "    location / {\n      default_type application/json;\n"
        + f"      return 200 '{body}';\n    }}\n  }}\n}}\n"
    )
    path = workdir / "nginx-upstream.conf"
    path.write_text(conf)
    return path


def proxy_conf(workdir: Path, port: int, upstream_port: int) -> Path:
    conf = (
        main_context(workdir, "proxy")
        + "http {\n"
        + http_context(workdir, "proxy")
        + f"  upstream up {{\n    server 127.0.0.1:{upstream_port};\n    keepalive 64;\n"
        + "    keepalive_requests 100000000;\n  }\n"
        + f"  server {{\n    listen 127.0.0.1:{port} backlog=4096;\n"
        + "    location / {\n      proxy_pass http://up;\n      proxy_http_version 1.1;\n"
        + '      proxy_set_header Connection "";\n      proxy_buffering on;\n    }\n  }\n}\n'
    )
    path = workdir / "nginx-proxy.conf"
    path.write_text(conf)
    return path


def argv(nginx: str, conf: Path) -> list[str]:
    # -e keeps start-up errors out of /var/log/nginx; -p keeps relative paths in workdir.
    return [
        nginx,
        "-p",
        str(conf.parent),
        "-e",
        str(conf.parent / f"{conf.stem}.err"),
        "-c",
        str(conf),
    ]
