"""No secret or access token may reach logs, XCom, trigger kwargs, templates or error messages."""

from __future__ import annotations

import json
import logging

import pytest
from airflow.sdk.exceptions import TaskDeferred

from airflow_provider_pad.emulator import DataverseEmulator
from airflow_provider_pad.exceptions import DesktopFlowError
from airflow_provider_pad.hooks import credentials
from airflow_provider_pad.hooks.dataverse import DataverseHook
from airflow_provider_pad.operators.desktop_flow import RunDesktopFlowOperator
from tests.unit.helpers import collect_events, make_context

CLIENT_SECRET = "Known-Secret-Value~0123456789abcdefXYZ"
LOGGERS = ["", "airflow_provider_pad", "msal", "urllib3", "requests", "httpx", "httpcore", "airflow"]


class CollectingHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
        if record.exc_info and record.exc_info[1] is not None:
            self.lines.append(str(record.exc_info[1]))


@pytest.fixture
def debug_logs():
    handler = CollectingHandler()
    loggers = [logging.getLogger(name) for name in LOGGERS]
    saved = [(logger, logger.level, logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
        logger.addHandler(handler)
    yield handler
    for logger, level, _ in saved:
        logger.setLevel(level)
        logger.removeHandler(handler)


@pytest.fixture
def secret_dataverse(monkeypatch):
    with DataverseEmulator(client_secret=CLIENT_SECRET, queue_seconds=0.2, run_seconds=0.3) as emulator:
        monkeypatch.setenv("AIRFLOW_CONN_DATAVERSE_DEFAULT", emulator.connection_json())
        credentials.clear_client_applications()
        yield emulator
        credentials.clear_client_applications()


def current_token() -> str:
    hook = DataverseHook()
    return credentials.acquire_token(hook.get_config())


def assert_no_secret(text: str, token: str) -> None:
    assert CLIENT_SECRET not in text
    assert token not in text
    assert "Bearer " not in text


def test_no_secret_in_any_output(secret_dataverse, debug_logs, capfd):
    inputs = {"inputText": "{{ 'templated' }}", "inputInteger": 1}
    context = make_context()
    messages = []

    synchronous = RunDesktopFlowOperator(task_id="sync", flow_name="Desktop flow 1", connection_name="m", check_interval=0.1, inputs=inputs)
    outputs = synchronous.execute(context)
    deferrable = RunDesktopFlowOperator(task_id="deferred", flow_name="Desktop flow 1", connection_name="m", check_interval=0.1, deferrable=True)
    with pytest.raises(TaskDeferred) as deferred:
        deferrable.execute(context)
    trigger_kwargs = deferred.value.trigger.serialize()[1]
    event = collect_events(deferred.value.trigger)[0]
    deferrable.execute_complete(context, event)
    failing = RunDesktopFlowOperator(task_id="failing", flow_name="Failing desktop flow", connection_name="m", check_interval=0.1)
    with pytest.raises(DesktopFlowError) as failure:
        failing.execute(context)
    messages.append(str(failure.value))
    token = current_token()
    secret_dataverse.expire_tokens()
    DataverseHook().list_desktop_flows()

    captured = capfd.readouterr()
    everything = "\n".join(
        [
            *debug_logs.lines,
            captured.out,
            captured.err,
            json.dumps(trigger_kwargs),
            json.dumps(event),
            json.dumps(context["ti"].xcom, default=str),
            json.dumps(outputs),
            repr(synchronous.inputs),
            repr(DataverseHook().get_config()),
            *messages,
        ]
    )
    assert len(debug_logs.lines) > 20
    assert_no_secret(everything, token)


def test_wrong_secret_error_has_no_secret(secret_dataverse, debug_logs, monkeypatch):
    connection = json.loads(secret_dataverse.connection_json())
    wrong_secret = "Wrong-Secret-Value~9876543210zyxw"
    connection["password"] = wrong_secret
    monkeypatch.setenv("AIRFLOW_CONN_DATAVERSE_DEFAULT", json.dumps(connection))

    with pytest.raises(DesktopFlowError) as caught:
        RunDesktopFlowOperator(task_id="t", flow_name="Desktop flow 1", connection_name="m").execute(make_context())

    assert "AADSTS7000215" in str(caught.value)
    assert wrong_secret not in str(caught.value)
    assert wrong_secret not in "\n".join(debug_logs.lines)
