"""Run one desktop flow per record with dynamic task mapping, then gather every run's outputs.

Runs against the local Dataverse emulator as it is; see example_desktop_flow_pipeline.py for a real
environment.
"""

from __future__ import annotations

import os

import pendulum

from airflow.sdk import dag, task

from airflow_provider_pad.operators.desktop_flow import RunDesktopFlowOperator

CHECK_INTERVAL_SECONDS = float(os.environ.get("PAD_EXAMPLE_CHECK_INTERVAL", "2"))


@dag(
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={"flow_name": "Desktop flow 1", "connection_name": "emulated-machine-group"},
    tags=["power-automate-desktop", "example"],
)
def example_desktop_flow_mapped():
    @task
    def list_records() -> list[dict]:
        """Stand in for a query that returns the records the robot must process."""
        return [
            {"inputText": "order 1001", "inputInteger": 1},
            {"inputText": "order 1002", "inputInteger": 2},
            {"inputText": "order 1003", "inputInteger": 3},
        ]

    process_record = RunDesktopFlowOperator.partial(
        task_id="process_record",
        flow_name="{{ params.flow_name }}",
        connection_name="{{ params.connection_name }}",
        check_interval=CHECK_INTERVAL_SECONDS,
        deferrable=True,
        # Dataverse limits a desktop-flow connection to 70 run starts per minute; a pool or
        # max_active_tis_per_dagrun keeps a large fan-out under it.
        max_active_tis_per_dagrun=16,
    ).expand(inputs=list_records())

    @task
    def gather(outputs: list[dict]) -> list[dict]:
        """Collect the outputs of every mapped run, in the order of the records."""
        results = list(outputs)
        print(f"Desktop flow outputs of {len(results)} runs: {results}")
        return results

    gather(process_record.output)


example_desktop_flow_mapped()
