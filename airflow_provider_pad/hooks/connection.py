"""Read and check the fields of a ``dataverse`` Airflow connection."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from airflow_provider_pad.exceptions import DesktopFlowConfigurationError

if TYPE_CHECKING:
    from airflow.sdk import Connection

log = logging.getLogger(__name__)

DEFAULT_API_VERSION = "v9.2"
DEFAULT_AUTHORITY_HOST = "https://login.microsoftonline.com"
FEDERATED_TOKEN_FILE_VARIABLE = "AZURE_FEDERATED_TOKEN_FILE"


class CredentialKind:
    """Kinds of credential a connection presents to the Microsoft identity platform."""

    CLIENT_SECRET = "client_secret"
    CERTIFICATE = "certificate"
    CERTIFICATE_PFX = "certificate_pfx"
    WORKLOAD_IDENTITY = "workload_identity"
    MANAGED_IDENTITY = "managed_identity"


@dataclass(frozen=True)
class Credential:
    """The credential of a connection; which fields are set depends on ``kind``.

    :param secret: the client secret, or the PFX passphrase for ``certificate_pfx``.
    :param certificate_pem: PEM text with the private key and, usually, its certificate (inline form).
    :param path: the PEM, PFX or federated token file.
    :param thumbprint: SHA-1 thumbprint of the certificate in hex; computed from the PEM when absent.
    :param send_certificate_chain: send the certificate in the assertion (subject name/issuer auth).
    :param managed_identity_client_id: client id of a user-assigned managed identity; None for
        the system-assigned one.
    """

    kind: str
    secret: str = field(default="", repr=False)
    certificate_pem: str = field(default="", repr=False)
    path: str = ""
    thumbprint: str = ""
    send_certificate_chain: bool = False
    managed_identity_client_id: str | None = None


@dataclass(frozen=True)
class DataverseConnectionConfig:
    """Everything the hook needs from a connection, checked and normalized.

    :param environment_url: the environment's origin, for example ``https://contoso.crm.dynamics.com``,
        with no path or trailing slash.
    :param verify: True for the system trust store, False to skip TLS verification, or a CA bundle path.
    """

    conn_id: str
    environment_url: str
    client_id: str
    credential: Credential
    tenant_id: str
    authority: str
    verify: bool | str = True
    api_version: str = DEFAULT_API_VERSION
    environment_id: str | None = None
    portal_url: str | None = None

    @property
    def api_root(self) -> str:
        """The Web API root with a trailing slash, for example ``https://x.crm.dynamics.com/api/data/v9.2/``."""
        return f"{self.environment_url}/api/data/{self.api_version}/"

    @property
    def scope(self) -> str:
        return f"{self.environment_url}/.default"

    @property
    def client_secret(self) -> str:
        return self.credential.secret if self.credential.kind == CredentialKind.CLIENT_SECRET else ""

    @classmethod
    def from_connection(cls, conn: Connection) -> DataverseConnectionConfig:
        """Build the configuration from an Airflow connection, raising on missing or invalid fields."""
        conn_id = conn.conn_id
        extra: dict[str, Any] = conn.extra_dejson or {}

        environment_url = normalize_environment_url(conn.host or "", conn_id)
        credential = parse_credential(conn, extra)
        client_id = (conn.login or "").strip()
        if not client_id and credential.kind != CredentialKind.MANAGED_IDENTITY:
            raise DesktopFlowConfigurationError(
                f"Connection '{conn_id}' has no Client ID (login): set it to the application (client) id "
                "of the app registration."
            )

        tenant_id = str(extra.get("tenant_id") or "").strip()
        authority = str(extra.get("authority") or "").strip().rstrip("/")
        if credential.kind == CredentialKind.MANAGED_IDENTITY:
            # A managed identity gets its tokens from the Azure host, so no authority is involved.
            tenant_id = tenant_id or "managed-identity"
            authority = authority or f"{DEFAULT_AUTHORITY_HOST}/{tenant_id}"
        if not tenant_id and not authority:
            raise DesktopFlowConfigurationError(
                f"Connection '{conn_id}' has no tenant_id extra: set it to the directory (tenant) id "
                "of the app registration."
            )
        if not authority:
            authority = f"{DEFAULT_AUTHORITY_HOST}/{tenant_id}"
        if urlsplit(authority).scheme != "https":
            raise DesktopFlowConfigurationError(
                f"Connection '{conn_id}' has authority {authority!r}: it must be an https:// URL."
            )

        return cls(
            conn_id=conn_id,
            environment_url=environment_url,
            client_id=client_id,
            credential=credential,
            tenant_id=tenant_id or urlsplit(authority).path.strip("/").split("/")[0],
            authority=authority,
            verify=parse_verify(extra.get("verify"), conn_id),
            api_version=str(extra.get("api_version") or DEFAULT_API_VERSION).strip(),
            environment_id=str(extra.get("environment_id") or "").strip() or None,
            portal_url=str(extra.get("portal_url") or "").strip().rstrip("/") or None,
        )


def _is_true(value: Any) -> bool:
    return value is True or str(value).strip().lower() in ("true", "1", "yes")


