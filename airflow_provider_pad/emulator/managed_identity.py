"""
The emulated managed identity endpoint of Azure App Service (``IDENTITY_ENDPOINT``, API version 2019-08-01).

MSAL's ``ManagedIdentityClient`` calls it when the ``IDENTITY_ENDPOINT`` and ``IDENTITY_HEADER``
environment variables are set: ``GET <endpoint>?api-version=2019-08-01&resource=<resource>``
with the header ``X-IDENTITY-HEADER: <IDENTITY_HEADER>``, plus ``client_id``, ``mi_res_id`` or
``object_id`` for a user-assigned identity. The tokens it issues go into the same store as
those of the token endpoint, so the Web API accepts them alike.
"""

from __future__ import annotations

import logging
import secrets
import time
import uuid

from starlette.requests import Request
from starlette.responses import Response

from airflow_provider_pad.emulator.credential_registry import MANAGED_IDENTITY, CredentialRegistry, ManagedIdentity
from airflow_provider_pad.emulator.responses import json_bytes
from airflow_provider_pad.emulator.state import EmulatorSettings, EmulatorState

logger = logging.getLogger("airflow_provider_pad.emulator")

API_VERSION = "2019-08-01"
IDENTITY_HEADER = "x-identity-header"
JSON_MEDIA_TYPE = "application/json; charset=utf-8"
# App Service accepts principal_id as another name for object_id.
USER_ASSIGNED_PARAMETERS = ("client_id", "mi_res_id", "object_id", "principal_id")
UNKNOWN_IDENTITY_MESSAGE = "Unable to load the proper Managed Identity."


class ManagedIdentityRequestError(Exception):
    """A request the endpoint rejects, sent as App Service's error JSON."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def managed_identity_error_response(status: int, message: str) -> Response:
    """Build App Service's error response: ``{"statusCode": ..., "message": ..., "correlationId": ...}``."""
    correlation_id = str(uuid.uuid4())
    payload = {"statusCode": status, "message": message, "correlationId": correlation_id}
    return Response(
        json_bytes(payload),
        status_code=status,
        media_type=JSON_MEDIA_TYPE,
        headers={"X-CORRELATION-ID": correlation_id},
    )


class ManagedIdentityEndpoint:
    """The route handler of ``GET /msi/token``."""

    def __init__(self, settings: EmulatorSettings, state: EmulatorState, credentials: CredentialRegistry) -> None:
        self._settings = settings
        self._state = state
        self._credentials = credentials

    async def token(self, request: Request) -> Response:
        """Serve a token for the system-assigned identity, or for the user-assigned identity the query names."""
        request.state.log_detail = MANAGED_IDENTITY
        try:
            self._check_identity_header(request)
            resource = self._check_query(request)
            identity = self._find_identity(request)
        except ManagedIdentityRequestError as error:
            logger.info(
                "The managed identity endpoint rejected a request with %s: %s", error.status, error.message
            )
            return managed_identity_error_response(error.status, error.message)

        lifetime = self._settings.token_lifetime_seconds
        payload = {
            "access_token": self._state.issue_token(lifetime),
            "expires_on": str(int(time.time()) + lifetime),
            "resource": resource,
            "token_type": "Bearer",
            "client_id": identity.client_id,
        }
        return Response(json_bytes(payload), media_type=JSON_MEDIA_TYPE)

    def _check_identity_header(self, request: Request) -> None:
        presented = request.headers.get(IDENTITY_HEADER)
        # NOTE: Microsoft does not document the status and body App Service sends for a missing or
        # wrong X-IDENTITY-HEADER. The emulator sends 400 for a missing header and 401 for a wrong one.
        if not presented:
            raise ManagedIdentityRequestError(
                400, "The request has no X-IDENTITY-HEADER header. Send the value of the IDENTITY_HEADER variable."
            )
        expected = self._settings.managed_identity_header
        if not secrets.compare_digest(presented.encode("utf-8"), expected.encode("utf-8")):
            raise ManagedIdentityRequestError(
                401, "The X-IDENTITY-HEADER header does not match this environment's IDENTITY_HEADER value."
            )

    def _check_query(self, request: Request) -> str:
        """Return the requested resource after checking the API version and the resource."""
        api_version = request.query_params.get("api-version")
        if api_version != API_VERSION:
            raise ManagedIdentityRequestError(
                400,
                f"The api-version {api_version!r} is not supported. "
                f"The Dataverse emulator serves api-version={API_VERSION}.",
            )
        resource = request.query_params.get("resource")
        if not resource:
            raise ManagedIdentityRequestError(400, "The request has no 'resource' query parameter.")
        if resource.rstrip("/").lower() != self._settings.base_url.lower():
            # A comment in MSAL 1.39's managed_identity.py states that App Service sends a vague 500 for an
            # unknown resource. This message adds the identity platform's reason.
            raise ManagedIdentityRequestError(
                500,
                "An unexpected error occurred while fetching the AAD Token. AADSTS500011: The resource principal "
                f"named {resource} was not found in the tenant. Request the resource '{self._settings.base_url}'.",
            )
        return resource

    def _find_identity(self, request: Request) -> ManagedIdentity:
        named = {name: request.query_params[name] for name in USER_ASSIGNED_PARAMETERS if name in request.query_params}
        if len(named) > 1:
            raise ManagedIdentityRequestError(
                400, f"Name one user-assigned identity, with only one of {', '.join(USER_ASSIGNED_PARAMETERS)}."
            )

        if not named:
            identity = self._credentials.system_identity()
            if identity is None:
                raise ManagedIdentityRequestError(
                    400, f"{UNKNOWN_IDENTITY_MESSAGE} No system-assigned managed identity is registered."
                )
            return identity

        ((name, value),) = named.items()
        identity = self._credentials.find_user_identity(
            client_id=value if name == "client_id" else None,
            resource_id=value if name == "mi_res_id" else None,
            object_id=value if name in ("object_id", "principal_id") else None,
        )
        if identity is None:
            raise ManagedIdentityRequestError(
                400, f"{UNKNOWN_IDENTITY_MESSAGE} No user-assigned managed identity has {name} '{value}'."
            )
        return identity
