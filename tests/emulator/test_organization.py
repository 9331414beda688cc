"""Tests of WhoAmI, RetrieveCurrentOrganization, the admin routes and the emulator's life cycle."""

from __future__ import annotations

import json
import logging
import os
import ssl

import httpx
import pytest

from airflow_provider_pad.emulator import (
    BUSINESS_UNIT_ID,
    ENVIRONMENT_ID,
    ORGANIZATION_ID,
    USER_ID,
    DataverseEmulator,
)
from tests.emulator.webapi import WEB_API_PATH, request_token

ACCESS_TYPE = "Microsoft.Dynamics.CRM.EndpointAccessType'Default'"


def test_whoami_ids(client):
    payload = client.get("WhoAmI").json()
    assert payload["UserId"] == USER_ID
    assert payload["BusinessUnitId"] == BUSINESS_UNIT_ID
    assert payload["OrganizationId"] == ORGANIZATION_ID
    assert payload["@odata.context"].endswith("$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse")


def test_whoami_odata_headers(client):
    response = client.get("WhoAmI")
    assert response.headers["OData-Version"] == "4.0"
    assert response.headers["Content-Type"].startswith("application/json")


def test_current_organization_alias(client, emulator):
    response = client.get("RetrieveCurrentOrganization(AccessType=@p1)", params={"@p1": ACCESS_TYPE})
    detail = response.json()["Detail"]
    assert response.status_code == 200
    assert detail["EnvironmentId"] == ENVIRONMENT_ID
    assert detail["TenantId"] == emulator.tenant_id
    assert detail["UrlName"] == "emulator"
    assert detail["OrganizationId"] == ORGANIZATION_ID
    assert detail["FriendlyName"] == "Dataverse emulator"


def test_current_organization_inline(client):
    response = client.get(f"RetrieveCurrentOrganization(AccessType={ACCESS_TYPE})")
    assert response.json()["Detail"]["EnvironmentId"] == ENVIRONMENT_ID


def test_current_organization_encoded_quotes(client):
    encoded_access_type = "Microsoft.Dynamics.CRM.EndpointAccessType%27Default%27"
    response = client.get(f"RetrieveCurrentOrganization(AccessType={encoded_access_type})")
    assert response.status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "RetrieveCurrentOrganization(AccessType=@p1)",
        "RetrieveCurrentOrganization(AccessType='Default')",
        "RetrieveCurrentOrganization()",
    ],
    ids=["alias-missing", "plain-string", "no-argument"],
)
def test_current_organization_invalid_400(client, path):
    assert client.get(path).status_code == 400


def test_httpx_sync_client(emulator):
    token = request_token(emulator)
    verify = ssl.create_default_context(cafile=emulator.ca_path)
    with httpx.Client(verify=verify, trust_env=False, base_url=emulator.base_url) as http:
        response = http.get(f"{WEB_API_PATH}/WhoAmI", headers={"Authorization": f"Bearer {token}"})
    assert response.json()["UserId"] == USER_ID


def test_localhost_name_verifies(emulator):
    token = request_token(emulator)
    verify = ssl.create_default_context(cafile=emulator.ca_path)
    localhost_url = emulator.base_url.replace("127.0.0.1", "localhost")
    with httpx.Client(verify=verify, trust_env=False) as http:
        response = http.get(f"{localhost_url}{WEB_API_PATH}/WhoAmI", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200


def test_admin_requests_route(emulator, client, http):
    client.get("WhoAmI")
    records = http.get(f"{emulator.base_url}/_emulator/requests").json()
    assert [(record["endpoint"], record["status"]) for record in records] == [("token", 200), ("whoami", 200)]


def test_admin_reset_route(emulator, client, http):
    client.get("WhoAmI")
    assert http.post(f"{emulator.base_url}/_emulator/reset").status_code == 204
    assert emulator.requests == []


def test_admin_expire_tokens_route(emulator, client, http):
    http.post(f"{emulator.base_url}/_emulator/expire-tokens")
    assert client.get("WhoAmI").status_code == 401


def test_admin_unknown_route_404(emulator, http):
    assert http.get(f"{emulator.base_url}/_emulator/nothing").status_code == 404


def test_unknown_path_outside_api_404(emulator, http):
    response = http.get(f"{emulator.base_url}/favicon.ico")
    assert response.status_code == 404
    assert emulator.requests[-1].endpoint is None


def test_request_log_entry(emulator, client):
    client.get("WhoAmI")
    record = emulator.requests[-1]
    assert record.method == "GET"
    assert record.path == f"{WEB_API_PATH}/WhoAmI"
    assert record.status == 200
    assert record.endpoint == "whoami"
    assert record.query == ""
    assert record.time > 0


def test_request_log_line(emulator, client, caplog):
    caplog.set_level(logging.INFO, logger="airflow_provider_pad.emulator")
    client.get("WhoAmI")
    assert f"GET {WEB_API_PATH}/WhoAmI -> 200" in caplog.text


def test_count_unknown_endpoint(emulator):
    with pytest.raises(ValueError, match="Unknown endpoint name"):
        emulator.count("who_am_i")


def test_connection_json(emulator):
    connection = json.loads(emulator.connection_json())
    assert connection["conn_type"] == "dataverse"
    assert connection["host"] == emulator.base_url
    assert connection["login"] == emulator.client_id
    assert connection["password"] == emulator.client_secret
    assert connection["extra"] == {
        "tenant_id": emulator.tenant_id,
        "authority": f"{emulator.base_url}/{emulator.tenant_id}",
        "verify": emulator.ca_path,
    }


def test_lifecycle_not_started():
    emulator = DataverseEmulator()
    with pytest.raises(RuntimeError, match="not running"):
        emulator.base_url


def test_lifecycle_double_start():
    with DataverseEmulator() as emulator:
        with pytest.raises(RuntimeError, match="already running"):
            emulator.start()


def test_lifecycle_stop_removes_ca():
    with DataverseEmulator() as emulator:
        ca_path = emulator.ca_path
        assert os.path.exists(ca_path)
    assert not os.path.exists(ca_path)


def test_lifecycle_restart_new_port():
    emulator = DataverseEmulator()
    emulator.start()
    first_url = emulator.base_url
    emulator.stop()
    emulator.stop()
    emulator.start()
    try:
        token = request_token(emulator)
    finally:
        emulator.stop()
    assert token
    assert first_url.startswith("https://127.0.0.1:")


def test_lifecycle_port_in_use():
    with DataverseEmulator() as emulator:
        port = int(emulator.base_url.rsplit(":", 1)[1])
        with pytest.raises(OSError, match="cannot listen"):
            DataverseEmulator(port=port).start()


def test_custom_credentials():
    with DataverseEmulator(tenant_id="00000000-0000-0000-0000-00000000abcd", client_secret="s3cret") as emulator:
        assert emulator.authority.endswith("/00000000-0000-0000-0000-00000000abcd")
        assert request_token(emulator)
