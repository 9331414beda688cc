"""RunDesktopFlowOperator against the emulator: synchronous and deferrable paths, errors and kills."""

from __future__ import annotations

import threading
import time

import pytest
from airflow.sdk.exceptions import TaskDeferred

from airflow_provider_pad.emulator import EmulatedFlow
from airflow_provider_pad.exceptions import (
    DesktopFlowConfigurationError,
    DesktopFlowInputsError,
    DesktopFlowOutputsTooLargeError,
    DesktopFlowRunCancelledError,
    DesktopFlowRunError,
    DesktopFlowRunTimeoutError,
)
from airflow_provider_pad.hooks.dataverse_api import RetryPolicy
from airflow_provider_pad.operators.desktop_flow import RunDesktopFlowOperator
from airflow_provider_pad.triggers.desktop_flow import DesktopFlowRunTrigger
from tests.unit.helpers import MemoryTaskStateStore, collect_events, flow_id_named, make_context

BASE_ARGUMENTS = {"task_id": "run_flow", "connection_name": "machine-group", "check_interval": 0.1}


def make_operator(**arguments) -> RunDesktopFlowOperator:
    merged = {**BASE_ARGUMENTS, **arguments}
    if "flow_id" not in merged and "flow_name" not in merged:
        merged["flow_name"] = "Desktop flow 1"
    return RunDesktopFlowOperator(**merged)


def add_slow_flow(emulator, **overrides) -> EmulatedFlow:
    flow = EmulatedFlow(name="Slow flow", inputs_schema={}, outputs_schema={}, queue_seconds=0.1, run_seconds=60, **overrides)
    emulator.add_flow(flow)
    return flow


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        ({"flow_id": "x", "flow_name": "y"}, "exactly one of flow_id and flow_name"),
        ({"flow_id": None, "flow_name": None, "connection_name": "c"}, "exactly one of flow_id and flow_name"),
        ({"connection_reference": "ref"}, "exactly one of connection_name"),
        ({"connection_name": None}, "exactly one of connection_name"),
        ({"run_mode": "Unattended"}, "run_mode must be one of"),
        ({"run_priority": "urgent"}, "run_priority must be one of"),
        ({"run_timeout": 0}, "run_timeout must be a whole number"),
        ({"run_timeout": 86401}, "run_timeout must be a whole number"),
        ({"run_timeout": "60"}, "run_timeout must be a whole number"),
        ({"check_interval": 0}, "check_interval must be a positive number"),
        ({"timeout": -1}, "timeout must be a positive number"),
    ],
    ids=[
        "both-flow-arguments", "no-flow-argument", "both-connection-arguments", "no-connection-argument",
        "run-mode-case", "run-priority", "run-timeout-zero", "run-timeout-too-long", "run-timeout-string",
        "check-interval-zero", "negative-timeout",
    ],
)
def test_invalid_arguments_rejected_at_construction(arguments, fragment):
    merged = {"task_id": "t", "flow_name": "f", "connection_name": "c", **arguments}
    merged = {key: value for key, value in merged.items() if value is not None}

    with pytest.raises(DesktopFlowConfigurationError, match=fragment):
        RunDesktopFlowOperator(**merged)


def test_sync_run_returns_outputs(dataverse):
    context = make_context()
    operator = make_operator(inputs={"inputText": "abc", "inputInteger": 4})

    outputs = operator.execute(context)

    assert outputs == {"outputText": "ABC", "outputInteger": 8}
    assert context["ti"].xcom["flow_session_id"] == operator.flow_session_id
    assert dataverse.count("run") == 1
    assert dataverse.count("cancel") == 0


def test_portal_links_stored(dataverse):
    context = make_context()
    operator = make_operator(flow_id=flow_id_named(dataverse, "Desktop flow 1"), wait_for_termination=False)

    operator.execute(context)

    run_link = context["ti"].xcom["_link_DesktopFlowRunLink"]
    flow_link = context["ti"].xcom["_link_DesktopFlowLink"]
    assert run_link.startswith("https://make.powerautomate.com/environments/")
    assert run_link.endswith(f"/runs/{operator.flow_session_id}")
    assert flow_link.endswith(f"/uiflows/{flow_id_named(dataverse, 'Desktop flow 1')}/details")


