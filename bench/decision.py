"""Decision mode in ``make bench``: nginx forwards, Gatehouse only decides.

Scenario ``decision_nginx``: nginx (the shipped ``deploy/decision/nginx``
snippets, verbatim) in front of the bench upstream, asking a decision-mode
Gatehouse about every request with ``auth_request``. Gatehouse has the
``full_identity`` configuration (JWT RS256, 100 routes, audit file, metrics)
and is pinned, one worker, to the proxy core; nginx shares the other core
with the load generator and the upstream. Its row's CPU column is
Gatehouse's CPU per decision. ``ratio decision_nginx/gatehouse_proxy`` compares
its req/s with Gatehouse proxying the same route (``full_identity``); the
nginx reverse proxy alone is ``nginx_proxy``. Scenario ``decision_ceiling`` is
the same nginx asking an nginx stub that allows everything, pinned where
Gatehouse would be: what this layout can serve at most when the decision costs
next to nothing, since nginx shares its core with the load generator and the
upstream.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from bench import gatehouse, nginx
from bench.procs import free_port, wait_tcp

if TYPE_CHECKING:
    from bench.scenarios import Context, Outcome

Confirm = Callable[[], "str | None"]

NAME = "decision_nginx"
LABEL = "nginx + Gatehouse decision mode (JWT, 100 routes, audit)"
# The same nginx asking a C stub that allows everything at once: the most this
# layout (nginx, load generator and upstream sharing one core) can serve.
CEILING = "decision_ceiling"
CEILING_LABEL = "as decision_nginx with an nginx stub deciding (the layout's ceiling)"
PROXY = "full_identity"  # Gatehouse as the proxy on the same route
SNIPPETS = Path(__file__).resolve().parents[1] / "deploy" / "decision" / "nginx"


def decision_config(setup: gatehouse.Setup) -> None:
    """Turn a full_identity configuration into a decision listener trusting loopback."""
    config = yaml.safe_load(setup.config.read_text())
    config["listen"]["mode"] = "decision"
    config["listen"]["trusted_proxies"] = ["127.0.0.1/32"]
    setup.config.write_text(yaml.safe_dump(config, sort_keys=False))


def front_conf(
    workdir: Path, port: int, gatehouse_port: int, upstream_port: int, name: str = "decision"
) -> Path:
    """nginx with the shipped snippets, plain HTTP, keep-alive to Gatehouse and the upstream."""
    d = workdir / f"nginx-{name}"
    (d / "gatehouse").mkdir(parents=True, exist_ok=True)
    for snippet in SNIPPETS.glob("gatehouse-*.conf"):
        shutil.copyfile(snippet, d / "gatehouse" / snippet.name)
    keepalive = "    keepalive 64;\n    keepalive_requests 100000000;\n"
    conf = (
        nginx.main_context(workdir, name)
        + "http {\n"
        + nginx.http_context(workdir, name)
        + f"  upstream gatehouse {{\n    server 127.0.0.1:{gatehouse_port};\n{keepalive}  }}\n"
        + f"  upstream app {{\n    server 127.0.0.1:{upstream_port};\n{keepalive}  }}\n"
        + f"  server {{\n    listen 127.0.0.1:{port} backlog=4096;\n"
        + "    include gatehouse/gatehouse-server.conf;\n"
        + "    location / {\n      include gatehouse/gatehouse-protect.conf;\n"
        + "      proxy_pass http://app;\n      proxy_http_version 1.1;\n"
        + '      proxy_set_header Connection "";\n    }\n  }\n}\n'
    )
    path = d / f"nginx-{name}.conf"
    path.write_text(conf)
    return path


def start(
    ctx: Context, exe: str, ident: gatehouse.IdentityParams
) -> tuple[str, tuple[tuple[str, str], ...], subprocess.Popen[bytes], Confirm]:
    """Gatehouse (decision, pinned to the proxy core) and nginx in front of it.

    Returns the URL to load, its headers, the Gatehouse process (its CPU is the
    decision's) and the check that the decision path ran; raises
    ``gatehouse.Unavailable`` with the reason otherwise.
    """
    setup = gatehouse.full_identity(ctx.workdir, "decision", ctx.upstream_url, ident)
    decision_config(setup)
    proc = gatehouse.start(ctx.pg, exe, setup, ctx.proxy_cpus)
    port = free_port()
    upstream_port = int(ctx.upstream_url.rsplit(":", 1)[1])
    assert ctx.tools.nginx is not None
    conf = front_conf(ctx.workdir, port, setup.port, upstream_port)
    front = ctx.pg.start("nginx-decision", nginx.argv(ctx.tools.nginx, conf), cpus=ctx.load_cpus)
    if not wait_tcp("127.0.0.1", port, timeout=10, proc=front):
        tail = ctx.pg.log_tail("nginx-decision", 3)
        ctx.pg.stop(front)
        ctx.pg.stop(proc)
        raise gatehouse.Unavailable(
            f"nginx in front of the decision listener did not start: {tail}"
        )

    def confirm() -> str | None:
        if not gatehouse.metrics_show_route(setup, "bench"):
            return "metrics not recorded: no gatehouse_requests_total for 'bench'"
        if not _decided_for(setup):
            return f"no audit record of an allowed decision for {setup.expect_subject!r}"
        return None

    return f"http://127.0.0.1:{port}{setup.path}", setup.headers, proc, confirm


def start_ceiling(ctx: Context) -> tuple[str, subprocess.Popen[bytes]]:
    """nginx in front of an nginx stub (pinned where Gatehouse would be) that allows all."""
    assert ctx.tools.nginx is not None
    stub_port, port = free_port(), free_port()
    stub = (
        nginx.main_context(ctx.workdir, "decision-stub")
        + "http {\n"
        + nginx.http_context(ctx.workdir, "decision-stub")
        + f"  server {{\n    listen 127.0.0.1:{stub_port} backlog=4096;\n"
        + "    location / {\n      add_header X-Gatehouse-Subject bench;\n      return 200 '';\n"
        + "    }\n  }\n}\n"
    )
    stub_conf = ctx.workdir / "nginx-decision-stub.conf"
    stub_conf.write_text(stub)
    proc = ctx.pg.start("nginx-stub", nginx.argv(ctx.tools.nginx, stub_conf), cpus=ctx.proxy_cpus)
    upstream_port = int(ctx.upstream_url.rsplit(":", 1)[1])
    conf = front_conf(ctx.workdir, port, stub_port, upstream_port, name="decision-ceiling")
    front = ctx.pg.start("nginx-ceiling", nginx.argv(ctx.tools.nginx, conf), cpus=ctx.load_cpus)
    started = wait_tcp("127.0.0.1", stub_port, timeout=10, proc=proc)
    if not (started and wait_tcp("127.0.0.1", port, timeout=10, proc=front)):
        ctx.pg.stop(front)
        ctx.pg.stop(proc)
        raise gatehouse.Unavailable("the nginx stub or the nginx in front of it did not start")
    return f"http://127.0.0.1:{port}/api/items", proc


def _decided_for(setup: gatehouse.Setup) -> bool:
    if not gatehouse.audit_shows_subject(setup):
        return False
    with setup.audit.open("rb") as f:
        for line in f:
            record = json.loads(line)
            if record.get("subject") == setup.expect_subject:
                return bool(record.get("mode") == "decision" and record.get("status") == 200)
    return False


def machine_lines(outcomes: list[Outcome]) -> list[str]:
    """``ratio decision_nginx/gatehouse_proxy=X.XX`` (and the ceiling's), and the decision's
    CPU per request."""
    by = {o.name: o for o in outcomes}
    decision, proxy = by.get(NAME), by.get(PROXY)
    out: list[str] = []
    for name in (NAME, CEILING):
        mine = by.get(name)
        if mine and proxy and mine.result and proxy.result and proxy.result.rps:
            out.append(f"ratio {name}/gatehouse_proxy={mine.result.rps / proxy.result.rps:.2f}")
    if decision and decision.cpu_us_per_request is not None:
        out.append(f"decision_cpu_us_per_req={decision.cpu_us_per_request:.1f}")
    return out
