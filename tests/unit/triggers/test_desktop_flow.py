"""DesktopFlowRunTrigger against the emulator: events, deadlines, kills and restarts."""

from __future__ import annotations

import asyncio
import math
import json
import time

import pytest

from airflow_provider_pad.emulator import EmulatedFlow, Fault
from airflow_provider_pad.hooks.dataverse import DataverseHook
from airflow_provider_pad.triggers.desktop_flow import DesktopFlowRunTrigger
from tests.unit.helpers import collect_events, start_run

EVENT_KEYS = {"status", "flow_session_id", "statuscode", "status_label", "errorcode", "errormessage", "message", "cancelled"}


def make_trigger(flow_session_id: str, *, seconds: float = 30, **overrides) -> DesktopFlowRunTrigger:
    arguments = {
        "flow_session_id": flow_session_id,
        "dataverse_conn_id": "dataverse_default",
        "check_interval": 0.1,
        "deadline": time.time() + seconds,
        "cancel_on_kill": True,
        **overrides,
    }
    return DesktopFlowRunTrigger(**arguments)


def add_slow_flow(emulator) -> None:
    emulator.add_flow(EmulatedFlow(name="Slow flow", inputs_schema={}, outputs_schema={}, queue_seconds=0.1, run_seconds=60))


def test_serialize_round_trip():
    trigger = make_trigger("d9687093-d0c0-ec11-983e-0022480b428a", cancel_on_kill=False)

    classpath, kwargs = trigger.serialize()
    rebuilt = DesktopFlowRunTrigger(**kwargs)

    assert classpath == "airflow_provider_pad.triggers.desktop_flow.DesktopFlowRunTrigger"
    assert rebuilt.serialize() == (classpath, kwargs)
    assert json.loads(json.dumps(kwargs)) == kwargs


def test_success_event(dataverse):
    flow_session_id = start_run(dataverse, "Desktop flow 1")

    events = collect_events(make_trigger(flow_session_id))

    assert len(events) == 1
    assert set(events[0]) == EVENT_KEYS
    assert events[0]["status"] == "success"
    assert events[0]["statuscode"] == 4
    assert events[0]["flow_session_id"] == flow_session_id


def test_failed_event_carries_error_fields(dataverse):
    flow_session_id = start_run(dataverse, "Failing desktop flow")

    event = collect_events(make_trigger(flow_session_id))[0]

    assert event["status"] == "failed"
    assert event["status_label"] == "Failed"
    assert event["errorcode"] == "NoCandidateMachine"
    assert event["errormessage"]


def test_cancelled_event(dataverse):
    add_slow_flow(dataverse)
    flow_session_id = start_run(dataverse, "Slow flow")
    DataverseHook().cancel_run(flow_session_id)

    assert collect_events(make_trigger(flow_session_id))[0]["status"] == "cancelled"


def test_deadline_cancels_and_times_out(dataverse):
    add_slow_flow(dataverse)
    flow_session_id = start_run(dataverse, "Slow flow")

    event = collect_events(make_trigger(flow_session_id, seconds=0.5))[0]

    assert event["status"] == "timeout"
    assert event["cancelled"] is True
    assert event["status_label"] in ("Waiting", "Running")
    assert dataverse.count("cancel") == 1


def test_deadline_without_cancel(dataverse):
    add_slow_flow(dataverse)
    flow_session_id = start_run(dataverse, "Slow flow")

    event = collect_events(make_trigger(flow_session_id, seconds=0.3, cancel_on_kill=False))[0]

    assert event["status"] == "timeout"
    assert event["cancelled"] is None
    assert dataverse.count("cancel") == 0


def test_run_ending_at_deadline_reports_real_result(dataverse):
    flow_session_id = start_run(dataverse, "Desktop flow 1")
    time.sleep(1.5)

    event = collect_events(make_trigger(flow_session_id, seconds=-1))[0]

    assert event["status"] == "success"
    assert dataverse.count("cancel") == 0


def test_permission_error_event(dataverse):
    flow_session_id = start_run(dataverse, "Desktop flow 1")
    forbidden = Fault(status=403, body=json.dumps(
        {"error": {"code": "0x80040220", "message": "Principal user is missing prvReadflowsession privilege"}}))
    dataverse.inject("list_sessions", forbidden)
    dataverse.inject("get_session", forbidden)

    event = collect_events(make_trigger(flow_session_id))[0]

    assert event["status"] == "error"
    assert "prvReadflowsession" in event["message"]
    assert dataverse.count("list_sessions") == 1
    assert dataverse.count("get_session") == 1


