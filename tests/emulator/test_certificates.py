"""Tests of the generated CA, server certificate and client certificates, without a server."""

from __future__ import annotations

import ipaddress
import ssl
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from airflow_provider_pad.emulator.certificates import (
    is_certificate_authority,
    load_certificate,
    make_certificate_authority,
    make_client_certificate,
    write_certificates,
)


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


@pytest.fixture(scope="module")
def client_certificate():
    return make_client_certificate("helper-test-app")


def test_client_certificate_sha1_thumbprint(client_certificate):
    expected = client_certificate.certificate.fingerprint(hashes.SHA1()).hex().upper()
    assert client_certificate.thumbprint_sha1_hex == expected


def test_client_certificate_pem_matches_key(client_certificate):
    key = serialization.load_pem_private_key(client_certificate.key_pem.encode("ascii"), password=None)
    certificate = x509.load_pem_x509_certificate(client_certificate.cert_pem.encode("ascii"))
    assert key.public_key().public_numbers() == certificate.public_key().public_numbers()


def test_client_certificate_pfx_passphrase(client_certificate):
    key, certificate, _ = pkcs12.load_key_and_certificates(client_certificate.pfx_bytes("secret"), b"secret")
    assert certificate == client_certificate.certificate
    assert key.public_key().public_numbers() == client_certificate.private_key.public_key().public_numbers()


def test_client_certificate_pfx_wrong_passphrase(client_certificate):
    with pytest.raises(ValueError):
        pkcs12.load_key_and_certificates(client_certificate.pfx_bytes("secret"), b"other")


def test_client_certificate_pfx_unencrypted(client_certificate):
    _, certificate, _ = pkcs12.load_key_and_certificates(client_certificate.pfx_bytes(None), None)
    assert certificate == client_certificate.certificate


def test_client_certificate_self_signed(client_certificate):
    client_certificate.certificate.verify_directly_issued_by(client_certificate.certificate)
    assert is_certificate_authority(client_certificate.certificate) is False


def test_client_certificate_issued_by_ca():
    authority = make_certificate_authority("helper-test-ca")
    issued = make_client_certificate("helper-test-issued", issuer=authority)
    issued.certificate.verify_directly_issued_by(authority.certificate)
    assert is_certificate_authority(authority.certificate) is True


def test_client_certificate_issuer_not_ca(client_certificate):
    with pytest.raises(ValueError, match="not a CA"):
        make_client_certificate("helper-test-issued", issuer=client_certificate)


@pytest.mark.parametrize("form", ["pem-bytes", "pem-text", "der-bytes", "path", "path-text"])
def test_load_certificate_forms(client_certificate, tmp_path, form):
    pem = client_certificate.cert_pem
    path = tmp_path / "certificate.pem"
    path.write_text(pem)
    sources = {
        "pem-bytes": pem.encode("ascii"),
        "pem-text": pem,
        "der-bytes": client_certificate.certificate.public_bytes(serialization.Encoding.DER),
        "path": path,
        "path-text": str(path),
    }
    assert load_certificate(sources[form]) == client_certificate.certificate


def test_load_certificate_invalid():
    with pytest.raises(ValueError, match="not an X.509 certificate"):
        load_certificate(b"not a certificate")
