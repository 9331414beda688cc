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
    client_secret: str = field(repr=False)
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

    @classmethod
    def from_connection(cls, conn: Connection) -> DataverseConnectionConfig:
        """Build the configuration from an Airflow connection, raising on missing or invalid fields."""
        conn_id = conn.conn_id
        extra: dict[str, Any] = conn.extra_dejson or {}

        environment_url = normalize_environment_url(conn.host or "", conn_id)
        client_id = (conn.login or "").strip()
        if not client_id:
            raise DesktopFlowConfigurationError(
                f"Connection '{conn_id}' has no Client ID (login): set it to the application (client) id "
                "of the app registration."
            )
        client_secret = conn.password or ""
        if not client_secret:
            raise DesktopFlowConfigurationError(
                f"Connection '{conn_id}' has no Client secret (password): set it to a secret of the app registration."
            )

        tenant_id = str(extra.get("tenant_id") or "").strip()
        authority = str(extra.get("authority") or "").strip().rstrip("/")
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
            client_secret=client_secret,
            tenant_id=tenant_id or urlsplit(authority).path.strip("/").split("/")[0],
            authority=authority,
            verify=parse_verify(extra.get("verify"), conn_id),
            api_version=str(extra.get("api_version") or DEFAULT_API_VERSION).strip(),
            environment_id=str(extra.get("environment_id") or "").strip() or None,
            portal_url=str(extra.get("portal_url") or "").strip().rstrip("/") or None,
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
