"""Every credential kind of the connection, with real MSAL against the emulator's identity platform."""

from __future__ import annotations

import json
import socket

import pytest

from airflow_provider_pad.emulator.certificates import make_certificate_authority, make_client_certificate
from airflow_provider_pad.exceptions import DataverseAuthenticationError
from airflow_provider_pad.hooks import credentials
from airflow_provider_pad.hooks.dataverse import DataverseHook


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Fail any connection to a host other than 127.0.0.1, such as the instance metadata address."""
    original = socket.socket.connect

    def connect(self, address):
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "localhost"):
            raise AssertionError(f"a test tried to connect to {address}")
        return original(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


def use_connection(dataverse, monkeypatch, *, password=None, login=None, **extra):
    connection = json.loads(dataverse.connection_json())
    connection["password"] = password
    connection["login"] = dataverse.client_id if login is None else login
    connection["extra"].update(extra)
    monkeypatch.setenv("AIRFLOW_CONN_DATAVERSE_DEFAULT", json.dumps(connection))
    credentials.clear_client_applications()


def token_kinds(dataverse) -> list[str]:
    return [record.detail for record in dataverse.requests if record.endpoint == "token" and record.status == 200]


def test_certificate_pem_file(dataverse, monkeypatch, tmp_path):
    certificate = make_client_certificate("airflow-pad-test")
    dataverse.register_client_certificate(certificate.cert_pem)
    pem = tmp_path / "app.pem"
    pem.write_text(certificate.key_pem + certificate.cert_pem)
    use_connection(dataverse, monkeypatch, certificate_path=str(pem))

    assert DataverseHook().test_connection()[0] is True
    assert token_kinds(dataverse) == ["certificate"]


def test_certificate_inline_with_thumbprint(dataverse, monkeypatch):
    certificate = make_client_certificate("airflow-pad-inline")
    dataverse.register_client_certificate(certificate.cert_pem)
    use_connection(
        dataverse, monkeypatch,
        certificate_private_key=certificate.key_pem,
        certificate_thumbprint=certificate.thumbprint_sha1_hex,
    )

    assert DataverseHook().test_connection()[0] is True


def test_certificate_chain_for_subject_name_auth(dataverse, monkeypatch, tmp_path):
    authority = make_certificate_authority("Airflow PAD test CA")
    certificate = make_client_certificate("airflow-pad-sni", issuer=authority)
    dataverse.register_trusted_issuer(authority.cert_pem, subject="airflow-pad-sni")
    pem = tmp_path / "app.pem"
    pem.write_text(certificate.key_pem + certificate.cert_pem + authority.cert_pem)
    use_connection(dataverse, monkeypatch, certificate_path=str(pem), send_certificate_chain=True)

    assert DataverseHook().test_connection()[0] is True


def test_certificate_pfx_with_passphrase(dataverse, monkeypatch, tmp_path):
    certificate = make_client_certificate("airflow-pad-pfx")
    dataverse.register_client_certificate(certificate.cert_pem)
    pfx = tmp_path / "app.pfx"
    pfx.write_bytes(certificate.pfx_bytes("pfx-passphrase"))
    use_connection(dataverse, monkeypatch, certificate_pfx_path=str(pfx), certificate_passphrase="pfx-passphrase")

    assert DataverseHook().test_connection()[0] is True


def test_unregistered_certificate_rejected(dataverse, monkeypatch, tmp_path):
    certificate = make_client_certificate("airflow-pad-unknown")
    pem = tmp_path / "app.pem"
    pem.write_text(certificate.key_pem + certificate.cert_pem)
    use_connection(dataverse, monkeypatch, certificate_path=str(pem))

    ok, message = DataverseHook().test_connection()

    assert ok is False
    assert "AADSTS" in message
    assert "PRIVATE KEY" not in message


def test_workload_identity_rereads_rotated_file(dataverse, monkeypatch, tmp_path):
    dataverse.register_federated_credential(dataverse.federation_issuer, "system:serviceaccount:airflow:worker")
    token_file = tmp_path / "azure-identity-token"
    token_file.write_text(dataverse.issue_federated_token("system:serviceaccount:airflow:worker"))
    monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(token_file))
    use_connection(dataverse, monkeypatch, workload_identity=True)
    hook = DataverseHook()
    hook.list_desktop_flows()

    token_file.write_text(dataverse.issue_federated_token("system:serviceaccount:airflow:worker"))
    dataverse.expire_tokens()
    hook.list_desktop_flows()

    assert token_kinds(dataverse) == ["federated", "federated"]


def test_workload_identity_wrong_subject(dataverse, monkeypatch, tmp_path):
    dataverse.register_federated_credential(dataverse.federation_issuer, "system:serviceaccount:airflow:worker")
    token_file = tmp_path / "token"
    token_file.write_text(dataverse.issue_federated_token("system:serviceaccount:other:intruder"))
    use_connection(dataverse, monkeypatch, federated_token_file=str(token_file))

    with pytest.raises(DataverseAuthenticationError, match="AADSTS"):
        DataverseHook().list_desktop_flows()


@pytest.mark.parametrize("user_assigned", [False, True], ids=["system-assigned", "user-assigned"])
def test_managed_identity(dataverse, monkeypatch, user_assigned):
    identity = dataverse.register_managed_identity(
        client_id="22222222-2222-2222-2222-222222222222" if user_assigned else None
    )
    monkeypatch.setenv("IDENTITY_ENDPOINT", dataverse.managed_identity_endpoint)
    monkeypatch.setenv("IDENTITY_HEADER", dataverse.managed_identity_header)
    extra = {"managed_identity_client_id": identity.client_id} if user_assigned else {"managed_identity": True}
    use_connection(dataverse, monkeypatch, login="", **extra)

    ok, message = DataverseHook().test_connection()

    assert ok is True, message
    assert token_kinds(dataverse) == []
    assert dataverse.count("managed_identity", status=200) == 1


def test_managed_identity_wrong_header(dataverse, monkeypatch):
    dataverse.register_managed_identity()
    monkeypatch.setenv("IDENTITY_ENDPOINT", dataverse.managed_identity_endpoint)
    monkeypatch.setenv("IDENTITY_HEADER", "not-the-header")
    use_connection(dataverse, monkeypatch, login="", managed_identity=True)

    assert DataverseHook().test_connection()[0] is False


def test_wrong_pfx_passphrase_is_not_transient(dataverse, monkeypatch, tmp_path):
    certificate = make_client_certificate("airflow-pad-pfx-wrong")
    dataverse.register_client_certificate(certificate.cert_pem)
    pfx = tmp_path / "app.pfx"
    pfx.write_bytes(certificate.pfx_bytes("right-passphrase"))
    use_connection(dataverse, monkeypatch, certificate_pfx_path=str(pfx), certificate_passphrase="wrong-passphrase")

    with pytest.raises(DataverseAuthenticationError) as caught:
        DataverseHook().list_desktop_flows()

    assert caught.value.is_transient is False
    assert "could not use the credential" in str(caught.value)
    assert "wrong-passphrase" not in str(caught.value)
