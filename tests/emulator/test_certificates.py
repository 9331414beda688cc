"""Tests of the generated CA and server certificate, without a server."""

from __future__ import annotations

import ipaddress
import ssl
import stat

import pytest
from cryptography import x509

from airflow_provider_pad.emulator.certificates import write_certificates


@pytest.fixture
def files(tmp_path):
    return write_certificates(tmp_path)


def load(path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_certificate_ca_is_authority(files):
    constraints = load(files.ca_path).extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca is True


def test_certificate_server_signed_by_ca(files):
    # Raises InvalidSignature or ValueError when the CA did not sign the server certificate.
    load(files.certificate_path).verify_directly_issued_by(load(files.ca_path))


def test_certificate_server_names(files):
    names = load(files.certificate_path).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in names.get_values_for_type(x509.IPAddress)
    assert "localhost" in names.get_values_for_type(x509.DNSName)


def test_certificate_key_private(files):
    assert stat.S_IMODE(files.private_key_path.stat().st_mode) == 0o600


def test_certificate_loads_into_ssl(files):
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(files.certificate_path, files.private_key_path)
    client_context = ssl.create_default_context(cafile=str(files.ca_path))
    assert client_context.cert_store_stats()["x509_ca"] == 1
