"""Access tokens for Dataverse from the Microsoft identity platform, through MSAL.

One MSAL application exists per credential in a process, so every hook and trigger that uses the
same connection shares MSAL's token cache and a token is requested again only near its expiry.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from airflow_provider_pad.exceptions import DataverseAuthenticationError, DesktopFlowConfigurationError
from airflow_provider_pad.hooks.connection import Credential, CredentialKind

if TYPE_CHECKING:
    import msal

    from airflow_provider_pad.hooks.connection import DataverseConnectionConfig

log = logging.getLogger(__name__)

# Authority hosts whose instances MSAL can validate through Microsoft's instance discovery.
# Any other host (a private or local identity platform) is used as given.
MICROSOFT_AUTHORITY_HOSTS = frozenset(
    {"login.microsoftonline.com", "login.microsoftonline.us", "login.chinacloudapi.cn", "login.microsoft.com"}
)
IDENTITY_TIMEOUT_SECONDS = 30
_PRIVATE_KEY_PATTERN = re.compile(r"-----BEGIN (?:[A-Z ]+ )?PRIVATE KEY-----.+?-----END (?:[A-Z ]+ )?PRIVATE KEY-----", re.S)
_CERTIFICATE_PATTERN = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
# A token is replaced this long before it expires; MSAL's own cache uses the same 5-minute margin.
TOKEN_REFRESH_MARGIN_SECONDS = 300

_applications: dict[tuple[str, ...], Any] = {}
_application_locks: dict[tuple[str, ...], threading.Lock] = {}
_registry_lock = threading.Lock()
_fresh_tokens: dict[tuple[str, ...], _CachedToken] = {}
_token_flights: dict[tuple[int, tuple[str, ...]], asyncio.Task] = {}


def _credential_key(config: DataverseConnectionConfig) -> tuple[str, ...]:
    # Secrets enter the key only as a digest, so the registry keeps no second clear copy of them.
    credential = config.credential
    material = "\0".join([credential.secret, credential.certificate_pem, credential.path, credential.thumbprint])
    return (
        credential.kind,
        config.authority.lower(),
        config.client_id,
        credential.managed_identity_client_id or "",
        str(credential.send_certificate_chain),
        hashlib.sha256(material.encode("utf-8")).hexdigest(),
        str(config.verify),
    )


def get_client_application(config: DataverseConnectionConfig) -> tuple[Any, threading.Lock]:
    """Return the process-wide MSAL client for the connection's credential, creating it once.

    The client is an ``msal.ConfidentialClientApplication``, or an ``msal.ManagedIdentityClient``
    for a managed identity.
    """
    key = _credential_key(config)
    with _registry_lock:
        application = _applications.get(key)
        if application is None:
            application = _create_client(config)
            _applications[key] = application
            _application_locks[key] = threading.Lock()
        return application, _application_locks[key]


def _create_client(config: DataverseConnectionConfig) -> Any:
    import msal

    credential = config.credential
    http_client = _identity_session(config.verify)
    if credential.kind == CredentialKind.MANAGED_IDENTITY:
        identity = (
            msal.UserAssignedManagedIdentity(client_id=credential.managed_identity_client_id)
            if credential.managed_identity_client_id
            else msal.SystemAssignedManagedIdentity()
        )
        return msal.ManagedIdentityClient(identity, http_client=http_client)

    authority_host = (urlsplit(config.authority).hostname or "").lower()
    return msal.ConfidentialClientApplication(
        config.client_id,
        client_credential=_client_credential(credential),
        authority=config.authority,
        http_client=http_client,
        instance_discovery=authority_host in MICROSOFT_AUTHORITY_HOSTS,
    )


def _client_credential(credential: Credential) -> str | dict[str, Any]:
    """Return MSAL's ``client_credential`` for a secret, a certificate or a federated token file."""
    if credential.kind == CredentialKind.CLIENT_SECRET:
        return credential.secret
    if credential.kind == CredentialKind.CERTIFICATE_PFX:
        pfx: dict[str, Any] = {"private_key_pfx_path": credential.path}
        if credential.secret:
            pfx["passphrase"] = credential.secret
        if credential.send_certificate_chain:
            pfx["public_certificate"] = True
        return pfx
    if credential.kind == CredentialKind.WORKLOAD_IDENTITY:
        path = credential.path

        def read_assertion() -> str:
            # Read on every token request: the workload identity webhook rotates the file.
            with open(path, encoding="utf-8") as token_file:
                return token_file.read().strip()

        return {"client_assertion": read_assertion}
    return _certificate_credential(credential)


