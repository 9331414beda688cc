"""
The emulated Microsoft identity platform: OpenID Connect discovery and the OAuth 2.0 token endpoint.

Only the client credentials grant is served. The client authenticates with its client secret,
with a JWT signed by one of its certificates, or with a token of a federated issuer (workload
identity federation), whose discovery document and keys this module serves too. Access tokens
are opaque random strings that the emulator keeps in memory. They are not JWTs and carry no claims.
"""

from __future__ import annotations

import datetime
import logging
import uuid
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import Response

from airflow_provider_pad.emulator.client_assertions import (
    CLIENT_ASSERTION_TYPE_JWT_BEARER,
    ClientAssertionValidator,
    assertion_kind,
    parse_client_assertion,
)
from airflow_provider_pad.emulator.credential_registry import CERTIFICATE, CLIENT_SECRET, CredentialRegistry
from airflow_provider_pad.emulator.federation import FederationIssuer
from airflow_provider_pad.emulator.identity_errors import IdentityError
from airflow_provider_pad.emulator.jws import CompactJws
from airflow_provider_pad.emulator.responses import json_bytes
from airflow_provider_pad.emulator.state import EmulatorSettings, EmulatorState

logger = logging.getLogger("airflow_provider_pad.emulator")

IDENTITY_JSON_MEDIA_TYPE = "application/json; charset=utf-8"


def identity_error_response(
    settings: EmulatorSettings, error: IdentityError, correlation_id: str | None = None
) -> Response:
    """Build a response with the identity platform's error JSON: error, AADSTS description, codes and ids."""
    trace_id = str(uuid.uuid4())
    correlation_id = correlation_id or str(uuid.uuid4())
    timestamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    description = (
        f"AADSTS{error.aadsts_code}: {error.description} "
        f"Trace ID: {trace_id} Correlation ID: {correlation_id} Timestamp: {timestamp}"
    )
    payload = {
        "error": error.error,
        "error_description": description,
        "error_codes": [error.aadsts_code],
        "timestamp": timestamp,
        "trace_id": trace_id,
        "correlation_id": correlation_id,
        "error_uri": f"{settings.base_url}/error?code={error.aadsts_code}",
    }
    return Response(json_bytes(payload), status_code=error.status, media_type=IDENTITY_JSON_MEDIA_TYPE)


def default_fault_error(status: int) -> IdentityError:
    """Return a plausible identity platform error for an injected fault with ``status``."""
    if status == 429 or status >= 500:
        return IdentityError(
            status, "temporarily_unavailable", 90033, "A transient error has occurred. Please try again."
        )
    return IdentityError(status, "invalid_request", 90013, "Invalid input received from the user.")


