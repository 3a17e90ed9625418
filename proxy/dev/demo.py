"""``gatehouse demo`` (``make run``): dev IdP + sample upstream + proxy, on loopback.

Everything lives in ``.demo/`` (git-ignored): dev certificates, the dev IdP
signing key (so ``gatehouse dev-token`` mints tokens the demo accepts), the
assertion signing key, and the generated config and policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from proxy.config.load import load_config
from proxy.credentials.signing import rotate_key_file
from proxy.dev.certs import dev_certificates
from proxy.dev.idp import DEFAULT_AUDIENCE, DEFAULT_KEY_FILE, DEFAULT_PORT, start_dev_idp
from proxy.errors import StartupError
from proxy.runtime import serve

DEMO_DIR = DEFAULT_KEY_FILE.parent
REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "deploy" / "examples"

# Start-up failures name the demo's flag for the address the configuration got from it.
_FLAGS = {"listen.address": "--port", "admin.address": "--admin-port"}

# The demo serves exactly the reviewed, fixture-tested policy in policies/demo.yaml.
DEMO_POLICY = REPO / "policies" / "demo.yaml"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_config(demo: Path, port: int, admin_port: int, upstream_port: int, idp: str) -> Path:
    certs = dev_certificates(demo / "certs", ("localhost",))
    keys = demo / "assertion-keys.json"
    if not keys.exists():
        rotate_key_file(keys)
    policies = demo / "policies"
    policies.mkdir(exist_ok=True)
    shutil.copyfile(DEMO_POLICY, policies / "demo.yaml")
    config = {
        "listen": {
            "address": f"127.0.0.1:{port}",
            "tls": {"cert_file": str(certs["server_cert"]), "key_file": str(certs["server_key"])},
        },
        "admin": {"address": f"127.0.0.1:{admin_port}"},
        "public_url": f"https://127.0.0.1:{port}",
        "audit": {"output": "stdout"},
        "policies": {"dir": str(policies)},
        "identity": {
            "issuers": [
                {"issuer": idp, "audiences": [DEFAULT_AUDIENCE], "claims": {"groups": "groups"}}
            ]
        },
        "assertions": {"signing_keys_file": str(keys)},
        "backends": {
            "demo": {
                "urls": [f"http://127.0.0.1:{upstream_port}"],
                "credentials": {"type": "assertion"},
            }
        },
        "shutdown": {"drain_timeout": "5s"},
    }
    path = demo / "gatehouse.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _banner(port: int, admin_port: int, idp_port: int, demo: Path) -> str:
    ca = demo / "certs" / "ca.crt"
    base = f"https://127.0.0.1:{port}"
    issuer_flag = "" if idp_port == DEFAULT_PORT else f" --issuer http://127.0.0.1:{idp_port}"
    gh = "gatehouse" if not sys.argv[0].endswith("gatehouse") else sys.argv[0]
    return f"""
Gatehouse demo is up (audit log: JSON lines on standard output; Ctrl-C stops everything).

  proxy   {base}      (dev certificate, CA in {ca})
  admin   http://127.0.0.1:{admin_port}/metrics  /healthz  /readyz
  dev IdP http://127.0.0.1:{idp_port}  (development only)

Try:
  curl --cacert {ca} {base}/public/hello
  curl --cacert {ca} {base}/api/whoami                      # 401: no identity
  TOKEN=$({gh} dev-token --sub alice --groups eng{issuer_flag})
  curl --cacert {ca} -H "Authorization: Bearer $TOKEN" {base}/api/whoami
  curl --cacert {ca} -H "Authorization: Bearer ${{TOKEN}}x" {base}/api/whoami   # 401: tampered
  curl --cacert {ca} {base}/admin                           # 404: no such route
  curl http://127.0.0.1:{admin_port}/metrics | grep gatehouse_
"""


async def _wait_for_port(port: int, process: subprocess.Popen[bytes], limit: float = 30.0) -> None:
    """Announce the demo only once the sample upstream answers (its import takes a moment)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while loop.time() < deadline and process.poll() is None:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()
        return
    raise RuntimeError("the demo's sample upstream did not start")


def run_demo(port: int = 8443, admin_port: int = 9901, idp_port: int = DEFAULT_PORT) -> int:
    # The sample upstream runs as `python -m uvicorn` with this interpreter: a
    # missing demo extra is reported here, before anything starts.
    importlib.import_module("fastapi")
    importlib.import_module("uvicorn")
    demo = DEMO_DIR.resolve()
    demo.mkdir(parents=True, exist_ok=True)
    upstream_port = _free_port()
    idp = f"http://127.0.0.1:{idp_port}"
    config_path = _write_config(demo, port, admin_port, upstream_port, idp)
    env = {
        **os.environ,
        "GATEHOUSE_URL": f"https://127.0.0.1:{port}",
        "GATEHOUSE_AUDIENCE": "demo",
        # The sample app fetches Gatehouse's JWKS over the demo's TLS.
        "SSL_CERT_FILE": str(demo / "certs" / "ca.crt"),
    }
    upstream = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "demo_app:app",
            "--app-dir",
            str(EXAMPLES),
            "--host",
            "127.0.0.1",
            "--port",
            str(upstream_port),
            "--log-level",
            "warning",
        ],
        env=env,
    )

    async def main() -> None:
        await _wait_for_port(upstream_port, upstream)
        try:
            _, idp_runner = await start_dev_idp("127.0.0.1", idp_port, DEFAULT_KEY_FILE)
        except OSError as exc:
            raise StartupError(
                "--idp-port", f"cannot listen on {idp_port}: {exc.strerror}"
            ) from None
        try:
            config = load_config(config_path)
            await serve(
                config,
                started=lambda: print(
                    _banner(port, admin_port, idp_port, demo), file=sys.stderr, flush=True
                ),
            )
        except StartupError as exc:
            # The demo's addresses come from its flags, not from a file.
            flag = _FLAGS.get(exc.key)
            raise StartupError(flag, exc.message) if flag else exc from None
        finally:
            await idp_runner.cleanup()

    try:
        asyncio.run(main())
    finally:
        upstream.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            upstream.wait(5)
    return 0