def _certificate_credential(credential: Credential) -> dict[str, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    pem = credential.certificate_pem
    if credential.path:
        with open(credential.path, encoding="utf-8") as pem_file:
            pem = pem_file.read()
    key_blocks = _PRIVATE_KEY_PATTERN.findall(pem)
    certificate_blocks = _CERTIFICATE_PATTERN.findall(pem)
    if not key_blocks:
        raise DesktopFlowConfigurationError("The certificate PEM contains no private key (-----BEGIN ... PRIVATE KEY-----).")

    thumbprint = credential.thumbprint
    if not thumbprint:
        if not certificate_blocks:
            raise DesktopFlowConfigurationError(
                "The certificate PEM contains no certificate to compute the thumbprint from: add the certificate "
                "to the PEM or set certificate_thumbprint."
            )
        certificate = x509.load_pem_x509_certificate(certificate_blocks[0].encode("ascii"))
        thumbprint = certificate.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303 - the identity platform's x5t is SHA-1.

    result: dict[str, Any] = {"private_key": key_blocks[0], "thumbprint": thumbprint}
    if credential.send_certificate_chain:
        if not certificate_blocks:
            raise DesktopFlowConfigurationError("send_certificate_chain is set, but the certificate PEM contains no certificate.")
        result["public_certificate"] = "\n".join(certificate_blocks)
    return result


def _identity_session(verify: bool | str):
    """Return the ``requests`` session MSAL sends its requests through.

    ``requests`` lets ``REQUESTS_CA_BUNDLE`` and ``CURL_CA_BUNDLE`` override a session's ``verify``
    setting, so the connection's CA bundle is passed with every request, where it wins.
    """
    import requests

    class IdentitySession(requests.Session):
        def request(self, method, url, **kwargs):
            kwargs.setdefault("verify", verify)
            kwargs.setdefault("timeout", IDENTITY_TIMEOUT_SECONDS)
            return super().request(method, url, **kwargs)

    return IdentitySession()


@dataclass(frozen=True)
class _CachedToken:
    token: str
    refresh_at: float


def acquire_token(config: DataverseConnectionConfig, *, rejected_token: str | None = None) -> str:
    """Return an access token for the environment, from MSAL's cache when it contains a valid one.

    This call blocks (MSAL uses ``requests``), so asynchronous code uses :func:`aacquire_token`.
    Concurrent callers with the same credential wait on one lock, so they cause one token request.

    :param rejected_token: a token Dataverse just rejected with HTTP 401. If the cache still holds it, it
        is dropped and a new one requested; if another caller already replaced it, the newer token
        is returned without a request.
    """
    key = _credential_key(config)
    managed = config.credential.kind == CredentialKind.MANAGED_IDENTITY
    source = "the managed identity endpoint" if managed else f"the identity platform at {config.authority}"
    try:
        # MSAL reads the authority's OpenID configuration when the application is created.
        application, lock = get_client_application(config)
        with lock:
            cached = _fresh_tokens.get(key)
            if rejected_token is not None and (cached is None or cached.token == rejected_token):
                _fresh_tokens.pop(key, None)
                if managed:
                    # ManagedIdentityClient has no call to forget a token, so it is replaced.
                    with _registry_lock:
                        application = _applications[key] = _create_client(config)
                else:
                    application.remove_tokens_for_client()
            if managed:
                result = application.acquire_token_for_client(resource=config.environment_url)
            else:
                result = application.acquire_token_for_client([config.scope])
    except DesktopFlowConfigurationError:
        raise
    except Exception as error:  # MSAL raises requests' errors for the network, ValueError for bad keys.
        import requests

        unreachable = isinstance(error, (requests.RequestException, OSError))
        problem = "could not be reached" if unreachable else "could not use the credential"
        raise DataverseAuthenticationError(
            f"{source} {problem}: {type(error).__name__}: {error}",
            status_code=None,
            request=f"token request for {_identity_name(config)}",
            transient=unreachable,
        ) from None

    token = (result or {}).get("access_token")
    if not token:
        description = (result or {}).get("error_description") or "no error description"
        raise DataverseAuthenticationError(
            f"{source} rejected the token request for {_identity_name(config)}: "
            f"{(result or {}).get('error', 'unknown_error')}: {description.splitlines()[0]}",
            status_code=None,
            request=f"token request to {source}",
            transient=False,
        )

    if result.get("token_source") == "identity_provider":
        log.info("Acquired a new access token for %s from %s.", _identity_name(config), source)
    expires_in = float(result.get("expires_in") or 0)
    _fresh_tokens[key] = _CachedToken(token, time.time() + expires_in - TOKEN_REFRESH_MARGIN_SECONDS)
    return token


def _identity_name(config: DataverseConnectionConfig) -> str:
    credential = config.credential
    if credential.kind == CredentialKind.MANAGED_IDENTITY:
        client_id = credential.managed_identity_client_id
        return f"managed identity {client_id}" if client_id else "the system-assigned managed identity"
    return f"client {config.client_id}"


async def aacquire_token(config: DataverseConnectionConfig, *, rejected_token: str | None = None) -> str:
    """Return an access token without blocking the event loop.

    A token that is still fresh comes from memory without a thread hop. Otherwise one coroutine per
    credential and event loop runs :func:`acquire_token` in a thread while the others wait for its
    result, so a thousand triggers starting together cause one token request.
    """
    key = _credential_key(config)
    cached = _fresh_tokens.get(key)
    if cached is not None and cached.token != rejected_token and time.time() < cached.refresh_at:
        return cached.token

    loop = asyncio.get_running_loop()
    flight_key = (id(loop), key)
    pending = _token_flights.get(flight_key)
    if pending is None:
        pending = loop.create_task(asyncio.to_thread(acquire_token, config, rejected_token=rejected_token))
        _token_flights[flight_key] = pending
        pending.add_done_callback(lambda _: _token_flights.pop(flight_key, None))
    # shield: one waiter being cancelled must not cancel the request the others wait for.
    return await asyncio.shield(pending)


def clear_client_applications() -> None:
    """Forget every cached MSAL application and its tokens (for tests)."""
    with _registry_lock:
        _applications.clear()
        _application_locks.clear()
        _fresh_tokens.clear()
