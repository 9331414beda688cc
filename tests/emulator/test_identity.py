"""Tests of the emulated identity platform: OpenID discovery and the token endpoint, with real MSAL."""

from __future__ import annotations

import msal
import pytest
import requests

from tests.emulator.webapi import post_token_form

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@pytest.fixture
def msal_without_ca_bundle(monkeypatch):
    # MSAL passes ``verify`` to its own requests session, and requests lets REQUESTS_CA_BUNDLE and
    # CURL_CA_BUNDLE override a session's ``verify``. Unset them so that the emulator's CA counts.
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)


def confidential_client(emulator, secret=None, **kwargs):
    return msal.ConfidentialClientApplication(
        emulator.client_id,
        client_credential=secret or emulator.client_secret,
        authority=emulator.authority,
        instance_discovery=False,
        **kwargs,
    )


def test_openid_configuration_endpoints(emulator, http):
    configuration = http.get(f"{emulator.authority}/v2.0/.well-known/openid-configuration").json()
    assert configuration["token_endpoint"] == f"{emulator.authority}/oauth2/v2.0/token"
    assert configuration["authorization_endpoint"] == f"{emulator.authority}/oauth2/v2.0/authorize"
    assert configuration["issuer"] == f"{emulator.authority}/v2.0"
    assert configuration["jwks_uri"].startswith(emulator.authority)


def test_openid_unknown_tenant(emulator, http):
    response = http.get(f"{emulator.base_url}/other-tenant/v2.0/.well-known/openid-configuration")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_tenant"


def test_msal_token_success(emulator, msal_without_ca_bundle):
    result = confidential_client(emulator, verify=emulator.ca_path).acquire_token_for_client(
        [f"{emulator.base_url}/.default"]
    )
    assert result.get("token_type") == "Bearer"
    assert result.get("access_token")
    assert emulator.count("openid", status=200) == 1
    assert emulator.count("token", status=200) == 1


def test_msal_token_custom_session(emulator):
    # A session that ignores the environment keeps the emulator's CA even with REQUESTS_CA_BUNDLE set.
    with requests.Session() as session:
        session.trust_env = False
        session.verify = emulator.ca_path
        result = confidential_client(emulator, http_client=session).acquire_token_for_client(
            [f"{emulator.base_url}/.default"]
        )
    assert result.get("access_token")


def test_msal_token_cached(emulator, msal_without_ca_bundle):
    application = confidential_client(emulator, verify=emulator.ca_path)
    first = application.acquire_token_for_client([f"{emulator.base_url}/.default"])
    second = application.acquire_token_for_client([f"{emulator.base_url}/.default"])
    assert second["access_token"] == first["access_token"]
    assert emulator.count("token") == 1


def test_msal_wrong_secret(emulator, msal_without_ca_bundle):
    result = confidential_client(emulator, secret="wrong", verify=emulator.ca_path).acquire_token_for_client(
        [f"{emulator.base_url}/.default"]
    )
    assert result.get("error") == "invalid_client"
    assert result.get("error_description", "").startswith("AADSTS7000215: Invalid client secret provided.")
    assert 7000215 in result.get("error_codes", [])


def test_token_response_fields(emulator):
    payload = post_token_form(emulator).json()
    assert payload["token_type"] == "Bearer"
    assert payload["expires_in"] == 3600
    assert payload["ext_expires_in"] == 3600
    assert len(payload["access_token"]) >= 40


def test_token_wrong_secret_status(emulator):
    response = post_token_form(emulator, client_secret="wrong")
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


@pytest.mark.parametrize(
    ("overrides", "status", "error", "aadsts"),
    [
        ({"client_id": "11111111-1111-1111-1111-111111111111"}, 400, "unauthorized_client", 700016),
        ({"tenant": "22222222-2222-2222-2222-222222222222"}, 400, "invalid_request", 90002),
        ({"scope": "https://example.crm.dynamics.com/.default"}, 400, "invalid_scope", 70011),
        ({"scope": None}, 400, "invalid_request", 900144),
        ({"grant_type": None}, 400, "invalid_request", 900144),
        ({"grant_type": "password"}, 400, "unsupported_grant_type", 70003),
        ({"client_secret": None}, 401, "invalid_client", 7000218),
        ({"client_secret": None, "client_assertion": "eyJ.x.y"}, 400, "invalid_request", 900144),
        (
            {"client_secret": None, "client_assertion": "eyJ.x.y", "client_assertion_type": JWT_BEARER},
            400,
            "invalid_request",
            50027,
        ),
        ({"client_assertion": "eyJ.x.y", "client_assertion_type": JWT_BEARER}, 400, "invalid_request", 90014),
    ],
    ids=[
        "client-id",
        "tenant",
        "scope",
        "no-scope",
        "no-grant",
        "password-grant",
        "no-secret",
        "assertion-without-type",
        "malformed-assertion",
        "secret-and-assertion",
    ],
)
def test_token_rejected(emulator, overrides, status, error, aadsts):
    response = post_token_form(emulator, **overrides)
    payload = response.json()
    assert response.status_code == status
    assert payload["error"] == error
    assert payload["error_codes"] == [aadsts]
    assert payload["error_description"].startswith(f"AADSTS{aadsts}: ")


def test_token_error_fields(emulator):
    with requests.Session() as session:
        session.trust_env = False
        response = session.post(
            f"{emulator.authority}/oauth2/v2.0/token",
            data={"grant_type": "client_credentials", "client_id": emulator.client_id, "client_secret": "wrong"},
            headers={"client-request-id": "0f0e0d0c-0000-0000-0000-000000000001"},
            verify=emulator.ca_path,
        )
    payload = response.json()
    assert payload["correlation_id"] == "0f0e0d0c-0000-0000-0000-000000000001"
    assert payload["trace_id"]
    assert payload["timestamp"].endswith("Z")


def test_token_secret_never_logged(emulator, caplog):
    caplog.set_level("DEBUG", logger="airflow_provider_pad.emulator")
    token = post_token_form(emulator).json()["access_token"]
    assert emulator.client_secret not in caplog.text
    assert token not in caplog.text
