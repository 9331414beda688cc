"""DAGs for the system test that runs a real Airflow scheduler, triggerer and API server.

Each DAG runs "Desktop flow 1" of the Dataverse emulator once, with inputs of its own, so that the
test can tell the scenarios apart. The test triggers them through the REST API one at a time.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum

from airflow.sdk import DAG

from airflow_provider_pad.operators.desktop_flow import RunDesktopFlowOperator

TASK_ID = "run_desktop_flow"
CHECK_INTERVAL_SECONDS = 2

# DAG id -> (inputs, operator arguments). The emulator's "Desktop flow 1" returns the text
# upper-cased and the number doubled.
SCENARIOS = {
    "pad_standalone_deferred_success": (
        {"inputText": "deferred success", "inputInteger": 11},
        {"deferrable": True},
    ),
    "pad_standalone_mark_failed": (
        {"inputText": "marked failed by a user", "inputInteger": 12},
        {"deferrable": True},
    ),
    "pad_standalone_triggerer_sigkill": (
        {"inputText": "triggerer killed with sigkill", "inputInteger": 13},
        {"deferrable": True},
    ),
    "pad_standalone_triggerer_sigterm": (
        {"inputText": "triggerer stopped with sigterm", "inputInteger": 14},
        {"deferrable": True},
    ),
    "pad_standalone_worker_crash": (
        {"inputText": "worker crash then retry", "inputInteger": 15},
        {"deferrable": False, "retries": 1, "retry_delay": timedelta(seconds=2)},
    ),
}

for dag_id, (inputs, operator_arguments) in SCENARIOS.items():
    with DAG(
        dag_id=dag_id,
        schedule=None,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        tags=["airflow-provider-pad", "system-test"],
    ) as scenario_dag:
        RunDesktopFlowOperator(
            task_id=TASK_ID,
            flow_name="Desktop flow 1",
            connection_name="machine-group",
            check_interval=CHECK_INTERVAL_SECONDS,
            inputs=inputs,
            **operator_arguments,
        )
    globals()[dag_id] = scenario_dag
