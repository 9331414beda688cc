"""
Generate throwaway certificates: the CA and server certificate that the emulator serves HTTPS
with, and client certificates for an app's certificate credentials.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CERTIFICATE_VALIDITY_DAYS = 365
# Client assertions are signed with RS256 or PS256, so client certificates need RSA keys.
CLIENT_KEY_SIZE_BITS = 2048
RSA_PUBLIC_EXPONENT = 65537

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


@dataclass(frozen=True)
class ClientCertificate:
    """
    A certificate with its RSA private key, as an app registration's certificate credential uses.

    ``cert_pem`` and ``key_pem`` are PEM text (the key unencrypted, in PKCS #8), which is what
    MSAL's ``public_certificate`` and ``private_key`` take. ``thumbprint_sha1_hex`` is the SHA-1
    fingerprint of the DER certificate in upper-case hex, as the Azure portal shows it and MSAL's
    ``thumbprint`` takes it.
    """

    cert_pem: str
    key_pem: str
    thumbprint_sha1_hex: str
    thumbprint_sha256_hex: str
    certificate: x509.Certificate
    private_key: rsa.RSAPrivateKey

    def pfx_bytes(self, passphrase: str | bytes | None) -> bytes:
        """Return the key and certificate as a PKCS #12 (.pfx) file, encrypted with ``passphrase`` unless it is None."""
        if passphrase is None:
            encryption: serialization.KeySerializationEncryption = serialization.NoEncryption()
        else:
            secret = passphrase.encode("utf-8") if isinstance(passphrase, str) else passphrase
            encryption = serialization.BestAvailableEncryption(secret)
        common_names = self.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        friendly_name = str(common_names[0].value).encode("utf-8") if common_names else None
        return pkcs12.serialize_key_and_certificates(
            friendly_name, self.private_key, self.certificate, None, encryption
        )


def make_client_certificate(common_name: str, *, issuer: ClientCertificate | None = None) -> ClientCertificate:
    """
    Create an RSA client certificate for ``CN=<common_name>``, valid from an hour ago for a year.

    :param common_name: the subject's common name. Subject-name/issuer authentication matches it.
    :param issuer: the CA that signs the certificate, made by :func:`make_certificate_authority`.
        None makes a self-signed certificate, which is what an app registration usually holds.
    """
    return _make_certificate(common_name, issuer, certificate_authority=False)


def make_certificate_authority(common_name: str, *, issuer: ClientCertificate | None = None) -> ClientCertificate:
    """
    Create an RSA CA certificate for ``CN=<common_name>`` that can sign client certificates and other CAs.

    :param issuer: the CA that signs this one, which makes this one an intermediate CA. None
        makes a self-signed root CA.
    """
    return _make_certificate(common_name, issuer, certificate_authority=True)


def _make_certificate(
    common_name: str, issuer: ClientCertificate | None, *, certificate_authority: bool
) -> ClientCertificate:
    if issuer is not None and not is_certificate_authority(issuer.certificate):
        raise ValueError(
            f"The issuer {issuer.certificate.subject.rfc4514_string()} is not a CA certificate. "
            "Create one with make_certificate_authority()."
        )
    key = rsa.generate_private_key(public_exponent=RSA_PUBLIC_EXPONENT, key_size=CLIENT_KEY_SIZE_BITS)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        _validity(x509.CertificateBuilder())
        .subject_name(subject)
        .issuer_name(subject if issuer is None else issuer.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=certificate_authority, path_length=None), critical=True)
        .add_extension(_key_usage(certificate_signing=certificate_authority), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if not certificate_authority:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    if issuer is None:
        return _client_certificate(builder.sign(key, hashes.SHA256()), key)

    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.private_key.public_key()), critical=False
    )
    return _client_certificate(builder.sign(issuer.private_key, hashes.SHA256()), key)


def load_certificate(source: bytes | str | os.PathLike[str]) -> x509.Certificate:
    """
    Load one X.509 certificate from PEM or DER bytes, PEM text, or the path of a PEM or DER file.

    A ``str`` that starts with ``-----BEGIN`` is PEM text and any other ``str`` is a path. From
    PEM holding several certificates, the first is loaded. Raise ValueError for anything else.
    """
    if isinstance(source, str) and source.lstrip().startswith("-----BEGIN"):
        data = source.encode("ascii")
    elif isinstance(source, (str, os.PathLike)):
        data = Path(source).read_bytes()
    elif isinstance(source, bytes):
        data = source
    else:
        raise TypeError(f"A certificate must be bytes, PEM text or a path, got {type(source).__name__}.")

    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as error:
        raise ValueError(f"The data is not an X.509 certificate in PEM or DER: {error}") from None


def certificate_thumbprints(certificate: x509.Certificate) -> tuple[bytes, bytes]:
    """Return the SHA-1 and SHA-256 fingerprints of the DER certificate, which JWS headers call x5t and x5t#S256."""
    # SHA-1 only identifies a certificate here, as the identity platform's x5t header requires.
    return certificate.fingerprint(hashes.SHA1()), certificate.fingerprint(hashes.SHA256())  # noqa: S303


def is_certificate_authority(certificate: x509.Certificate) -> bool:
    """Return whether the certificate's basicConstraints extension marks it as a CA."""
    try:
        return bool(certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return builder.not_valid_before(now - CLOCK_SKEW_ALLOWANCE).not_valid_after(
        now + datetime.timedelta(days=CERTIFICATE_VALIDITY_DAYS)
    )


def _client_certificate(certificate: x509.Certificate, key: rsa.RSAPrivateKey) -> ClientCertificate:
    sha1, sha256 = certificate_thumbprints(certificate)
    return ClientCertificate(
        cert_pem=certificate.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        key_pem=key.private_bytes(
            encoding=serialization.Encoding.PEM,
            format=serialization.PrivateFormat.PKCS8,
            encryption_algorithm=serialization.NoEncryption(),
        ).decode("ascii"),
        thumbprint_sha1_hex=sha1.hex().upper(),
        thumbprint_sha256_hex=sha256.hex().upper(),
        certificate=certificate,
        private_key=key,
    )
