"""``gatehouse access`` against a running gatehouse: a pipeline asks with its bearer
token, an SRE decides with an API key, both read human output or --json."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import GatehouseFactory
from tests.grants.access_env import Deployment, deployment
from tests.support.gatehouse import REPO


async def _access(
    d: Deployment, certs: dict[str, Path], token: str, *args: str
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "proxy", "access", *args, "--cacert", str(certs["ca"])]
    env = {**os.environ, "GATEHOUSE_URL": d.base, "GATEHOUSE_TOKEN": token}
    return await asyncio.to_thread(
        subprocess.run, command, cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )


async def test_a_pipeline_requests_an_sre_decides_and_everyone_reads_the_outcome(
    gatehouse: GatehouseFactory, tmp_path: Path, upstream_url: str, certs: dict[str, Path]
) -> None:
    async with deployment(
        gatehouse,
        tmp_path,
        upstream_url=upstream_url,
        certs=certs,
        api_keys={"dana": ["sre"]},
    ) as d:
        pipeline, dana = d.service_token(), d.api_keys["dana"]

        asked = await _access(
            d,
            certs,
            pipeline,
            "request",
            "prod",
            "--duration",
            "30m",
            "-j",
            "rerun DAG orders_daily",
            "--json",
        )
        assert asked.returncode == 0, asked.stderr
        grant = json.loads(asked.stdout)
        assert (grant["state"], grant["duration"]) == ("pending", 1800.0)

        waiting = await _access(d, certs, dana, "list", "--to-decide")
        assert waiting.returncode == 0, waiting.stderr
        (line,) = waiting.stdout.splitlines()
        assert line.startswith(grant["id"])
        assert "pending" in line and "prod/prod-writers-on-approval" in line and "30m" in line
        assert "“rerun DAG orders_daily”" in line

        own = await _access(d, certs, pipeline, "approve", grant["id"], "-r", "mine")
        assert own.returncode == 1
        assert "refused: 403 self_approval" in own.stderr

        approved = await _access(d, certs, dana, "approve", grant["id"], "--reason", "CHG-88")
        assert approved.returncode == 0, approved.stderr
        assert approved.stdout.startswith("approved:\n" + grant["id"])
        assert "active" in approved.stdout and "left" in approved.stdout

        mine = await _access(d, certs, pipeline, "list", "--json")
        assert [g["state"] for g in json.loads(mine.stdout)["requests"]] == ["active"]

        shown = await _access(d, certs, pipeline, "show", grant["id"])
        trail = shown.stdout.splitlines()[1:]
        assert [row.split()[3] for row in trail] == ["request", "approve", "start"]
        assert "dana" in trail[1] and "“CHG-88”" in trail[1]

        revoked = await _access(d, certs, pipeline, "revoke", grant["id"], "-r", "done early")
        assert revoked.returncode == 0, revoked.stderr
        assert "revoked" in revoked.stdout

        again = await _access(d, certs, dana, "deny", grant["id"], "-r", "too late", "--json")
        assert again.returncode == 1
        assert json.loads(again.stdout)["error"] == "grant_revoked"
        assert pipeline not in again.stdout + again.stderr and dana not in again.stderr


async def test_without_a_credential_or_url_the_cli_says_what_is_missing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEHOUSE_")}
    missing = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "proxy", "access", "list", "--url", "https://127.0.0.1:1"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2
    assert "no credential" in missing.stderr
