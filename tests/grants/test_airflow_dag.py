"""The example Airflow DAG (deploy/examples/airflow) run for real with ``dag.test()``
(Airflow in its own virtualenv, built by ``make deps``) against a real gatehouse:
it asks for access, waits while an SRE approves, calls the protected route and
gives the access back."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path

from tests.conftest import GatehouseFactory
from tests.grants.access_env import ACCESS, deployment
from tests.support.gatehouse import REPO

AIRFLOW_PYTHON = REPO / ".venv-airflow" / "bin" / "python"
DAG_FILE = REPO / "deploy" / "examples" / "airflow" / "gatehouse_backfill.py"
RUN = """
import runpy, sys
dag = runpy.run_path(sys.argv[1])["dag"]
run = dag.test(run_conf={
    "route": "prod",
    "path": "/echo/prod/orders",
    "duration": "10m",
    "justification": "backfill orders 2026-11-02",
})
print("RUN-STATE", run.state)
"""


async def test_the_example_dag_asks_waits_for_approval_calls_and_gives_access_back(
    gatehouse: GatehouseFactory, tmp_path: Path, upstream_url: str, certs: dict[str, Path]
) -> None:
    assert AIRFLOW_PYTHON.exists(), "Airflow's virtualenv is missing: make deps builds it"
    async with deployment(
        gatehouse, tmp_path, upstream_url=upstream_url, certs=certs, api_keys={"dana": ["sre"]}
    ) as d:
        home = tmp_path / "airflow"
        home.mkdir()
        port = d.replicas[0].port
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAG_FILE.parent),
            "AIRFLOW_CONN_GATEHOUSE": json.dumps(
                {
                    "conn_type": "http",
                    "host": "localhost",
                    "schema": "https",
                    "port": port,
                    "extra": {"Authorization": f"Bearer {d.service_token()}"},
                }
            ),
            "REQUESTS_CA_BUNDLE": str(certs["ca"]),
        }
        migrate = await asyncio.to_thread(
            subprocess.run,
            [str(AIRFLOW_PYTHON), "-m", "airflow", "db", "migrate"],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert migrate.returncode == 0, migrate.stderr[-3000:]
        dag = await asyncio.create_subprocess_exec(
            str(AIRFLOW_PYTHON), "-c", RUN, str(DAG_FILE),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        try:
            async with d.browser() as http:
                key = d.api_keys["dana"]
                # The SRE on call sees the DAG's request and approves it.
                async with asyncio.timeout(120):
                    while True:
                        status, waiting = await d.call(
                            http, "GET", f"{ACCESS}/api/approvals", token=key
                        )
                        assert status == 200
                        if waiting["requests"]:
                            break
                        await asyncio.sleep(0.2)
                (request,) = waiting["requests"]
                assert request["justification"].startswith("backfill orders 2026-11-02 (run ")
                status, _ = await d.call(
                    http,
                    "POST",
                    f"{ACCESS}/api/requests/{request['id']}/approve",
                    token=key,
                    body={"reason": "CHG-2026-11-02"},
                )
                assert status == 200
            output, _ = await asyncio.wait_for(dag.communicate(), timeout=240)
        finally:
            if dag.returncode is None:
                dag.kill()
                await dag.wait()
        log = output.decode(errors="replace")
        assert dag.returncode == 0, log[-5000:]
        assert "RUN-STATE success" in log, log[-5000:]

        async with d.browser() as http:
            status, seen = await d.call(
                http, "GET", f"{ACCESS}/api/requests/{request['id']}", token=d.api_keys["dana"]
            )
        assert seen["state"] == "revoked"
        assert seen["history"][-1]["reason"].startswith("backfill finished (run ")
        records = d.replicas[0].wait_audit(1)
        work = [r for r in records if r["path"] == "/echo/prod/orders"]
        assert [(r["method"], r["status"], r["grant_id"]) for r in work] == [
            ("POST", 200, request["id"])
        ]
        assert [r["subject"] for r in records if r["reason"] == "grant_revoked"] == ["svc-ci"]


def test_the_example_dag_file_imports_cleanly_under_airflow(tmp_path: Path) -> None:
    checked = subprocess.run(
        [
            str(AIRFLOW_PYTHON),
            "-c",
            "import runpy, sys; runpy.run_path(sys.argv[1])",
            str(DAG_FILE),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"},
    )
    assert checked.returncode == 0, checked.stderr[-3000:]
