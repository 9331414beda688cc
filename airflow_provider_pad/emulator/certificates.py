"""Generate the throwaway certificate authority and server certificate that the emulator serves HTTPS with."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CERTIFICATE_VALIDITY_DAYS = 365

# Backdating the start of validity tolerates a client clock that runs a little behind.
CLOCK_SKEW_ALLOWANCE = datetime.timedelta(hours=1)

DEFAULT_SERVER_NAMES = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class CertificateFiles:
    """Paths of the PEM files written by :func:`write_certificates`."""

    ca_path: Path
    certificate_path: Path
    private_key_path: Path


def write_certificates(directory: Path, server_names: tuple[str, ...] = DEFAULT_SERVER_NAMES) -> CertificateFiles:
    """
    Create a CA and a server certificate signed by it, and write both as PEM files into ``directory``.

    :param directory: an existing directory that only the current user can read, because the
        server's private key is written there unencrypted.
    :param server_names: IP addresses and DNS names for the server certificate's
        subjectAltName. Each entry that parses as an IP address becomes an IP entry.
    """
    now = datetime.datetime.now(datetime.timezone.utc)
    not_before = now - CLOCK_SKEW_ALLOWANCE
    not_after = now + datetime.timedelta(days=CERTIFICATE_VALIDITY_DAYS)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Dataverse emulator test CA")])
    ca_certificate = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(certificate_signing=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    server_key = ec.generate_private_key(ec.SECP256R1())
    server_certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, server_names[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(certificate_signing=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(_subject_alternative_names(server_names)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    files = CertificateFiles(
        ca_path=directory / "ca.pem",
        certificate_path=directory / "server.pem",
        private_key_path=directory / "server-key.pem",
    )
    files.ca_path.write_bytes(ca_certificate.public_bytes(serialization.Encoding.PEM))
    files.certificate_path.write_bytes(server_certificate.public_bytes(serialization.Encoding.PEM))
    files.private_key_path.write_bytes(
        server_key.private_bytes(
            encoding=serialization.Encoding.PEM,
            format=serialization.PrivateFormat.PKCS8,
            encryption_algorithm=serialization.NoEncryption(),
        )
    )
    files.private_key_path.chmod(0o600)
    return files


def _key_usage(*, certificate_signing: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=certificate_signing,
        crl_sign=certificate_signing,
        encipher_only=False,
        decipher_only=False,
    )


def _subject_alternative_names(server_names: tuple[str, ...]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for server_name in server_names:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(server_name)))
        except ValueError:
            names.append(x509.DNSName(server_name))
    return names