def test_inputs_json_string_accepted(dataverse):
    outputs = make_operator(inputs='{"inputText": "x", "inputInteger": 1}').execute(make_context())

    assert outputs == {"outputText": "X", "outputInteger": 2}


def test_no_wait_returns_none(dataverse):
    operator = make_operator(wait_for_termination=False)

    assert operator.execute(make_context()) is None
    assert dataverse.count("get_session") == 0


def test_connection_reference_sends_type_2(dataverse):
    operator = make_operator(connection_name=None, connection_reference="new_sharedpad_ref", wait_for_termination=False)

    operator.execute(make_context())

    session = dataverse.sessions[operator.flow_session_id]
    assert session.connection_type == 2
    assert session.connection_name == "new_sharedpad_ref"


def test_failed_run_raises_with_errorcode(dataverse):
    with pytest.raises(DesktopFlowRunError) as caught:
        make_operator(flow_name="Failing desktop flow").execute(make_context())

    message = str(caught.value)
    assert "Failed (statuscode 8)" in message
    assert "NoCandidateMachine" in message
    assert caught.value.flow_session_id in message
    assert not isinstance(caught.value, DesktopFlowRunCancelledError)


def test_cancelled_run_is_distinguishable(dataverse):
    dataverse.add_flow(EmulatedFlow(name="Cancelled flow", inputs_schema={}, outputs_schema={}, outcome=7))

    with pytest.raises(DesktopFlowRunCancelledError, match="Cancelled"):
        make_operator(flow_name="Cancelled flow").execute(make_context())


def test_unknown_status_fails(dataverse):
    dataverse.add_flow(EmulatedFlow(name="Odd flow", inputs_schema={}, outputs_schema={}, outcome=99))

    with pytest.raises(DesktopFlowRunError, match="unknown status 99"):
        make_operator(flow_name="Odd flow").execute(make_context())


def test_timeout_cancels_run(dataverse):
    add_slow_flow(dataverse)

    with pytest.raises(DesktopFlowRunTimeoutError, match="A cancel request was sent"):
        make_operator(flow_name="Slow flow", timeout=0.5).execute(make_context())

    assert dataverse.count("cancel") == 1


def test_timeout_without_cancel(dataverse):
    add_slow_flow(dataverse)

    with pytest.raises(DesktopFlowRunTimeoutError, match="left running"):
        make_operator(flow_name="Slow flow", timeout=0.5, cancel_on_kill=False).execute(make_context())

    assert dataverse.count("cancel") == 0


def test_on_kill_cancels_once(dataverse):
    add_slow_flow(dataverse)
    operator = make_operator(flow_name="Slow flow")
    errors = []

    def execute():
        try:
            operator.execute(make_context())
        except Exception as error:
            errors.append(error)

    worker = threading.Thread(target=execute)
    worker.start()
    while operator.flow_session_id is None:
        time.sleep(0.05)
    operator.on_kill()
    worker.join(10)

    assert dataverse.count("cancel") == 1
    assert isinstance(errors[0], DesktopFlowRunCancelledError)


def test_on_kill_after_end_does_not_cancel(dataverse):
    operator = make_operator()
    operator.execute(make_context())

    operator.on_kill()

    assert dataverse.count("cancel") == 0


def test_bad_inputs_rejected_before_any_request(dataverse):
    operator = make_operator(inputs={"amount": object()})

    with pytest.raises(DesktopFlowInputsError, match="inputs\\['amount'\\]"):
        operator.execute(make_context())

    assert dataverse.requests == []


def test_invalid_flow_id_rejected_before_any_request(dataverse):
    with pytest.raises(DesktopFlowConfigurationError, match="flow_id 'not-a-guid' is not a GUID"):
        make_operator(flow_id="not-a-guid").execute(make_context())

    assert dataverse.requests == []


