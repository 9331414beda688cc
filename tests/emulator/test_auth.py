"""Tests of bearer token checks on the Web API: missing, unknown and expired tokens."""

from __future__ import annotations

import time

from airflow_provider_pad.emulator import DataverseEmulator
from tests.emulator.webapi import WEB_API_PATH, WebApiClient, request_token


def test_missing_token_401(emulator, http):
    response = http.get(f"{emulator.base_url}{WEB_API_PATH}/WhoAmI")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "0x8005f101"
    assert "Authorization" in response.json()["error"]["message"]


def test_missing_token_challenge(emulator, http):
    response = http.get(f"{emulator.base_url}{WEB_API_PATH}/workflows")
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith(f"Bearer authorization_uri={emulator.authority}/oauth2/authorize")
    assert f"resource_id={emulator.base_url}/" in challenge


def test_unknown_token_401(emulator):
    with WebApiClient(emulator, "not-a-token") as client:
        assert client.get("WhoAmI").status_code == 401


def test_basic_scheme_401(emulator, http):
    response = http.get(f"{emulator.base_url}{WEB_API_PATH}/WhoAmI", headers={"Authorization": "Basic abc"})
    assert response.status_code == 401


def test_unknown_path_needs_token(emulator, http):
    assert http.get(f"{emulator.base_url}{WEB_API_PATH}/Account").status_code == 401


def test_expire_tokens_401(emulator, client):
    assert client.get("WhoAmI").status_code == 200
    emulator.expire_tokens()
    response = client.get("WhoAmI")
    assert response.status_code == 401
    assert "expired" in response.json()["error"]["message"]


def test_expire_tokens_new_token_works(emulator):
    emulator.expire_tokens()
    with WebApiClient(emulator, request_token(emulator)) as client:
        assert client.get("WhoAmI").status_code == 200


def test_token_lifetime_elapses():
    with DataverseEmulator(token_lifetime_seconds=1) as emulator:
        with WebApiClient(emulator, request_token(emulator)) as client:
            assert client.get("WhoAmI").status_code == 200
            time.sleep(1.05)
            assert client.get("WhoAmI").status_code == 401


def test_unauthorized_logged_per_endpoint(emulator, http):
    http.post(f"{emulator.base_url}{WEB_API_PATH}/flowsessions(99999999-9999-4999-8999-999999999999)"
              "/Microsoft.Dynamics.CRM.CancelDesktopFlowRun")
    assert emulator.count("cancel", status=401) == 1


def test_identity_routes_need_no_token(emulator, http):
    assert http.get(f"{emulator.authority}/v2.0/.well-known/openid-configuration").status_code == 200
