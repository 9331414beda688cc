"""DesktopFlowRunSensor against the emulator, in poke mode and deferred."""

from __future__ import annotations

import pytest
from airflow.sdk.exceptions import TaskDeferred

from airflow_provider_pad.exceptions import DesktopFlowRunCancelledError, DesktopFlowRunError
from airflow_provider_pad.hooks.dataverse import DataverseHook
from airflow_provider_pad.sensors.desktop_flow import DesktopFlowRunSensor
from tests.unit.helpers import collect_events, make_context, start_run


def make_sensor(flow_session_id: str, **arguments) -> DesktopFlowRunSensor:
    return DesktopFlowRunSensor(task_id="wait", flow_session_id=flow_session_id, poke_interval=0.1, timeout=30, **arguments)


def test_poke_false_while_running(dataverse):
    flow_session_id = start_run(dataverse, "Desktop flow 1")

    assert make_sensor(flow_session_id).poke(make_context()) is False


def test_poke_mode_returns_outputs(dataverse):
    flow_session_id = start_run(dataverse, "Desktop flow 1", {"inputText": "sensor", "inputInteger": 3})

    outputs = make_sensor(flow_session_id, push_outputs=True).execute(make_context())

    assert outputs == {"outputText": "SENSOR", "outputInteger": 6}


def test_poke_failed_run_raises(dataverse):
    flow_session_id = start_run(dataverse, "Failing desktop flow")

    with pytest.raises(DesktopFlowRunError, match="NoCandidateMachine"):
        make_sensor(flow_session_id).execute(make_context())


def test_poke_cancelled_run_raises(dataverse):
    flow_session_id = start_run(dataverse, "Desktop flow 1")
    DataverseHook().cancel_run(flow_session_id)

    with pytest.raises(DesktopFlowRunCancelledError):
        make_sensor(flow_session_id).execute(make_context())


def test_deferred_sensor_never_cancels(dataverse):
    flow_session_id = start_run(dataverse, "Desktop flow 1")
    sensor = make_sensor(flow_session_id, deferrable=True, push_outputs=True)

    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(make_context())
    event = collect_events(deferred.value.trigger)[0]

    assert deferred.value.trigger.cancel_on_kill is False
    assert sensor.execute_complete(make_context(), event)["outputInteger"] == 0
    assert dataverse.count("cancel") == 0