def test_deferrable_defers_then_returns_outputs(dataverse):
    operator = make_operator(deferrable=True, inputs={"inputText": "de", "inputInteger": 5})

    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(make_context())
    trigger = deferred.value.trigger
    events = collect_events(trigger)
    fresh_operator = make_operator(deferrable=True)
    outputs = fresh_operator.execute_complete(make_context(), events[0])

    assert isinstance(trigger, DesktopFlowRunTrigger)
    assert deferred.value.method_name == "execute_complete"
    assert outputs == {"outputText": "DE", "outputInteger": 10}
    assert fresh_operator.execute_complete(make_context(), events[0]) == outputs
    assert dataverse.count("run") == 1


def test_deferrable_skips_deferral_for_ended_run(dataverse):
    dataverse.add_flow(
        EmulatedFlow(name="Instant flow", inputs_schema={}, outputs_schema={}, queue_seconds=0, run_seconds=0,
                     outputs=lambda inputs: {"done": True})
    )

    outputs = make_operator(flow_name="Instant flow", deferrable=True).execute(make_context())

    assert outputs == {"done": True}


def test_deferred_failure_raises_from_event(dataverse):
    operator = make_operator(flow_name="Failing desktop flow", deferrable=True)

    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(make_context())
    event = collect_events(deferred.value.trigger)[0]

    with pytest.raises(DesktopFlowRunError, match="NoCandidateMachine"):
        make_operator(deferrable=True).execute_complete(make_context(), event)


def test_deferred_timeout_raises_from_event(dataverse):
    add_slow_flow(dataverse)
    operator = make_operator(flow_name="Slow flow", deferrable=True, timeout=0.5)

    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(make_context())
    event = collect_events(deferred.value.trigger)[0]

    with pytest.raises(DesktopFlowRunTimeoutError, match="A cancel request was sent"):
        make_operator(deferrable=True).execute_complete(make_context(), event)
    assert dataverse.count("cancel") == 1


def add_short_flow(emulator) -> EmulatedFlow:
    flow = EmulatedFlow(name="Short flow", inputs_schema={}, outputs_schema={}, queue_seconds=0.2, run_seconds=0.8,
                        outputs=lambda inputs: {"done": True})
    emulator.add_flow(flow)
    return flow


def start_deferred_try(store: MemoryTaskStateStore, max_tries: int = 1, **arguments) -> str:
    """Run the first try of a deferrable task up to its deferral and return its flowsession id."""
    operator = make_operator(deferrable=True, **arguments)
    with pytest.raises(TaskDeferred):
        operator.execute(make_context(store, max_tries))
    return operator.flow_session_id


def test_retry_reattaches_to_running_run(dataverse):
    add_short_flow(dataverse)
    store = MemoryTaskStateStore()
    first_run = start_deferred_try(store, flow_name="Short flow")
    context = make_context(store, max_tries=1)

    outputs = make_operator(flow_name="Short flow").execute(context)

    assert outputs == {"done": True}
    assert context["ti"].xcom["flow_session_id"] == first_run
    assert dataverse.count("run") == 1


def test_retry_after_success_starts_no_run(dataverse):
    store = MemoryTaskStateStore()
    first_run = start_deferred_try(store)
    time.sleep(1.5)

    operator = make_operator()
    outputs = operator.execute(make_context(store, max_tries=1))

    assert outputs["outputText"] == ""
    assert operator.flow_session_id == first_run
    assert dataverse.count("run") == 1


def test_retry_after_failure_starts_new_run(dataverse):
    store = MemoryTaskStateStore()
    start_deferred_try(store, flow_name="Failing desktop flow")
    time.sleep(1.5)

    with pytest.raises(DesktopFlowRunError):
        make_operator(flow_name="Failing desktop flow").execute(make_context(store, max_tries=1))

    assert dataverse.count("run") == 2


def test_manual_clear_starts_new_run(dataverse):
    add_slow_flow(dataverse)
    store = MemoryTaskStateStore()
    first_run = start_deferred_try(store, flow_name="Slow flow")

    operator = make_operator(flow_name="Slow flow", wait_for_termination=False)
    operator.execute(make_context(store, max_tries=2))

    assert operator.flow_session_id != first_run
    assert dataverse.count("run") == 2


