"""A backfill DAG that asks Gatehouse for just-in-time access, waits for an approver,
does its work through the protected route, and gives the access back.

1. ``request_access`` POSTs an access request (route, duration, justification)
   with the DAG's own bearer token; the request id goes to XCom.
2. ``wait_for_grant`` polls the request until it is ``active``; a denied,
   lapsed or revoked request fails the run at once instead of waiting out
   the sensor's timeout.
3. ``backfill`` calls the protected route: Gatehouse admits it under the grant
   (the audit record names the grant id).
4. ``give_back`` revokes the grant as soon as the work is done (or failed):
   access never outlives the job, whatever ``max_duration`` allowed.

Connection ``gatehouse`` (type HTTP): host ``https://gatehouse.example.com``,
extra ``{"Authorization": "Bearer <token>"}`` (the pipeline's own identity,
e.g. from a secrets backend). Policy on the Gatehouse side::

    - name: orders-backfill
      path: /orders/v1/backfill
      backend: orders-api
      allow:
        - name: backfill-on-approval
          all:
            - claim: {path: azp, is: airflow-prod}
            - grant: {approvers: {groups: [sre]}, max_duration: 4h, justification: required}
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from airflow.exceptions import AirflowFailException
from airflow.providers.http.operators.http import HttpOperator
from airflow.providers.http.sensors.http import HttpSensor
from airflow.sdk import DAG, Param

ACCESS = "/.gatehouse/access/api/requests"
FINISHED = ("denied", "expired", "revoked")


def request_id(response: Any) -> str:
    return str(response.json()["id"])


def grant_active(response: Any) -> bool:
    """True once approved and in force; fail the run when it never will be."""
    state = response.json()["state"]
    if state in FINISHED:
        raise AirflowFailException(f"access request {state}: nothing to backfill with")
    return bool(state == "active")


with DAG(
    dag_id="gatehouse_backfill",
    start_date=datetime(2026, 1, 1),
    schedule=None,
    catchup=False,
    params={
        "route": Param("orders-backfill", type="string"),
        "path": Param("/orders/v1/backfill", type="string"),
        "duration": Param("2h", type="string"),
        "justification": Param("backfill requested by the DAG", type="string"),
    },
    tags=["gatehouse", "just-in-time access"],
) as dag:
    asked = HttpOperator(
        task_id="request_access",
        http_conn_id="gatehouse",
        method="POST",
        endpoint=ACCESS,
        headers={"Content-Type": "application/json"},
        data=json.dumps(
            {
                "route": "{{ params.route }}",
                "duration": "{{ params.duration }}",
                "justification": "{{ params.justification }} (run {{ run_id }})",
            }
        ),
        response_filter=request_id,
        log_response=True,
    )
    granted = HttpSensor(
        task_id="wait_for_grant",
        http_conn_id="gatehouse",
        method="GET",
        endpoint=ACCESS + "/{{ ti.xcom_pull(task_ids='request_access') }}",
        response_check=grant_active,
        poke_interval=5,
        timeout=4 * 3600,
        mode="reschedule",
    )
    work = HttpOperator(
        task_id="backfill",
        http_conn_id="gatehouse",
        method="POST",
        endpoint="{{ params.path }}",
        headers={"Content-Type": "application/json"},
        data=json.dumps({"run": "{{ run_id }}"}),
    )
    give_back = HttpOperator(
        task_id="give_back",
        http_conn_id="gatehouse",
        method="POST",
        endpoint=ACCESS + "/{{ ti.xcom_pull(task_ids='request_access') }}/revoke",
        headers={"Content-Type": "application/json"},
        data=json.dumps({"reason": "backfill finished (run {{ run_id }})"}),
        trigger_rule="all_done",
    )
    asked >> granted >> work >> give_back


if __name__ == "__main__":
    dag.test()
