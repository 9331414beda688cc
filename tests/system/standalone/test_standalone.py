"""Run the operator and trigger on a real Airflow against the Dataverse emulator, and kill things mid-run.

The module starts the emulator and Airflow's scheduler (LocalExecutor), DAG processor, triggerer and
API server on SQLite once. Each test then runs one scenario through the REST API. The scenarios run
one at a time, and the emulator's request log is reset before each, so the log contains only the
requests of the current scenario.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.system.standalone.harness import (
    STOP_TIMEOUT_SECONDS,
    AirflowComponents,
    AirflowSettings,
    EmulatorProcess,
    free_port,
    wait_until,
)

DAGS_FOLDER = Path(__file__).resolve().parent / "dags"

# Each run waits 5 s in the emulator's queue and then runs 40 s, long enough to act on it mid-run.
QUEUE_SECONDS = 5
RUN_SECONDS = 40

STARTUP_TIMEOUT_SECONDS = 240
# Time for a triggered task to be scheduled, start on a worker and start its run (or defer).
TASK_START_TIMEOUT_SECONDS = 90
PROCESS_LOOKUP_TIMEOUT_SECONDS = 30
RUN_END_TIMEOUT_SECONDS = QUEUE_SECONDS + RUN_SECONDS + 90
CANCEL_TIMEOUT_SECONDS = 60
TRIGGERER_RESTART_TIMEOUT_SECONDS = 90
# After the first cancel request, wait this long for a second one that must not come.
SECOND_CANCEL_WAIT_SECONDS = 5

# Endpoints through which a client reads a run's status.
STATUS_READ_ENDPOINTS = ("get_session", "list_sessions")

# Values of the flowsession statuscode column that the emulator serves.
RUNNING = 2
WAITING = 3
SUCCEEDED = 4
CANCELLED = 7

# pytest-timeout counts fixture setup in the first test, so the limit covers starting Airflow too.
pytestmark = [pytest.mark.standalone, pytest.mark.timeout(600)]


def load_scenario_dags() -> Any:
    """Import the DAG file, which defines the inputs of each scenario and the task id."""
    path = DAGS_FOLDER / "standalone_scenarios.py"
    specification = importlib.util.spec_from_file_location("standalone_scenarios", path)
    assert specification is not None and specification.loader is not None
    module = importlib.util.module_from_spec(specification)
    specification.loader.exec_module(module)
    return module


SCENARIO_DAGS = load_scenario_dags()
TASK_ID = SCENARIO_DAGS.TASK_ID


def expected_outputs(dag_id: str) -> dict[str, Any]:
    """Return what the emulator's "Desktop flow 1" outputs for a scenario: the text upper-cased, the number doubled."""
    inputs, _ = SCENARIO_DAGS.SCENARIOS[dag_id]
    return {"outputText": inputs["inputText"].upper(), "outputInteger": inputs["inputInteger"] * 2}


@pytest.fixture(scope="module")
def emulator_process(tmp_path_factory: pytest.TempPathFactory):
    emulator = EmulatorProcess(tmp_path_factory.mktemp("emulator"), QUEUE_SECONDS, RUN_SECONDS)
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture(scope="module")
def airflow_components(emulator_process: EmulatorProcess, tmp_path_factory: pytest.TempPathFactory):
    settings = AirflowSettings(
        home=tmp_path_factory.mktemp("airflow-home"),
        dags_folder=DAGS_FOLDER,
        connection_json=emulator_process.connection_json,
        api_port=free_port(),
        worker_log_server_port=free_port(),
        trigger_log_server_port=free_port(),
    )
    components = AirflowComponents(settings)
    try:
        components.start()
        components.wait_until_ready(SCENARIO_DAGS.SCENARIOS, STARTUP_TIMEOUT_SECONDS)
        yield components
    finally:
        components.stop()