class IdentityPlatform:
    """Route handlers of the identity platform endpoints."""

    def __init__(
        self,
        settings: EmulatorSettings,
        state: EmulatorState,
        credentials: CredentialRegistry,
        federation: FederationIssuer,
    ) -> None:
        self._settings = settings
        self._state = state
        self._federation = federation
        self._assertions = ClientAssertionValidator(settings, credentials, federation)

    async def openid_configuration(self, request: Request, tenant: str) -> Response:
        """Serve ``GET /{tenant}/v2.0/.well-known/openid-configuration``, which MSAL reads first."""
        if not self._is_known_tenant(tenant):
            return identity_error_response(self._settings, _unknown_tenant_error(tenant, "invalid_tenant"))

        authority = self._settings.authority
        configuration = {
            "token_endpoint": self._settings.token_endpoint,
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt"],
            "jwks_uri": f"{authority}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": f"{authority}/v2.0",
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": f"{authority}/oidc/userinfo",
            "authorization_endpoint": f"{authority}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{authority}/oauth2/v2.0/devicecode",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "end_session_endpoint": f"{authority}/oauth2/v2.0/logout",
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "tid", "oid"],
            "tenant_region_scope": None,
            "cloud_instance_name": "dataverse-emulator",
        }
        return Response(json_bytes(configuration), media_type=IDENTITY_JSON_MEDIA_TYPE)

    async def token(self, request: Request, tenant: str) -> Response:
        """
        Serve ``POST /{tenant}/oauth2/v2.0/token`` for the client credentials grant.

        The credential kind goes to ``request.state.log_detail`` for the request log once it is known.
        """
        correlation_id = request.headers.get("client-request-id")
        form: dict[str, str] = {}
        try:
            form = _parse_form(await request.body())
            self._check_token_request(tenant, form, request)
        except IdentityError as error:
            # Error descriptions name ids, thumbprints and claims, never a secret or an assertion.
            logger.info(
                "The token endpoint rejected a request of client %s: AADSTS%s %s",
                form.get("client_id"),
                error.aadsts_code,
                error.description,
            )
            return identity_error_response(self._settings, error, correlation_id)

        lifetime = self._settings.token_lifetime_seconds
        payload = {
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": self._state.issue_token(lifetime),
        }
        return Response(
            json_bytes(payload),
            media_type=IDENTITY_JSON_MEDIA_TYPE,
            headers={"Cache-Control": "no-store, no-cache", "Pragma": "no-cache"},
        )

    async def federation_configuration(self, request: Request) -> Response:
        """Serve the OpenID discovery document of the emulator's federation issuer."""
        document = self._federation.discovery_document(self._settings.federation_issuer, self._settings.base_url)
        return Response(json_bytes(document), media_type=IDENTITY_JSON_MEDIA_TYPE)

    async def federation_keys(self, request: Request) -> Response:
        """Serve the JSON Web Key Set of the emulator's federation issuer."""
        return Response(json_bytes(self._federation.jwks()), media_type=IDENTITY_JSON_MEDIA_TYPE)

    def _check_token_request(self, tenant: str, form: dict[str, str], request: Request) -> None:
        """Raise IdentityError for the first problem the identity platform would report."""
        settings = self._settings
        if not self._is_known_tenant(tenant):
            raise _unknown_tenant_error(tenant, "invalid_request")

        grant_type = form.get("grant_type")
        if not grant_type:
            raise _missing_parameter_error("grant_type")
        if grant_type != "client_credentials":
            raise IdentityError(
                400,
                "unsupported_grant_type",
                70003,
                f"The app requested an unsupported grant type '{grant_type}'. "
                "The Dataverse emulator supports only 'client_credentials'.",
            )

        client_id = form.get("client_id")
        if not client_id:
            raise _missing_parameter_error("client_id")
        if client_id.lower() != settings.client_id.lower():
            raise IdentityError(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory '{settings.tenant_id}'. "
                "Check the client id, or whether the request went to the wrong tenant.",
            )

        self._authenticate_client(form, client_id, request)

        scope = form.get("scope")
        if not scope:
            raise _missing_parameter_error("scope")
        expected_scope = f"{settings.base_url}/.default"
        if scope.strip().lower() != expected_scope.lower():
            raise IdentityError(
                400,
                "invalid_scope",
                70011,
                f"The provided value for the input parameter 'scope' is not valid. The scope '{scope}' is not valid. "
                f"Request the scope '{expected_scope}'.",
            )

    def _authenticate_client(self, form: dict[str, str], client_id: str, request: Request) -> None:
        """Check the client secret or client assertion, and store its kind as ``request.state.log_detail``."""
        if "client_assertion" not in form and "client_assertion_type" not in form:
            request.state.log_detail = CLIENT_SECRET
            self._check_client_secret(form)
            return

        if "client_secret" in form:
            # NOTE: the AADSTS code the identity platform sends for both credentials at once is a guess.
            raise IdentityError(
                400,
                "invalid_request",
                90014,
                "The request contains both 'client_secret' and 'client_assertion'. Send only one client credential.",
            )
        jws = self._parse_client_assertion(form)
        kind = assertion_kind(jws, client_id)
        request.state.log_detail = kind
        if kind == CERTIFICATE:
            self._assertions.check_certificate_assertion(jws, client_id)
        else:
            self._assertions.check_federated_assertion(jws)

    def _check_client_secret(self, form: dict[str, str]) -> None:
        client_secret = form.get("client_secret")
        if not client_secret:
            raise IdentityError(
                401,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            )
        if client_secret != self._settings.client_secret:
            raise IdentityError(
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request is the client "
                f"secret value, not the client secret ID, for a secret added to app '{self._settings.client_id}'.",
            )

    @staticmethod
    def _parse_client_assertion(form: dict[str, str]) -> CompactJws:
        assertion_type = form.get("client_assertion_type")
        if not assertion_type:
            raise _missing_parameter_error("client_assertion_type")
        if assertion_type != CLIENT_ASSERTION_TYPE_JWT_BEARER:
            raise IdentityError(
                400,
                "invalid_request",
                50027,
                f"The client_assertion_type '{assertion_type}' is not supported. "
                f"Send '{CLIENT_ASSERTION_TYPE_JWT_BEARER}'.",
            )
        assertion = form.get("client_assertion")
        if not assertion:
            raise _missing_parameter_error("client_assertion")

        return parse_client_assertion(assertion)

    def _is_known_tenant(self, tenant: str) -> bool:
        return tenant.lower() == self._settings.tenant_id.lower()


def _parse_form(body: bytes) -> dict[str, str]:
    try:
        return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, errors="strict"))
    except UnicodeDecodeError:
        raise IdentityError(400, "invalid_request", 90014, "The request body is not valid UTF-8 form data.") from None


def _unknown_tenant_error(tenant: str, error: str) -> IdentityError:
    """Build AADSTS90002, which discovery reports as ``invalid_tenant`` and token requests as ``invalid_request``."""
    return IdentityError(
        400,
        error,
        90002,
        f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID "
        "and are signing into the correct cloud.",
    )


def _missing_parameter_error(parameter: str) -> IdentityError:
    return IdentityError(
        400,
        "invalid_request",
        900144,
        f"The request body must contain the following parameter: '{parameter}'.",
    )