def test_without_state_store_retry_starts_new_run(dataverse):
    add_slow_flow(dataverse)
    for _ in range(2):
        make_operator(flow_name="Slow flow", wait_for_termination=False).execute(make_context())

    assert dataverse.count("run") == 2


def test_schema_validation_rejects_unknown_names(dataverse):
    operator = make_operator(validate_inputs=True, inputs={"inputText": "a", "inputTxet": "b", "extra": 1})

    with pytest.raises(DesktopFlowInputsError, match=r"\['extra', 'inputTxet'\] are not inputs"):
        operator.execute(make_context())

    assert dataverse.count("input_schema") == 1
    assert dataverse.count("run") == 0


def test_schema_validation_rejects_wrong_types(dataverse):
    operator = make_operator(validate_inputs=True, inputs={"inputText": 5, "inputInteger": "7"})

    with pytest.raises(DesktopFlowInputsError) as caught:
        operator.execute(make_context())

    assert "inputText (expected string, got int)" in str(caught.value)
    assert "inputInteger (expected number, got str)" in str(caught.value)
    assert dataverse.count("run") == 0


def test_schema_validation_accepts_matching_inputs(dataverse):
    operator = make_operator(validate_inputs=True, inputs={"inputText": "ok", "inputInteger": 2.5})

    assert operator.execute(make_context())["outputText"] == "OK"


def test_outputs_over_limit_not_returned(dataverse):
    operator = make_operator(inputs={"inputText": "x" * 200, "inputInteger": 1}, max_output_bytes=100)

    with pytest.raises(DesktopFlowOutputsTooLargeError, match="more than max_output_bytes=100"):
        operator.execute(make_context())


@pytest.mark.parametrize("limit", [0, -5, 1.5, True])
def test_invalid_output_limit_rejected(limit):
    with pytest.raises(DesktopFlowConfigurationError, match="max_output_bytes"):
        RunDesktopFlowOperator(task_id="t", flow_name="f", connection_name="c", max_output_bytes=limit)


def test_on_kill_forgets_stored_run(dataverse):
    add_slow_flow(dataverse)
    store = MemoryTaskStateStore()
    operator = make_operator(flow_name="Slow flow", wait_for_termination=False)
    operator.execute(make_context(store, max_tries=1))

    operator.on_kill()
    retry = make_operator(flow_name="Slow flow", wait_for_termination=False)
    retry.execute(make_context(store, max_tries=1))

    assert store.values["desktop_flow_run"]["flow_session_id"] == retry.flow_session_id
    assert retry.flow_session_id != operator.flow_session_id
    assert dataverse.count("cancel") == 1


def test_transient_read_of_earlier_run_starts_no_run(dataverse):
    from airflow_provider_pad.emulator import Fault
    from airflow_provider_pad.exceptions import DataverseApiError
    from airflow_provider_pad.hooks.dataverse_api import RetryPolicy

    add_slow_flow(dataverse)
    store = MemoryTaskStateStore()
    start_deferred_try(store, flow_name="Slow flow")
    dataverse.inject("get_session", *[Fault(status=503)] * 2)
    retry = make_operator(flow_name="Slow flow")
    retry.hook.retry_policy = RetryPolicy(max_attempts=2, backoff_base_seconds=0.01)

    with pytest.raises(DataverseApiError, match="HTTP 503"):
        retry.execute(make_context(store, max_tries=1))

    assert dataverse.count("run") == 1


def test_include_unpublished_resolves_draft(dataverse):
    operator = make_operator(flow_name="Draft desktop flow", include_unpublished=True, wait_for_termination=False)

    operator.execute(make_context())

    assert dataverse.count("run") == 1


def test_lost_run_response_attaches_to_run(dataverse):
    from airflow_provider_pad.emulator import Fault

    dataverse.inject("run", Fault(after_handling=True, drop=True))
    operator = make_operator(inputs={"inputText": "lost", "inputInteger": 1})

    outputs = operator.execute(make_context())

    assert outputs == {"outputText": "LOST", "outputInteger": 2}
    assert list(dataverse.sessions) == [operator.flow_session_id]
    assert dataverse.count("run") == 1
    assert dataverse.count("list_sessions") == 1