def start_scenario(airflow: AirflowComponents, emulator: EmulatorProcess, dag_id: str) -> str:
    """Clear the emulator's request log, then unpause and trigger the DAG, and return the run id."""
    emulator.reset_log()
    airflow.unpause(dag_id)
    return airflow.trigger(dag_id)


def wait_for_deferred_run(
    airflow: AirflowComponents, emulator: EmulatorProcess, dag_id: str, run_id: str
) -> str:
    """Wait until the task is deferred and its trigger has read the run's status, and return the flowsession id.

    The operator reads the status once before it defers, so only a read that arrives after the test
    saw the task deferred comes from the trigger.
    """
    airflow.wait_for_task_state(dag_id, run_id, TASK_ID, {"deferred"}, TASK_START_TIMEOUT_SECONDS)
    deferred_at = time.time()
    flow_session_id = airflow.xcom(dag_id, run_id, TASK_ID, "flow_session_id")
    assert flow_session_id, f"The deferred task of {dag_id} pushed no flow_session_id.\n{airflow.describe(dag_id)}"

    wait_until(
        lambda: emulator.count(STATUS_READ_ENDPOINTS, flow_session_id, since=deferred_at) >= 1,
        TASK_START_TIMEOUT_SECONDS,
        f"the trigger of {dag_id} to read the status of run {flow_session_id}",
        lambda: airflow.describe(dag_id=dag_id),
    )
    return flow_session_id


def test_deferred_run_succeeds(airflow_components: AirflowComponents, emulator_process: EmulatorProcess):
    dag_id = "pad_standalone_deferred_success"
    run_id = start_scenario(airflow_components, emulator_process, dag_id)

    flow_session_id = wait_for_deferred_run(airflow_components, emulator_process, dag_id, run_id)
    airflow_components.wait_for_task_state(dag_id, run_id, TASK_ID, {"success"}, RUN_END_TIMEOUT_SECONDS)

    assert airflow_components.xcom(dag_id, run_id, TASK_ID, "return_value") == expected_outputs(dag_id)
    assert emulator_process.run_status(flow_session_id) == SUCCEEDED
    assert emulator_process.count("run") == 1
    assert emulator_process.count("cancel") == 0


def test_marking_deferred_task_failed_cancels_run(
    airflow_components: AirflowComponents, emulator_process: EmulatorProcess
):
    dag_id = "pad_standalone_mark_failed"
    run_id = start_scenario(airflow_components, emulator_process, dag_id)
    flow_session_id = wait_for_deferred_run(airflow_components, emulator_process, dag_id, run_id)

    airflow_components.set_task_state(dag_id, run_id, TASK_ID, "failed")

    wait_until(
        lambda: emulator_process.count("cancel") >= 1,
        CANCEL_TIMEOUT_SECONDS,
        f"the triggerer to cancel run {flow_session_id} after the task was marked failed",
        lambda: airflow_components.describe(dag_id=dag_id),
    )
    time.sleep(SECOND_CANCEL_WAIT_SECONDS)
    cancels = emulator_process.requests_to("cancel")
    assert len(cancels) == 1, cancels
    assert flow_session_id in cancels[0]["path"]
    assert cancels[0]["status"] == 204
    assert emulator_process.run_status(flow_session_id) == CANCELLED
    assert emulator_process.count("run") == 1
    assert airflow_components.task_instance(dag_id, run_id, TASK_ID)["state"] == "failed"


