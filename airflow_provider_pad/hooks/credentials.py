"""Access tokens for Dataverse from the Microsoft identity platform, through MSAL.

One MSAL application exists per credential in a process, so every hook and trigger that uses the
same connection shares MSAL's token cache and a token is requested again only near its expiry.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from airflow_provider_pad.exceptions import DataverseAuthenticationError

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
# A token is replaced this long before it expires; MSAL's own cache uses the same 5-minute margin.
TOKEN_REFRESH_MARGIN_SECONDS = 300

_applications: dict[tuple[str, ...], msal.ConfidentialClientApplication] = {}
_application_locks: dict[tuple[str, ...], threading.Lock] = {}
_registry_lock = threading.Lock()
_fresh_tokens: dict[tuple[str, ...], _CachedToken] = {}
_token_flights: dict[tuple[int, tuple[str, ...]], asyncio.Task] = {}


def _credential_key(config: DataverseConnectionConfig) -> tuple[str, ...]:
    # The secret enters the key only as a digest, so the registry keeps no second clear copy of it.
    secret_digest = hashlib.sha256(config.client_secret.encode("utf-8")).hexdigest()
    return (config.authority.lower(), config.client_id, secret_digest, str(config.verify))


def get_client_application(config: DataverseConnectionConfig) -> tuple[msal.ConfidentialClientApplication, threading.Lock]:
    """Return the process-wide MSAL application for the connection's credential, creating it once."""
    key = _credential_key(config)
    with _registry_lock:
        application = _applications.get(key)
        if application is None:
            import msal

            authority_host = (urlsplit(config.authority).hostname or "").lower()
            application = msal.ConfidentialClientApplication(
                config.client_id,
                client_credential=config.client_secret,
                authority=config.authority,
                http_client=_identity_session(config.verify),
                instance_discovery=authority_host in MICROSOFT_AUTHORITY_HOSTS,
            )
            _applications[key] = application
            _application_locks[key] = threading.Lock()
        return application, _application_locks[key]


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
    """Return an access token for the environment, from MSAL's cache when it holds a valid one.

    This call blocks (MSAL uses ``requests``), so asynchronous code uses :func:`aacquire_token`.
    Concurrent callers with the same credential wait on one lock, so they cause one token request.

    :param rejected_token: a token Dataverse just answered 401 to. If the cache still holds it, it
        is dropped and a new one requested; if another caller already replaced it, the newer token
        is returned without a request.
    """
    key = _credential_key(config)
    try:
        # MSAL reads the authority's OpenID configuration when the application is created.
        application, lock = get_client_application(config)
        with lock:
            cached = _fresh_tokens.get(key)
            if rejected_token is not None and (cached is None or cached.token == rejected_token):
                application.remove_tokens_for_client()
                _fresh_tokens.pop(key, None)
            result = application.acquire_token_for_client([config.scope])
    except Exception as error:  # MSAL raises requests' errors and ValueError for network and discovery failures.
        raise DataverseAuthenticationError(
            f"the identity platform at {config.authority} could not be reached: {type(error).__name__}: {error}",
            status_code=None,
            request=f"token request for client {config.client_id}",
            transient=True,
        ) from None

    token = (result or {}).get("access_token")
    if not token:
        description = (result or {}).get("error_description") or "no error description"
        raise DataverseAuthenticationError(
            f"the identity platform rejected the token request for client {config.client_id}: "
            f"{(result or {}).get('error', 'unknown_error')}: {description.splitlines()[0]}",
            status_code=None,
            request=f"token request to {config.authority}",
            transient=False,
        )

    if result.get("token_source") == "identity_provider":
        log.info("Acquired a new access token for client %s from %s.", config.client_id, config.authority)
    expires_in = float(result.get("expires_in") or 0)
    _fresh_tokens[key] = _CachedToken(token, time.time() + expires_in - TOKEN_REFRESH_MARGIN_SECONDS)
    return token


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