def parse_credential(conn: Connection, extra: dict[str, Any]) -> Credential:
    """Choose the credential kind from the fields that are set, and check its fields.

    The kinds, by the fields that select them (set fields of exactly one kind):

    - client secret: the password;
    - certificate: extra ``certificate_path`` (a PEM file) or ``certificate_private_key`` (inline PEM),
      with optional ``certificate_thumbprint`` and ``send_certificate_chain``;
    - PFX certificate: extra ``certificate_pfx_path``, with ``certificate_passphrase`` if encrypted;
    - workload identity federation: extra ``federated_token_file``, or ``workload_identity`` true to
      read the file named by ``AZURE_FEDERATED_TOKEN_FILE``;
    - managed identity: extra ``managed_identity`` true, or ``managed_identity_client_id`` for a
      user-assigned identity.
    """
    conn_id = conn.conn_id
    secret = conn.password or ""
    pem_path = str(extra.get("certificate_path") or "").strip()
    pem_inline = str(extra.get("certificate_private_key") or "").strip()
    pfx_path = str(extra.get("certificate_pfx_path") or "").strip()
    token_file = str(extra.get("federated_token_file") or "").strip()
    if not token_file and _is_true(extra.get("workload_identity")):
        token_file = os.environ.get(FEDERATED_TOKEN_FILE_VARIABLE, "").strip()
        if not token_file:
            raise DesktopFlowConfigurationError(
                f"Connection '{conn_id}' sets workload_identity, but {FEDERATED_TOKEN_FILE_VARIABLE} is not set: "
                "set federated_token_file, or run where the workload identity webhook sets the variable."
            )
    managed_client_id = str(extra.get("managed_identity_client_id") or "").strip() or None
    managed = _is_true(extra.get("managed_identity")) or managed_client_id is not None

    chosen = {
        "client secret (password)": bool(secret),
        "certificate (certificate_path or certificate_private_key)": bool(pem_path or pem_inline),
        "PFX certificate (certificate_pfx_path)": bool(pfx_path),
        "workload identity (federated_token_file or workload_identity)": bool(token_file),
        "managed identity (managed_identity or managed_identity_client_id)": managed,
    }
    selected = [name for name, present in chosen.items() if present]
    if len(selected) > 1:
        raise DesktopFlowConfigurationError(
            f"Connection '{conn_id}' sets several credentials: {', '.join(selected)}. Keep exactly one."
        )
    if not selected:
        raise DesktopFlowConfigurationError(
            f"Connection '{conn_id}' has no credential: set the Client secret (password), a certificate "
            "(certificate_path, certificate_private_key or certificate_pfx_path), workload identity "
            "(federated_token_file) or managed_identity in the extras."
        )

    if secret:
        return Credential(CredentialKind.CLIENT_SECRET, secret=secret)
    if pem_path or pem_inline:
        if pem_path and pem_inline:
            raise DesktopFlowConfigurationError(
                f"Connection '{conn_id}' sets both certificate_path and certificate_private_key; keep one."
            )
        if pem_path:
            _check_file(pem_path, "certificate_path", conn_id)
        return Credential(
            CredentialKind.CERTIFICATE,
            certificate_pem=pem_inline,
            path=pem_path,
            thumbprint=str(extra.get("certificate_thumbprint") or "").replace(":", "").strip(),
            send_certificate_chain=_is_true(extra.get("send_certificate_chain")),
        )
    if pfx_path:
        _check_file(pfx_path, "certificate_pfx_path", conn_id)
        return Credential(
            CredentialKind.CERTIFICATE_PFX,
            secret=str(extra.get("certificate_passphrase") or ""),
            path=pfx_path,
            send_certificate_chain=_is_true(extra.get("send_certificate_chain")),
        )
    if token_file:
        source = "federated_token_file" if extra.get("federated_token_file") else FEDERATED_TOKEN_FILE_VARIABLE
        _check_file(token_file, source, conn_id)
        return Credential(CredentialKind.WORKLOAD_IDENTITY, path=token_file)
    return Credential(CredentialKind.MANAGED_IDENTITY, managed_identity_client_id=managed_client_id)


def _check_file(path: str, name: str, conn_id: str) -> None:
    if not os.path.isfile(path):
        raise DesktopFlowConfigurationError(
            f"Connection '{conn_id}' has {name}={path!r}, which is not a readable file."
        )


def normalize_environment_url(host: str, conn_id: str) -> str:
    """Return the environment origin for a connection host, assuming https when no scheme is given."""
    host = host.strip()
    if not host:
        raise DesktopFlowConfigurationError(
            f"Connection '{conn_id}' has no Environment URL (host): set it to the environment's URL, "
            "for example https://contoso.crm.dynamics.com."
        )
    if "://" not in host:
        host = f"https://{host}"
    parts = urlsplit(host)
    if parts.scheme != "https":
        raise DesktopFlowConfigurationError(
            f"Connection '{conn_id}' has Environment URL {host!r}: only https:// is supported, "
            "because the access token must not travel in clear text."
        )
    if not parts.hostname:
        raise DesktopFlowConfigurationError(f"Connection '{conn_id}' has an invalid Environment URL {host!r}.")
    return f"https://{parts.netloc}"


def parse_verify(value: Any, conn_id: str) -> bool | str:
    """Interpret the ``verify`` extra: absent means True, ``false`` disables checks, else a CA bundle path."""
    if value is None or value == "" or value is True:
        return True
    if value is False or str(value).strip().lower() in ("false", "0", "no"):
        log.warning(
            "Connection '%s' disables TLS certificate verification (verify=false); use it only for testing.",
            conn_id,
        )
        return False
    if str(value).strip().lower() in ("true", "1", "yes"):
        return True
    path = str(value).strip()
    if not os.path.isfile(path):
        raise DesktopFlowConfigurationError(
            f"Connection '{conn_id}' has verify={path!r}, which is not a readable file: "
            "set it to the path of a PEM CA bundle, or remove it to use the system trust store."
        )
    return path