def test_on_kill_cancels_once(dataverse):
    add_slow_flow(dataverse)
    flow_session_id = start_run(dataverse, "Slow flow")
    trigger = make_trigger(flow_session_id)

    async def kill_while_watching():
        watcher = asyncio.create_task(anext(aiter(trigger.run())))
        await asyncio.sleep(0.3)
        watcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watcher
        await trigger.on_kill()
        await trigger.cleanup()

    asyncio.run(kill_while_watching())

    assert dataverse.count("cancel") == 1


def test_restart_resumes_without_cancel(dataverse):
    flow_session_id = start_run(dataverse, "Desktop flow 1")
    first = make_trigger(flow_session_id)

    async def stop_first_trigger():
        watcher = asyncio.create_task(anext(aiter(first.run())))
        await asyncio.sleep(0.2)
        watcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watcher
        await first.cleanup()

    asyncio.run(stop_first_trigger())
    _, kwargs = first.serialize()
    event = collect_events(DesktopFlowRunTrigger(**kwargs))[0]

    assert event["status"] == "success"
    assert dataverse.count("cancel") == 0


def gateway_error(status: int) -> Fault:
    return Fault(status=status, body="<html><body><h1>Bad gateway</h1></body></html>", headers={"Content-Type": "text/html"})


def test_transient_errors_do_not_fail_watch(dataverse):
    flow_session_id = start_run(dataverse, "Desktop flow 1")
    dataverse.inject("list_sessions", *[gateway_error(503)] * 3)

    event = collect_events(make_trigger(flow_session_id))[0]

    assert event["status"] == "success"
    assert dataverse.count("list_sessions", status=503) == 3


def test_not_found_tolerated_during_grace(dataverse):
    flow_session_id = start_run(dataverse, "Desktop flow 1")
    dataverse.inject("list_sessions", *[Fault(status=200, body='{"value": []}')] * 2)
    dataverse.inject("get_session", Fault(status=404), Fault(status=404))

    event = collect_events(make_trigger(flow_session_id, not_found_grace_until=time.time() + 30))[0]

    assert event["status"] == "success"
    assert dataverse.count("get_session", status=404) == 2


def test_not_found_after_grace_is_error(dataverse):
    flow_session_id = start_run(dataverse, "Desktop flow 1")
    dataverse.inject("list_sessions", Fault(status=200, body='{"value": []}'))
    dataverse.inject("get_session", Fault(status=404))

    event = collect_events(make_trigger(flow_session_id))[0]

    assert event["status"] == "error"
    assert "HTTP 404" in event["message"]


def test_retry_after_never_passes_deadline(dataverse):
    add_slow_flow(dataverse)
    flow_session_id = start_run(dataverse, "Slow flow")
    dataverse.inject("list_sessions", Fault(status=429, headers={"Retry-After": "120"}))
    started = time.monotonic()

    event = collect_events(make_trigger(flow_session_id, seconds=1.0))[0]

    assert time.monotonic() - started < 10
    assert event["status"] == "timeout"
    assert dataverse.count("cancel") == 1


def test_failed_cancel_keeps_timeout_outcome(dataverse):
    add_slow_flow(dataverse)
    flow_session_id = start_run(dataverse, "Slow flow")
    dataverse.inject("cancel", Fault(status=403))

    event = collect_events(make_trigger(flow_session_id, seconds=0.3))[0]

    assert event["status"] == "timeout"
    assert event["cancelled"] is False
    assert dataverse.count("cancel") == 1


def test_many_triggers_share_status_requests(dataverse):
    add_slow_flow(dataverse)
    runs = [start_run(dataverse, "Slow flow") for _ in range(120)]
    dataverse.reset_log()

    async def watch_all():
        triggers = [make_trigger(flow_session_id, seconds=2.0, check_interval=0.5) for flow_session_id in runs]

        async def first_event(trigger):
            try:
                return (await anext(aiter(trigger.run()))).payload
            finally:
                await trigger.cleanup()

        return await asyncio.gather(*(first_event(trigger) for trigger in triggers))

    started = time.monotonic()
    events = asyncio.run(watch_all())
    ticks = math.ceil((time.monotonic() - started) / 0.5) + 1

    assert {event["status"] for event in events} == {"timeout"}
    assert dataverse.count("get_session") == 0
    assert dataverse.count("list_sessions") <= ticks * math.ceil(len(runs) / 50)
    assert dataverse.count("cancel") == len(runs)
