"""Reading a ``dataverse`` connection: URL rules, credential kinds and their errors."""

from __future__ import annotations

import json

import pytest
from airflow.sdk import Connection

from airflow_provider_pad.exceptions import DesktopFlowConfigurationError
from airflow_provider_pad.hooks.connection import CredentialKind, DataverseConnectionConfig

TENANT = {"tenant_id": "00000000-0000-0000-0000-0000000000aa"}


def make_config(host="https://contoso.crm.dynamics.com", login="client-id", password=None, **extra):
    connection = Connection(conn_id="dv", conn_type="dataverse", host=host, login=login, password=password,
                            extra=json.dumps({**TENANT, **extra}))
    return DataverseConnectionConfig.from_connection(connection)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("contoso.crm.dynamics.com", "https://contoso.crm.dynamics.com"),
        ("https://contoso.crm.dynamics.com/", "https://contoso.crm.dynamics.com"),
        ("https://contoso.crm.dynamics.com/main.aspx?app=1", "https://contoso.crm.dynamics.com"),
    ],
)
def test_environment_url_normalized(host, expected):
    assert make_config(host=host, password="s").environment_url == expected


def test_plain_http_rejected():
    with pytest.raises(DesktopFlowConfigurationError, match="only https"):
        make_config(host="http://contoso.crm.dynamics.com", password="s")


def test_secret_kind_and_default_authority():
    config = make_config(password="s")

    assert config.credential.kind == CredentialKind.CLIENT_SECRET
    assert config.authority == "https://login.microsoftonline.com/00000000-0000-0000-0000-0000000000aa"


def test_secret_not_in_repr():
    assert "very-secret" not in repr(make_config(password="very-secret"))


def test_certificate_path_kind(tmp_path):
    pem = tmp_path / "app.pem"
    pem.write_text("-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----\n")

    config = make_config(certificate_path=str(pem), send_certificate_chain="true")

    assert config.credential.kind == CredentialKind.CERTIFICATE
    assert config.credential.send_certificate_chain is True


def test_missing_certificate_file_rejected():
    with pytest.raises(DesktopFlowConfigurationError, match="not a readable file"):
        make_config(certificate_path="/nonexistent/app.pem")


def test_workload_identity_from_environment(tmp_path, monkeypatch):
    token_file = tmp_path / "token"
    token_file.write_text("jwt")
    monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(token_file))

    config = make_config(workload_identity=True)

    assert config.credential.kind == CredentialKind.WORKLOAD_IDENTITY
    assert config.credential.path == str(token_file)


def test_workload_identity_without_variable(monkeypatch):
    monkeypatch.delenv("AZURE_FEDERATED_TOKEN_FILE", raising=False)

    with pytest.raises(DesktopFlowConfigurationError, match="AZURE_FEDERATED_TOKEN_FILE is not set"):
        make_config(workload_identity=True)


def test_managed_identity_needs_no_client_id():
    config = make_config(login=None, managed_identity_client_id="11111111-1111-1111-1111-111111111111")

    assert config.credential.kind == CredentialKind.MANAGED_IDENTITY
    assert config.credential.managed_identity_client_id == "11111111-1111-1111-1111-111111111111"


def test_two_credentials_rejected():
    with pytest.raises(DesktopFlowConfigurationError, match="several credentials"):
        make_config(password="s", managed_identity=True)


def test_no_credential_rejected():
    with pytest.raises(DesktopFlowConfigurationError, match="has no credential"):
        make_config()


def test_missing_tenant_rejected():
    connection = Connection(conn_id="dv", conn_type="dataverse", host="contoso.crm.dynamics.com", login="c", password="s")

    with pytest.raises(DesktopFlowConfigurationError, match="no tenant_id"):
        DataverseConnectionConfig.from_connection(connection)


def test_verify_path_must_exist():
    with pytest.raises(DesktopFlowConfigurationError, match="not a readable file"):
        make_config(password="s", verify="/nonexistent/ca.pem")
