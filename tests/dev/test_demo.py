"""`make run`'s demo: dev IdP + sample upstream + proxy, exercised as a newcomer would."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from tests.support.cli import gatehouse_command
from tests.support.net import free_port, wait_for_port


def fetch(url: str, ca: Path, token: str | None = None) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    ctx = ssl.create_default_context(cafile=str(ca))
    try:
        with urllib.request.urlopen(request, context=ctx, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_demo_serves_public_and_identity_routes_and_audits_to_stdout(tmp_path: Path) -> None:
    port, admin, idp = free_port(), free_port(), free_port()
    demo = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "proxy",
            "demo",
            "--port",
            str(port),
            "--admin-port",
            str(admin),
            "--idp-port",
            str(idp),
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_port(port, timeout=60)
        wait_for_port(admin, timeout=10)
        ca = tmp_path / ".demo" / "certs" / "ca.crt"
        base = f"https://127.0.0.1:{port}"

        status, body = fetch(base + "/public/hello", ca)
        assert status == 200 and body["message"] == "hello from the sample upstream"

        status, body = fetch(base + "/api/whoami", ca)
        assert status == 401 and body["error"] == "unauthenticated"

        token = subprocess.run(
            [
                sys.executable,
                "-m",
                "proxy",
                "dev-token",
                "--sub",
                "alice",
                "--groups",
                "eng",
                "--issuer",
                f"http://127.0.0.1:{idp}",
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        status, body = fetch(base + "/api/whoami", ca, token)
        assert status == 200
        assert body["subject"] == "alice" and body["groups"] == ["eng"]
        assert body["issuer"] == base  # learned from the verified Gatehouse assertion
        assert isinstance(body["request_id"], str) and len(body["request_id"]) == 32

        header, payload, signature = token.split(".")
        tampered = f"{header}.{payload}.{signature[:-4]}AAAA"
        status, body = fetch(base + "/api/whoami", ca, tampered)
        assert status == 401

        status, body = fetch(base + "/admin", ca)
        assert status == 404 and body["error"] == "route_not_found"
    finally:
        demo.send_signal(signal.SIGINT)
        out, err = demo.communicate(timeout=30)
    assert demo.returncode == 0, err.decode()
    assert b"curl --cacert" in err
    records = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    whoami = [r for r in records if r["path"] == "/api/whoami"]
    assert [r["status"] for r in whoami] == [401, 200, 401]
    assert whoami[1]["subject"] == "alice" and whoami[1]["auth"] == "jwt"


def test_a_taken_demo_port_names_its_flag_and_exits_2(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        for flag, ports in (
            ("--port", (taken, free_port(), free_port())),
            ("--admin-port", (free_port(), taken, free_port())),
            ("--idp-port", (free_port(), free_port(), taken)),
        ):
            port, admin, idp = ports
            result = gatehouse_command(
                "demo",
                "--port",
                str(port),
                "--admin-port",
                str(admin),
                "--idp-port",
                str(idp),
                cwd=tmp_path,
                timeout=120,
            )
            assert result.returncode == 2, (flag, result.stderr)
            assert result.stderr.rstrip().endswith("Address already in use"), result.stderr
            assert f"{flag}: cannot listen on " in result.stderr and str(taken) in result.stderr
            assert "Traceback" not in result.stderr
