"""Tests of scripted fault injection: error responses, delays, dropped connections and ambiguous submits."""

from __future__ import annotations

import time

import pytest
import requests

from airflow_provider_pad.emulator import DESKTOP_FLOW_1_ID, Fault, SessionStatus
from tests.emulator.webapi import WEB_API_PATH, post_token_form


def test_fault_429_then_success(emulator, client):
    emulator.inject("list_workflows", Fault(status=429, headers={"Retry-After": "1"}))
    throttled = client.get("workflows")
    retried = client.get("workflows")
    assert throttled.status_code == 429
    assert throttled.headers["Retry-After"] == "1"
    assert throttled.json()["error"]["code"] == "0x80072322"
    assert retried.status_code == 200
    assert emulator.count("list_workflows", status=429) == 1
    assert emulator.count("list_workflows", status=200) == 1


def test_faults_consumed_in_order(emulator, client):
    emulator.inject("whoami", Fault(status=503), Fault(status=502))
    emulator.inject("whoami", Fault(status=500))
    statuses = [client.get("WhoAmI").status_code for _ in range(4)]
    assert statuses == [503, 502, 500, 200]


def test_fault_other_endpoint_untouched(emulator, client):
    emulator.inject("get_session", Fault(status=500))
    assert client.get("WhoAmI").status_code == 200


def test_fault_before_token_check(emulator, http):
    emulator.inject("whoami", Fault(status=503))
    assert http.get(f"{emulator.base_url}{WEB_API_PATH}/WhoAmI").status_code == 503


def test_fault_before_handling_creates_no_run(emulator, client):
    emulator.inject("run", Fault(status=500))
    sessions_before = len(emulator.sessions)
    assert client.run(DESKTOP_FLOW_1_ID).status_code == 500
    assert len(emulator.sessions) == sessions_before


def test_fault_after_handling_creates_run(emulator, client):
    emulator.inject("run", Fault(status=504, after_handling=True))
    sessions_before = len(emulator.sessions)
    response = client.run(DESKTOP_FLOW_1_ID)
    assert response.status_code == 504
    assert len(emulator.sessions) == sessions_before + 1


def test_fault_drop_after_handling(emulator, client):
    emulator.inject("run", Fault(after_handling=True, drop=True))
    sessions_before = set(emulator.sessions)
    with pytest.raises(requests.ConnectionError):
        client.run(DESKTOP_FLOW_1_ID)
    new_sessions = set(emulator.sessions) - sessions_before
    assert len(new_sessions) == 1
    assert emulator.sessions[new_sessions.pop()].statuscode in (SessionStatus.WAITING, SessionStatus.RUNNING)
    assert emulator.count("run", status=0) == 1


def test_fault_drop_before_handling(emulator, client):
    emulator.inject("run", Fault(drop=True))
    sessions_before = len(emulator.sessions)
    with pytest.raises(requests.ConnectionError):
        client.run(DESKTOP_FLOW_1_ID)
    assert len(emulator.sessions) == sessions_before


def test_fault_drop_then_connection_reusable(emulator, client):
    emulator.inject("whoami", Fault(drop=True))
    with pytest.raises(requests.ConnectionError):
        client.get("WhoAmI")
    assert client.get("WhoAmI").status_code == 200


def test_fault_delay(emulator, client):
    emulator.inject("whoami", Fault(status=503, delay_seconds=0.3))
    started = time.monotonic()
    response = client.get("WhoAmI")
    assert time.monotonic() - started >= 0.3
    assert response.status_code == 503


def test_fault_delay_client_timeout(emulator, client):
    emulator.inject("get_session", Fault(status=500, delay_seconds=0.3))
    with pytest.raises(requests.ReadTimeout):
        client.session.get(client.url(f"flowsessions({DESKTOP_FLOW_1_ID})"), timeout=0.05)


def test_fault_after_handling_cancel(emulator, client):
    flowsession_id = client.start_run(DESKTOP_FLOW_1_ID)
    emulator.inject("cancel", Fault(status=500, after_handling=True))
    response = client.post(f"flowsessions({flowsession_id})/Microsoft.Dynamics.CRM.CancelDesktopFlowRun")
    assert response.status_code == 500
    assert client.session_row(flowsession_id)["statuscode"] == SessionStatus.CANCELLED


def test_fault_custom_body_and_headers(emulator, client):
    emulator.inject("whoami", Fault(status=502, headers={"Content-Type": "text/html"}, body="<html>Bad gateway</html>"))
    response = client.get("WhoAmI")
    assert response.status_code == 502
    assert response.headers["Content-Type"] == "text/html"
    assert response.text == "<html>Bad gateway</html>"


def test_fault_success_status_empty_body(emulator, client):
    emulator.inject("whoami", Fault(status=200))
    response = client.get("WhoAmI")
    assert response.status_code == 200
    assert response.content == b""


def test_fault_token_identity_body(emulator):
    emulator.inject("token", Fault(status=503))
    response = post_token_form(emulator)
    assert response.status_code == 503
    assert response.json()["error"] == "temporarily_unavailable"
    assert response.json()["error_codes"] == [90033]


def test_fault_logged_status(emulator, client):
    emulator.inject("whoami", Fault(status=418))
    client.get("WhoAmI")
    record = emulator.requests[-1]
    assert record.endpoint == "whoami"
    assert record.status == 418


def test_fault_unknown_endpoint(emulator):
    with pytest.raises(ValueError, match="Unknown endpoint name"):
        emulator.inject("workflows", Fault())


def test_fault_invalid_status():
    with pytest.raises(ValueError, match="status"):
        Fault(status=0)


def test_clear_faults(emulator, client):
    emulator.inject("whoami", Fault(status=500))
    emulator.clear_faults("whoami")
    assert client.get("WhoAmI").status_code == 200