def test_gateway_timeout_after_creation_attaches(dataverse):
    from airflow_provider_pad.emulator import Fault

    dataverse.inject("run", Fault(status=504, after_handling=True, body="<html>Gateway Timeout</html>"))
    operator = make_operator(wait_for_termination=False)

    operator.execute(make_context())

    assert list(dataverse.sessions) == [operator.flow_session_id]


def test_lost_run_not_found_fails_without_retry(dataverse):
    from airflow.sdk.exceptions import AirflowFailException

    from airflow_provider_pad.emulator import Fault
    from airflow_provider_pad.exceptions import DesktopFlowRunMayExistError

    dataverse.inject("run", Fault(status=502, body="<html>Bad Gateway</html>"))

    with pytest.raises(DesktopFlowRunMayExistError) as caught:
        make_operator().execute(make_context())

    assert isinstance(caught.value, AirflowFailException)
    assert "Power Automate portal" in str(caught.value)
    assert "HTTP 502" in str(caught.value)
    assert dataverse.sessions == {}
    assert dataverse.count("run") == 1
    assert dataverse.count("list_sessions") == 3


def test_lost_run_with_two_candidates_fails(dataverse):
    from airflow_provider_pad.emulator import Fault
    from airflow_provider_pad.exceptions import DesktopFlowRunMayExistError

    make_operator(wait_for_termination=False).execute(make_context())
    dataverse.inject("run", Fault(after_handling=True, drop=True))

    with pytest.raises(DesktopFlowRunMayExistError, match="2 runs of the flow were created"):
        make_operator(wait_for_termination=False).execute(make_context())


def test_throttled_run_request_creates_one_run(dataverse):
    from airflow_provider_pad.emulator import Fault

    dataverse.inject("run", Fault(status=429, headers={"Retry-After": "1"}), Fault(status=429))
    operator = make_operator(wait_for_termination=False)
    operator.hook.retry_policy = RetryPolicy(backoff_base_seconds=0.05)

    operator.execute(make_context())

    assert dataverse.count("run", status=429) == 2
    assert dataverse.count("run", status=200) == 1
    assert list(dataverse.sessions) == [operator.flow_session_id]


@pytest.mark.parametrize("fault_status", [429, 503])
def test_deadline_cancel_retries_passing_failure(dataverse, fault_status):
    from airflow_provider_pad.emulator import Fault

    add_slow_flow(dataverse)
    dataverse.inject("cancel", Fault(status=fault_status, headers={"Retry-After": "0"}))
    operator = make_operator(flow_name="Slow flow", timeout=0.5)

    with pytest.raises(DesktopFlowRunTimeoutError, match="A cancel request was sent"):
        operator.execute(make_context())

    assert dataverse.count("cancel") == 2
    assert dataverse.sessions[operator.flow_session_id].statuscode == 7


def test_on_kill_keeps_run_when_cancel_fails(dataverse):
    from airflow_provider_pad.emulator import Fault

    add_slow_flow(dataverse)
    store = MemoryTaskStateStore()
    operator = make_operator(flow_name="Slow flow", wait_for_termination=False)
    operator.execute(make_context(store, max_tries=1))
    dataverse.inject("cancel", Fault(status=403))

    operator.on_kill()

    assert store.values["desktop_flow_run"]["flow_session_id"] == operator.flow_session_id


def test_license_warning_logged(dataverse, capfd):
    dataverse.add_flow(EmulatedFlow(
        name="Unlicensed flow", inputs_schema={}, outputs_schema={},
        license_check={"code": "UnattendedNoAddon", "message": "No unattended add-on is assigned."},
    ))

    make_operator(flow_name="Unlicensed flow", wait_for_termination=False).execute(make_context())

    output = capfd.readouterr().out
    assert "UnattendedNoAddon" in output
    assert "No unattended add-on is assigned." in output