@pytest.mark.parametrize(
    ("signal_number", "dag_id"),
    [
        (signal.SIGKILL, "pad_standalone_triggerer_sigkill"),
        (signal.SIGTERM, "pad_standalone_triggerer_sigterm"),
    ],
    ids=["sigkill", "sigterm"],
)
def test_triggerer_restart_resumes_run(
    airflow_components: AirflowComponents, emulator_process: EmulatorProcess, signal_number: int, dag_id: str
):
    run_id = start_scenario(airflow_components, emulator_process, dag_id)
    flow_session_id = wait_for_deferred_run(airflow_components, emulator_process, dag_id, run_id)
    assert emulator_process.run_status(flow_session_id) in (WAITING, RUNNING), "the run ended before the kill"

    # SIGKILL goes to the triggerer's process group, as when its container or machine dies, and
    # SIGTERM to the `airflow triggerer` process only, as a process manager stops it.
    old_processes = airflow_components.triggerer_processes()
    assert old_processes, "no triggerer process is running"
    if signal_number == signal.SIGKILL:
        airflow_components.triggerer.signal_group(signal.SIGKILL)
    else:
        os.kill(airflow_components.triggerer.pid, signal.SIGTERM)
    _, still_running = psutil.wait_procs(old_processes, timeout=STOP_TIMEOUT_SECONDS)
    assert not still_running, f"triggerer processes still run after {signal_number!r}: {still_running}"

    restarted_at = time.time()
    airflow_components.start_triggerer()
    airflow_components.wait_for_new_triggerer_job(
        datetime.fromtimestamp(restarted_at, timezone.utc).isoformat(), TRIGGERER_RESTART_TIMEOUT_SECONDS
    )
    airflow_components.wait_for_task_state(dag_id, run_id, TASK_ID, {"success"}, RUN_END_TIMEOUT_SECONDS)

    assert airflow_components.xcom(dag_id, run_id, TASK_ID, "return_value") == expected_outputs(dag_id)
    status_reads = emulator_process.count(STATUS_READ_ENDPOINTS, flow_session_id, since=restarted_at)
    assert status_reads >= 1, "the restarted triggerer never read the run"
    assert emulator_process.count("run") == 1
    assert emulator_process.count("cancel") == 0


def test_worker_crash_retry_reattaches(airflow_components: AirflowComponents, emulator_process: EmulatorProcess):
    dag_id = "pad_standalone_worker_crash"
    run_id = start_scenario(airflow_components, emulator_process, dag_id)

    airflow_components.wait_for_task_state(dag_id, run_id, TASK_ID, {"running"}, TASK_START_TIMEOUT_SECONDS)
    flow_session_id = wait_until(
        lambda: airflow_components.xcom(dag_id, run_id, TASK_ID, "flow_session_id"),
        TASK_START_TIMEOUT_SECONDS,
        f"the task of {dag_id} to start a run",
        lambda: airflow_components.describe(dag_id=dag_id),
    )
    wait_until(
        lambda: emulator_process.run_status(flow_session_id) == RUNNING,
        QUEUE_SECONDS + TASK_START_TIMEOUT_SECONDS,
        f"run {flow_session_id} to be Running in the emulator",
    )
    first_try = airflow_components.task_instance(dag_id, run_id, TASK_ID)
    assert first_try["state"] == "running"
    assert first_try["try_number"] == 1

    task_runners = wait_until(
        lambda: airflow_components.task_runner_processes(first_try["id"]),
        PROCESS_LOOKUP_TIMEOUT_SECONDS,
        f"the task runner process of task instance {first_try['id']}",
        lambda: airflow_components.describe(dag_id=dag_id),
    )
    assert len(task_runners) == 1, task_runners
    task_runners[0].send_signal(signal.SIGKILL)
    _, still_running = psutil.wait_procs(task_runners, timeout=STOP_TIMEOUT_SECONDS)
    assert not still_running, f"the task runner still runs after SIGKILL: {still_running}"

    final = airflow_components.wait_for_task_state(dag_id, run_id, TASK_ID, {"success"}, RUN_END_TIMEOUT_SECONDS)

    assert final["try_number"] == 2, "the task did not retry after its runner was killed"
    assert airflow_components.xcom(dag_id, run_id, TASK_ID, "return_value") == expected_outputs(dag_id)
    assert emulator_process.count("run") == 1, airflow_components.describe(dag_id=dag_id, logs=())
    assert emulator_process.count("cancel") == 0
