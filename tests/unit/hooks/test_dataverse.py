"""DataverseHook against the emulator over real HTTPS, with real MSAL token requests."""

from __future__ import annotations

import asyncio
import json

import pytest

from airflow_provider_pad.emulator import EmulatedFlow, Fault
from airflow_provider_pad.exceptions import (
    AmbiguousDesktopFlowNameError,
    DataverseApiError,
    DataverseAuthenticationError,
    DataverseNotFoundError,
    DesktopFlowNotFoundError,
)
from airflow_provider_pad.hooks.dataverse import DataverseHook
from airflow_provider_pad.hooks.dataverse_api import RetryPolicy, build_run_body

SPECIAL_NAMES = ["Tom's invoice", "R&D + ops", "Ticket #7 at 100%", "Rechnungsprüfung", "請求書の入力"]


def run_body(inputs: dict | None = None) -> dict:
    return build_run_body(
        connection_name="machine-group",
        connection_type=1,
        run_mode="unattended",
        run_priority="normal",
        inputs_json=json.dumps(inputs) if inputs is not None else None,
        run_timeout_seconds=None,
        callback_url=None,
    )


def flow_id_named(emulator, name: str) -> str:
    return next(flow.workflow_id for flow in emulator.flows.values() if flow.name == name)


def wait_until_ended(hook: DataverseHook, flow_session_id: str, seconds: float = 10.0):
    import time

    stop = time.time() + seconds
    while time.time() < stop:
        session = hook.get_flow_session(flow_session_id)
        if session.has_ended:
            return session
        time.sleep(0.1)
    raise AssertionError(f"run {flow_session_id} did not end within {seconds} s")


def test_list_published_flows(dataverse):
    names = {row["name"] for row in DataverseHook().list_desktop_flows()}

    assert {"Desktop flow 1", "Desktop flow 2"} <= names
    assert "Draft desktop flow" not in names


def test_list_includes_drafts_when_asked(dataverse):
    names = {row["name"] for row in DataverseHook().list_desktop_flows(include_unpublished=True)}

    assert "Draft desktop flow" in names


def test_list_follows_pages(dataverse):
    for index in range(120):
        dataverse.add_flow(EmulatedFlow(name=f"Bulk flow {index:03d}", inputs_schema={}, outputs_schema={}))

    names = [row["name"] for row in DataverseHook().list_desktop_flows()]

    assert sum(name.startswith("Bulk flow") for name in names) == 120
    assert dataverse.count("list_workflows") >= 3


def test_resolve_flow_id(dataverse):
    assert DataverseHook().resolve_flow_id("Desktop flow 1") == flow_id_named(dataverse, "Desktop flow 1")


@pytest.mark.parametrize("name", SPECIAL_NAMES)
def test_resolve_flow_with_special_name(dataverse, name):
    flow = EmulatedFlow(name=name, inputs_schema={}, outputs_schema={})
    dataverse.add_flow(flow)

    assert DataverseHook().resolve_flow_id(name) == flow.workflow_id


def test_resolve_unknown_flow(dataverse):
    with pytest.raises(DesktopFlowNotFoundError, match="No desktop flow named 'Nope'"):
        DataverseHook().resolve_flow_id("Nope")


def test_resolve_ambiguous_flow_lists_ids(dataverse):
    twins = [EmulatedFlow(name="Twin", inputs_schema={}, outputs_schema={}) for _ in range(2)]
    for flow in twins:
        dataverse.add_flow(flow)

    with pytest.raises(AmbiguousDesktopFlowNameError) as caught:
        DataverseHook().resolve_flow_id("Twin")

    for flow in twins:
        assert flow.workflow_id in str(caught.value)


def test_resolve_draft_only_when_asked(dataverse):
    hook = DataverseHook()

    with pytest.raises(DesktopFlowNotFoundError):
        hook.resolve_flow_id("Draft desktop flow")
    assert hook.resolve_flow_id("Draft desktop flow", include_unpublished=True)


def test_schemas(dataverse):
    hook = DataverseHook()
    flow_id = flow_id_named(dataverse, "Desktop flow 1")

    assert set(hook.get_input_schema(flow_id)["properties"]) == {"inputText", "inputInteger"}
    assert set(hook.get_output_schema(flow_id)["properties"]) == {"outputText", "outputInteger"}


def test_schema_of_unknown_flow(dataverse):
    with pytest.raises(DataverseNotFoundError, match="HTTP 404"):
        DataverseHook().get_input_schema("00000000-0000-0000-0000-000000000001")


def test_run_succeeds_with_outputs(dataverse):
    hook = DataverseHook()
    flow_id = flow_id_named(dataverse, "Desktop flow 1")

    started = hook.run_desktop_flow(flow_id, run_body({"inputText": "abc", "inputInteger": 21}))
    session = wait_until_ended(hook, started.flow_session_id)

    assert session.label == "Succeeded"
    assert started.license_code == "ValidLicenseCoverage"
    assert hook.get_run_outputs(started.flow_session_id) == {"outputText": "ABC", "outputInteger": 42}
    assert dataverse.count("run") == 1


def test_failing_run_reports_errorcode(dataverse):
    hook = DataverseHook()
    started = hook.run_desktop_flow(flow_id_named(dataverse, "Failing desktop flow"), run_body())

    session = wait_until_ended(hook, started.flow_session_id)

    assert session.label == "Failed"
    assert session.errorcode == "NoCandidateMachine"


def test_run_without_outputs_reads_empty(dataverse):
    hook = DataverseHook()
    started = hook.run_desktop_flow(flow_id_named(dataverse, "Flow without outputs"), run_body())
    wait_until_ended(hook, started.flow_session_id)

    assert hook.get_run_outputs(started.flow_session_id) == {}


