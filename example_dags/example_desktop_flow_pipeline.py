"""Enter an invoice in a desktop application with one desktop flow, then confirm it with a second.

Runs against the local Dataverse emulator as it is. For a real environment, set
AIRFLOW_CONN_DATAVERSE_DEFAULT and pass your own flow and connection names as DAG params, for example
``airflow dags test example_desktop_flow_pipeline -c '{"flow_name": "...", "connection_name": "..."}'``.
"""

from __future__ import annotations

import os

import pendulum

from airflow.sdk import dag, task

from airflow_provider_pad.operators.desktop_flow import RunDesktopFlowOperator

# Seconds between status reads. The emulator's runs take a few seconds; for real desktop flows,
# which take minutes, 30 or more keeps the request count low.
CHECK_INTERVAL_SECONDS = float(os.environ.get("PAD_EXAMPLE_CHECK_INTERVAL", "2"))


@dag(
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    render_template_as_native_obj=True,
    params={
        "flow_name": "Desktop flow 1",
        "second_flow_name": "Desktop flow 2",
        "connection_name": "emulated-machine-group",
    },
    tags=["power-automate-desktop", "example"],
)
def example_desktop_flow_pipeline():
    @task
    def prepare_invoice() -> dict:
        """Stand in for an upstream step that selects the record the robot must enter."""
        return {"reference": "invoice 2026-0042", "line_count": 21}

    invoice = prepare_invoice()

    enter_invoice = RunDesktopFlowOperator(
        task_id="enter_invoice",
        flow_name="{{ params.flow_name }}",
        connection_name="{{ params.connection_name }}",
        inputs={
            "inputText": "{{ ti.xcom_pull(task_ids='prepare_invoice')['reference'] }}",
            "inputInteger": "{{ ti.xcom_pull(task_ids='prepare_invoice')['line_count'] }}",
        },
        run_timeout=3600,
        check_interval=CHECK_INTERVAL_SECONDS,
        timeout=4 * 3600,
        deferrable=True,
    )

    confirm_invoice = RunDesktopFlowOperator(
        task_id="confirm_invoice",
        flow_name="{{ params.second_flow_name }}",
        connection_name="{{ params.connection_name }}",
        inputs={
            "inputText": "{{ ti.xcom_pull(task_ids='enter_invoice')['outputText'] }}",
            "inputInteger": "{{ ti.xcom_pull(task_ids='enter_invoice')['outputInteger'] }}",
        },
        check_interval=CHECK_INTERVAL_SECONDS,
        deferrable=True,
    )

    @task
    def report(entered: dict, confirmed: dict) -> dict:
        """Consume both flows' outputs, as a loading or notification step would."""
        summary = {"entered": entered, "confirmed": confirmed}
        print(f"Desktop flow outputs: {summary}")
        return summary

    invoice >> enter_invoice >> confirm_invoice
    report(enter_invoice.output, confirm_invoice.output)


example_desktop_flow_pipeline()
