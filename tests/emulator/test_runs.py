"""Tests of starting, following, cancelling and reading the outputs of desktop flow runs."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from airflow_provider_pad.emulator import (
    DESKTOP_FLOW_1_ID,
    DESKTOP_FLOW_2_ID,
    FAILING_FLOW_ID,
    FLOW_WITHOUT_OUTPUTS_ID,
    EmulatedFlow,
    SessionStatus,
)
from tests.emulator.webapi import QUEUE_SECONDS

SLOW_FLOW_ID = "b0000000-0000-4000-8000-000000000001"
NEVER_STARTS_FLOW_ID = "b0000000-0000-4000-8000-000000000002"
RUNS_FOREVER_FLOW_ID = "b0000000-0000-4000-8000-000000000003"
BROKEN_OUTPUTS_FLOW_ID = "b0000000-0000-4000-8000-000000000004"
CLASSIC_WORKFLOW_ID = "b0000000-0000-4000-8000-000000000005"
# Phases long enough for polling every 20 ms to observe each one, even on a busy machine.
OBSERVABLE_FLOW_ID = "b0000000-0000-4000-8000-000000000006"
UNKNOWN_ID = "99999999-9999-4999-8999-999999999999"


def failing_outputs(inputs):
    raise RuntimeError("outputs function bug")


@pytest.fixture(scope="module", autouse=True)
def extra_flows(shared_emulator):
    shared_emulator.add_flow(EmulatedFlow(name="Slow flow", workflow_id=SLOW_FLOW_ID, queue_seconds=0, run_seconds=1.5))
    shared_emulator.add_flow(EmulatedFlow(name="Queued forever", workflow_id=NEVER_STARTS_FLOW_ID, outcome=3))
    shared_emulator.add_flow(
        EmulatedFlow(name="Runs forever", workflow_id=RUNS_FOREVER_FLOW_ID, queue_seconds=0, run_seconds=0.1, outcome=2)
    )
    shared_emulator.add_flow(
        EmulatedFlow(name="Broken outputs", workflow_id=BROKEN_OUTPUTS_FLOW_ID, outputs=failing_outputs)
    )
    shared_emulator.add_flow(EmulatedFlow(name="Classic workflow", workflow_id=CLASSIC_WORKFLOW_ID, category=0))
    shared_emulator.add_flow(
        EmulatedFlow(name="Observable flow", workflow_id=OBSERVABLE_FLOW_ID, queue_seconds=0.3, run_seconds=0.3)
    )


def test_run_response_shape(client):
    response = client.run(DESKTOP_FLOW_1_ID)
    payload = response.json()
    assert response.status_code == 200
    assert uuid.UUID(payload["flowsessionId"])
    assert payload["licenseCheck"]["code"] == "ValidLicenseCoverage"
    assert payload["@odata.context"].endswith("$metadata#Microsoft.Dynamics.CRM.RunDesktopFlowResponse")


def test_run_new_session_row(client):
    flowsession_id = client.start_run(DESKTOP_FLOW_1_ID, runMode="unattended")
    row = client.session_row(flowsession_id)
    assert row["statuscode"] == SessionStatus.WAITING
    assert row["statecode"] == 0
    assert row["startedon"] is None
    assert row["_regardingobjectid_value"] == DESKTOP_FLOW_1_ID
    assert row["triggertype"] == 3
    assert row["runmode"] == 2
    assert row["createdon"].endswith("Z")
    assert row["flowsessionid"] == flowsession_id


def test_run_stores_inputs(client, emulator):
    flowsession_id = client.start_run(DESKTOP_FLOW_1_ID, inputs=json.dumps({"inputText": "x"}), timeout=60)
    session = emulator.sessions[flowsession_id]
    assert session.inputs == {"inputText": "x"}
    assert session.timeout_seconds == 60
    assert session.connection_name == "emulator"


def test_run_lifecycle_succeeds(client):
    flowsession_id = client.start_run(OBSERVABLE_FLOW_ID)
    row, seen = client.wait_for_end(flowsession_id)
    assert seen == [SessionStatus.WAITING, SessionStatus.RUNNING, SessionStatus.SUCCEEDED]
    assert row["statecode"] == 0
    assert row["startedon"] is not None
    assert row["completedon"] >= row["startedon"] >= row["createdon"]
    assert row["errorcode"] is None


def test_run_select_columns(client):
    flowsession_id = client.start_run(DESKTOP_FLOW_1_ID)
    response = client.get(
        f"flowsessions({flowsession_id})",
        params={"$select": "statuscode,statecode,startedon,completedon,errorcode,errormessage"},
    )
    assert set(response.json()) == {
        "@odata.context",
        "@odata.etag",
        "flowsessionid",
        "statuscode",
        "statecode",
        "startedon",
        "completedon",
        "errorcode",
        "errormessage",
    }
    assert response.json()["@odata.context"].endswith("/$entity")


def test_run_select_unknown_column(client):
    flowsession_id = client.start_run(DESKTOP_FLOW_1_ID)
    response = client.get(f"flowsessions({flowsession_id})", params={"$select": "status"})
    assert response.status_code == 400


@pytest.mark.parametrize(
    ("workflow_id", "inputs", "expected"),
    [
        (DESKTOP_FLOW_1_ID, {"inputText": "abc", "inputInteger": 21}, {"outputText": "ABC", "outputInteger": 42}),
        (DESKTOP_FLOW_1_ID, {}, {"outputText": "", "outputInteger": 0}),
        (DESKTOP_FLOW_2_ID, {"inputText": "abc", "inputInteger": 41}, {"outputText": "cba", "outputInteger": 42}),
        (DESKTOP_FLOW_2_ID, {"inputInteger": "7"}, {"outputText": "", "outputInteger": 8}),
    ],
    ids=["flow1", "flow1-defaults", "flow2", "flow2-number-string"],
)
def test_run_outputs_from_inputs(client, workflow_id, inputs, expected):
    flowsession_id = client.start_run(workflow_id, inputs=json.dumps(inputs))
    client.wait_for_end(flowsession_id)
    response = client.get(f"flowsessions({flowsession_id})/outputs/$value")
    assert response.status_code == 200
    assert response.json() == expected


def test_outputs_unfinished_empty(client):
    flowsession_id = client.start_run(DESKTOP_FLOW_1_ID, inputs=json.dumps({"inputText": "a"}))
    response = client.get(f"flowsessions({flowsession_id})/outputs/$value")
    assert response.status_code == 200
    assert response.content == b""


def test_outputs_flow_without_outputs_empty(client):
    flowsession_id = client.start_run(FLOW_WITHOUT_OUTPUTS_ID)
    row, _ = client.wait_for_end(flowsession_id)
    response = client.get(f"flowsessions({flowsession_id})/outputs/$value")
    assert row["statuscode"] == SessionStatus.SUCCEEDED
    assert response.status_code == 200
    assert response.content == b""


def test_outputs_unknown_session_404(client):
    response = client.get(f"flowsessions({UNKNOWN_ID})/outputs/$value")
    assert response.status_code == 404


def test_run_failing_flow(client):
    flowsession_id = client.start_run(FAILING_FLOW_ID)
    row, seen = client.wait_for_end(flowsession_id)
    assert seen[-1] == SessionStatus.FAILED
    assert row["statecode"] == 0
    assert row["errorcode"] == "NoCandidateMachine"
    assert row["errormessage"]


def test_run_failing_flow_no_outputs(client):
    flowsession_id = client.start_run(FAILING_FLOW_ID)
    client.wait_for_end(flowsession_id)
    assert client.get(f"flowsessions({flowsession_id})/outputs/$value").content == b""


def test_run_timeout_ends_timed_out(client):
    flowsession_id = client.start_run(SLOW_FLOW_ID, timeout=1)
    row, seen = client.wait_for_end(flowsession_id, timeout_seconds=5)
    assert seen == [SessionStatus.RUNNING, SessionStatus.TIMED_OUT]
    assert row["errorcode"] == "DesktopFlowsActionTimeout"


def test_run_forever_times_out(client):
    flowsession_id = client.start_run(RUNS_FOREVER_FLOW_ID, timeout=1)
    _, seen = client.wait_for_end(flowsession_id, timeout_seconds=5)
    assert seen == [SessionStatus.RUNNING, SessionStatus.TIMED_OUT]


def test_run_queued_forever(client):
    flowsession_id = client.start_run(NEVER_STARTS_FLOW_ID)
    time.sleep(QUEUE_SECONDS * 3)
    assert client.session_row(flowsession_id)["statuscode"] == SessionStatus.WAITING


def test_run_broken_outputs_function_fails(client):
    flowsession_id = client.start_run(BROKEN_OUTPUTS_FLOW_ID)
    row, _ = client.wait_for_end(flowsession_id)
    assert row["statuscode"] == SessionStatus.FAILED
    assert "outputs function bug" in row["errormessage"]


def test_run_classic_workflow_400(client):
    response = client.run(CLASSIC_WORKFLOW_ID)
    assert response.status_code == 400
    assert "category 0" in response.json()["error"]["message"]


def test_run_unknown_flow_404(client):
    response = client.run(UNKNOWN_ID)
    assert response.status_code == 404
    assert response.json()["error"]["message"] == f"workflow With Id = {UNKNOWN_ID} Does Not Exist"


def test_session_unknown_404(client):
    response = client.get(f"flowsessions({UNKNOWN_ID})")
    assert response.status_code == 404
    assert response.json()["error"] == {
        "code": "0x80040217",
        "message": f"flowsession With Id = {UNKNOWN_ID} Does Not Exist",
    }


def cancel(client, flowsession_id):
    return client.post(f"flowsessions({flowsession_id})/Microsoft.Dynamics.CRM.CancelDesktopFlowRun")


def test_cancel_queued_run(client):
    flowsession_id = client.start_run(DESKTOP_FLOW_1_ID)
    response = cancel(client, flowsession_id)
    row = client.session_row(flowsession_id)
    assert response.status_code == 204
    assert response.content == b""
    assert row["statuscode"] == SessionStatus.CANCELLED
    assert row["completedon"] is not None
    assert row["startedon"] is None


def test_cancel_running_run(client):
    flowsession_id = client.start_run(SLOW_FLOW_ID)
    assert client.session_row(flowsession_id)["statuscode"] == SessionStatus.RUNNING
    assert cancel(client, flowsession_id).status_code == 204
    time.sleep(0.1)
    assert client.session_row(flowsession_id)["statuscode"] == SessionStatus.CANCELLED


def test_cancel_finished_run_400(client):
    flowsession_id = client.start_run(DESKTOP_FLOW_1_ID)
    client.wait_for_end(flowsession_id)
    response = cancel(client, flowsession_id)
    assert response.status_code == 400
    assert "cannot be cancelled" in response.json()["error"]["message"]


def test_cancel_unknown_404(client):
    assert cancel(client, UNKNOWN_ID).status_code == 404


def test_set_session_status_pins(client, emulator):
    flowsession_id = client.start_run(DESKTOP_FLOW_1_ID)
    emulator.set_session_status(flowsession_id, SessionStatus.FAILED, errorcode="MachineNotFound")
    time.sleep(QUEUE_SECONDS * 3)
    row = client.session_row(flowsession_id)
    assert row["statuscode"] == SessionStatus.FAILED
    assert row["errorcode"] == "MachineNotFound"
    assert row["completedon"] is not None


def test_set_session_status_terminated_statecode(client, emulator):
    flowsession_id = client.start_run(DESKTOP_FLOW_1_ID)
    emulator.set_session_status(flowsession_id, SessionStatus.TERMINATED)
    assert client.session_row(flowsession_id)["statecode"] == 1


def test_set_session_status_unknown(emulator):
    with pytest.raises(KeyError):
        emulator.set_session_status(UNKNOWN_ID, SessionStatus.FAILED)


TWO_MEBIBYTES = 2 * 1024 * 1024


@pytest.mark.parametrize(
    ("body", "message_part"),
    [
        ({"connectionName": "c"}, "'runMode' is required"),
        ({"runMode": "Attended", "connectionName": "c"}, "'runMode' must be"),
        ({"runMode": "attended"}, "'connectionName' is required"),
        ({"runMode": "attended", "connectionName": ""}, "'connectionName' is required"),
        ({"runMode": "attended", "connectionName": "  "}, "'connectionName' must be"),
        ({"runMode": "attended", "connectionName": 5}, "'connectionName' must be"),
        ({"runMode": "attended", "connectionName": "c", "runPriority": "urgent"}, "'runPriority'"),
        ({"runMode": "attended", "connectionName": "c", "connectionType": 3}, "'connectionType'"),
        ({"runMode": "attended", "connectionName": "c", "connectionType": True}, "'connectionType'"),
        ({"runMode": "attended", "connectionName": "c", "timeout": 0}, "'timeout'"),
        ({"runMode": "attended", "connectionName": "c", "timeout": 86401}, "'timeout'"),
        ({"runMode": "attended", "connectionName": "c", "timeout": "60"}, "'timeout'"),
        ({"runMode": "attended", "connectionName": "c", "inputs": {"a": 1}}, "'inputs' must be a string"),
        ({"runMode": "attended", "connectionName": "c", "inputs": ["a"]}, "'inputs' must be a string"),
        ({"runMode": "attended", "connectionName": "c", "inputs": 5}, "'inputs' must be a string"),
        ({"runMode": "attended", "connectionName": "c", "inputs": "[1]"}, "'inputs' must hold a JSON object"),
        ({"runMode": "attended", "connectionName": "c", "inputs": "{not json"}, "'inputs' does not hold valid JSON"),
        ({"runMode": "attended", "connectionName": "c", "callbackUrl": 5}, "'callbackUrl'"),
        ({"runMode": "attended", "connectionName": "c", "priority": "high"}, "'priority' in the request payload"),
        (
            {"runMode": "attended", "connectionName": "c", "inputs": json.dumps({"x": "a" * TWO_MEBIBYTES})},
            "over the limit",
        ),
    ],
    ids=[
        "no-run-mode",
        "run-mode-case",
        "no-connection",
        "empty-connection",
        "blank-connection",
        "connection-number",
        "priority",
        "connection-type",
        "connection-type-bool",
        "timeout-zero",
        "timeout-over-day",
        "timeout-string",
        "inputs-object",
        "inputs-array",
        "inputs-number",
        "inputs-json-array",
        "inputs-not-json",
        "callback-number",
        "unknown-parameter",
        "inputs-over-2mb",
    ],
)
def test_run_body_invalid_400(client, emulator, body, message_part):
    sessions_before = len(emulator.sessions)
    response = client.post(f"workflows({DESKTOP_FLOW_1_ID})/Microsoft.Dynamics.CRM.RunDesktopFlow", json=body)
    assert response.status_code == 400
    assert message_part in response.json()["error"]["message"]
    assert len(emulator.sessions) == sessions_before


@pytest.mark.parametrize(
    "raw_body",
    [b"", b"not json", b"[1, 2]", b"\xff\xfe"],
    ids=["empty", "not-json", "array", "not-utf8"],
)
def test_run_body_unreadable_400(client, raw_body):
    response = client.post(
        f"workflows({DESKTOP_FLOW_1_ID})/Microsoft.Dynamics.CRM.RunDesktopFlow",
        data=raw_body,
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "0x80048d19"


def test_run_all_parameters_accepted(client):
    response = client.run(
        DESKTOP_FLOW_1_ID,
        runMode="unattended",
        runPriority="high",
        connectionName="shared_uiflow_reference",
        connectionType=2,
        timeout=86400,
        inputs=json.dumps({"inputText": "ünïcödé"}),
        callbackUrl="https://example.invalid/callback",
    )
    assert response.status_code == 200


def test_set_session_status_unknown_code(client, emulator):
    flowsession_id = client.start_run(DESKTOP_FLOW_1_ID)
    emulator.set_session_status(flowsession_id, 99)
    row = client.session_row(flowsession_id)
    assert row["statuscode"] == 99
    assert row["statecode"] == 0
    assert row["completedon"] is None