def test_cancel_run(dataverse):
    hook = DataverseHook()
    started = hook.run_desktop_flow(flow_id_named(dataverse, "Desktop flow 1"), run_body())

    hook.cancel_run(started.flow_session_id)

    assert hook.get_flow_session(started.flow_session_id).label == "Cancelled"
    assert dataverse.count("cancel") == 1


def test_unknown_session_not_found(dataverse):
    with pytest.raises(DataverseNotFoundError) as caught:
        DataverseHook().get_flow_session("00000000-0000-0000-0000-000000000002")

    assert caught.value.status_code == 404
    assert caught.value.error_code


def test_async_run_matches_sync(dataverse):
    flow_id = flow_id_named(dataverse, "Desktop flow 2")

    async def scenario():
        hook = DataverseHook()
        try:
            started = await hook.arun_desktop_flow(flow_id, run_body({"inputText": "abc", "inputInteger": 1}))
            while not (session := await hook.aget_flow_session(started.flow_session_id)).has_ended:
                await asyncio.sleep(0.1)
            return session, await hook.aget_run_outputs(started.flow_session_id)
        finally:
            await hook.aclose()

    session, outputs = asyncio.run(scenario())

    assert session.label == "Succeeded"
    assert outputs == {"outputText": "cba", "outputInteger": 2}


def test_async_resolve_and_cancel(dataverse):
    async def scenario():
        hook = DataverseHook()
        try:
            flow_id = await hook.aresolve_flow_id("Desktop flow 1")
            started = await hook.arun_desktop_flow(flow_id, run_body())
            await hook.acancel_run(started.flow_session_id)
            return await hook.aget_flow_session(started.flow_session_id)
        finally:
            await hook.aclose()

    assert asyncio.run(scenario()).label == "Cancelled"


def test_token_shared_between_hooks(dataverse):
    for _ in range(3):
        DataverseHook().list_desktop_flows()

    assert dataverse.count("token") == 1


def test_expired_token_refreshed_once(dataverse):
    hook = DataverseHook()
    hook.list_desktop_flows()
    dataverse.expire_tokens()

    hook.list_desktop_flows()

    assert dataverse.count("token") == 2
    assert dataverse.count("list_workflows", status=401) == 1


def test_connection_test_names_environment(dataverse):
    ok, message = DataverseHook().test_connection()

    assert ok is True
    assert dataverse.base_url in message


def test_connection_test_wrong_secret(dataverse, monkeypatch):
    connection = json.loads(dataverse.connection_json())
    connection["password"] = "wrong-secret-value-1234"
    monkeypatch.setenv("AIRFLOW_CONN_DATAVERSE_DEFAULT", json.dumps(connection))

    ok, message = DataverseHook().test_connection()

    assert ok is False
    assert "AADSTS7000215" in message
    assert "wrong-secret-value-1234" not in message


def test_untrusted_certificate_fails_cleanly(dataverse, monkeypatch):
    connection = json.loads(dataverse.connection_json())
    del connection["extra"]["verify"]
    monkeypatch.setenv("AIRFLOW_CONN_DATAVERSE_DEFAULT", json.dumps(connection))

    with pytest.raises(DataverseAuthenticationError, match="could not be reached"):
        DataverseHook().list_desktop_flows()


def test_environment_id_from_dataverse_is_cached(dataverse):
    first = DataverseHook().get_environment_id()
    second = DataverseHook().get_environment_id()

    assert first == second
    assert dataverse.count("current_organization") <= 1


def test_transport_error_is_dataverse_error(dataverse):
    hook = DataverseHook(retry_policy=RetryPolicy(max_attempts=2, backoff_base_seconds=0.01))
    dataverse.inject("get_session", Fault(drop=True), Fault(drop=True))

    with pytest.raises(DataverseApiError, match="no response"):
        hook.get_flow_session("00000000-0000-0000-0000-000000000003")

    assert dataverse.count("get_session") == 2


def test_concurrent_async_hooks_share_one_token(dataverse):
    async def scenario():
        hooks = [DataverseHook() for _ in range(40)]
        try:
            await asyncio.gather(*(hook.alist_desktop_flows("Desktop flow 1") for hook in hooks))
            dataverse.expire_tokens()
            await asyncio.gather(*(hook.alist_desktop_flows("Desktop flow 1") for hook in hooks))
        finally:
            await asyncio.gather(*(hook.aclose() for hook in hooks))

    asyncio.run(scenario())

    assert dataverse.count("token") == 2
    assert dataverse.count("list_workflows", status=401) == 40
    assert dataverse.count("list_workflows", status=200) == 80


def test_async_hooks_in_one_loop_share_client(dataverse):
    from airflow_provider_pad.hooks import dataverse as dataverse_module

    async def scenario():
        hooks = [DataverseHook() for _ in range(5)]
        await asyncio.gather(*(hook.alist_desktop_flows() for hook in hooks))
        clients = {id(hook._async_client) for hook in hooks}
        open_while_used = len(dataverse_module._async_clients)
        for hook in hooks[:-1]:
            await hook.aclose()
        open_after_four = len(dataverse_module._async_clients)
        await hooks[-1].aclose()
        return clients, open_while_used, open_after_four, len(dataverse_module._async_clients)

    clients, open_while_used, open_after_four, open_after_all = asyncio.run(scenario())

    assert len(clients) == 1
    assert open_while_used == 1
    assert open_after_four == 1
    assert open_after_all == 0


def test_connection_test_unreachable_host_tries_once(dataverse):
    dataverse.inject("whoami", Fault(drop=True), Fault(drop=True))

    ok, message = DataverseHook().test_connection()

    assert ok is False
    assert message.startswith(f"Could not reach {dataverse.base_url}")
    assert dataverse.count("whoami") == 1
