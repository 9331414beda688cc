"""
The emulator's ASGI application: route requests, check tokens, apply scripted faults, and log each request.

The admin routes under ``/_emulator/`` let a test that runs the emulator in another process
read and reset the request log, and read each flow session's status read count. They need no
token and are not logged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from airflow_provider_pad.emulator import identity
from airflow_provider_pad.emulator.connections import ConnectionRegistry
from airflow_provider_pad.emulator.credential_registry import CredentialRegistry
from airflow_provider_pad.emulator.dataverse import DataverseApi
from airflow_provider_pad.emulator.faults import Fault
from airflow_provider_pad.emulator.federation import DISCOVERY_PATH, JWKS_PATH, FederationIssuer
from airflow_provider_pad.emulator.identity import IdentityPlatform, identity_error_response
from airflow_provider_pad.emulator.managed_identity import ManagedIdentityEndpoint, managed_identity_error_response
from airflow_provider_pad.emulator.odata import ODataQueryError
from airflow_provider_pad.emulator.responses import (
    ACCESS_TOKEN_EXPIRED,
    NO_MATCHING_RESOURCE,
    ODATA_REQUEST_ERROR,
    RESOURCE_NOT_FOUND_FOR_SEGMENT,
    DataverseError,
    dataverse_error_response,
    default_fault_error,
    json_bytes,
)
from airflow_provider_pad.emulator.state import MANAGED_IDENTITY_PATH, EmulatorSettings, EmulatorState, RequestRecord

logger = logging.getLogger("airflow_provider_pad.emulator")

WEB_API_PREFIX = "/api/data/v9.2/"
ADMIN_PREFIX = "/_emulator/"
IDENTITY_ENDPOINTS = frozenset({"token", "openid", "federation_openid", "federation_keys"})

# How long a dropped request waits for uvicorn to notice the closed connection.
DROP_SETTLE_TIMEOUT_SECONDS = 5.0

Handler = Callable[..., Awaitable[Response]]


@dataclass(frozen=True)
class Route:
    """One endpoint: the method and path pattern it serves, its log name and its handler."""

    method: str
    pattern: re.Pattern[str]
    endpoint: str
    handler: Handler
    needs_token: bool


def build_routes(
    identity_platform: IdentityPlatform, managed_identity: ManagedIdentityEndpoint, web_api: DataverseApi
) -> list[Route]:
    """List the emulator's routes. Named groups in a pattern become the handler's keyword arguments."""
    key = r"\((?P<key>[^()/]*)\)"
    tenant = r"/(?P<tenant>[^/]+)"
    identity_routes = [
        ("GET", rf"{tenant}/v2\.0/\.well-known/openid-configuration", "openid", identity_platform.openid_configuration),
        ("POST", rf"{tenant}/oauth2/v2\.0/token", "token", identity_platform.token),
        ("GET", re.escape(DISCOVERY_PATH), "federation_openid", identity_platform.federation_configuration),
        ("GET", re.escape(JWKS_PATH), "federation_keys", identity_platform.federation_keys),
        ("GET", re.escape(MANAGED_IDENTITY_PATH), "managed_identity", managed_identity.token),
    ]
    # Paths below are relative to WEB_API_PREFIX.
    web_api_routes = [
        ("GET", r"workflows", "list_workflows", web_api.list_workflows),
        ("GET", rf"workflows{key}", "get_workflow", web_api.get_workflow),
        ("GET", rf"workflows{key}/inputs/\$value", "input_schema", web_api.input_schema),
        ("GET", rf"workflows{key}/outputs/\$value", "output_schema", web_api.output_schema),
        ("POST", rf"workflows{key}/Microsoft\.Dynamics\.CRM\.RunDesktopFlow", "run", web_api.run),
        ("GET", r"flowsessions", "list_sessions", web_api.list_sessions),
        ("GET", rf"flowsessions{key}", "get_session", web_api.get_session),
        ("GET", rf"flowsessions{key}/outputs/\$value", "session_outputs", web_api.session_outputs),
        ("POST", rf"flowsessions{key}/Microsoft\.Dynamics\.CRM\.CancelDesktopFlowRun", "cancel", web_api.cancel),
        ("GET", r"WhoAmI(?:\(\))?", "whoami", web_api.whoami),
        (
            "GET",
            r"RetrieveCurrentOrganization\((?P<arguments>[^()]*)\)",
            "current_organization",
            web_api.current_organization,
        ),
    ]
    routes = [
        Route(method, re.compile(pattern), endpoint, handler, needs_token=False)
        for method, pattern, endpoint, handler in identity_routes
    ]
    routes += [
        Route(method, re.compile(re.escape(WEB_API_PREFIX) + pattern), endpoint, handler, needs_token=True)
        for method, pattern, endpoint, handler in web_api_routes
    ]
    return routes


class EmulatorApp:
    """The ASGI callable that uvicorn serves."""

    def __init__(
        self,
        settings: EmulatorSettings,
        state: EmulatorState,
        connections: ConnectionRegistry,
        credentials: CredentialRegistry,
        federation: FederationIssuer,
    ) -> None:
        self._settings = settings
        self._state = state
        self._connections = connections
        self._routes = build_routes(
            IdentityPlatform(settings, state, credentials, federation),
            ManagedIdentityEndpoint(settings, state, credentials),
            DataverseApi(settings, state),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            return

        request = Request(scope, receive)
        if scope["path"].startswith(ADMIN_PREFIX):
            response = self._handle_admin(request)
            await response(scope, receive, send)
            return

        arrived_at = time.time()
        # Read the whole body first, so that a fault never leaves it unread on the connection.
        await request.body()
        route, arguments = self._resolve(request.method, scope["path"])
        endpoint = route.endpoint if route is not None else None

        # An over-long URL is rejected before faults and tokens, as a front-end server would.
        fault = None
        response = self._check_url_length(scope)
        if response is None:
            fault = self._state.take_fault(endpoint) if endpoint is not None else None
            if fault is None:
                response = await self._handle(request, route, arguments)
            else:
                assert route is not None
                response = await self._apply_fault(fault, request, route, arguments)

        if response is None:
            self._record(request, 0, endpoint, arrived_at, injected=True)
            await self._drop_connection(scope, receive)
            return
        # Record before responding, so that a client that reads the log after its response finds the request.
        self._record(request, response.status_code, endpoint, arrived_at, injected=fault is not None)
        await response(scope, receive, send)

    async def _apply_fault(
        self, fault: Fault, request: Request, route: Route, arguments: dict[str, str]
    ) -> Response | None:
        """
        Apply a fault: handle the request first when ``after_handling`` is set, then wait its delay.

        Return the fault's response, or None when the connection must be dropped.
        """
        if fault.after_handling:
            await self._handle(request, route, arguments)
        if fault.delay_seconds:
            await asyncio.sleep(fault.delay_seconds)
        if fault.drop:
            return None
        return self._fault_response(fault, route.endpoint)

    def _resolve(self, method: str, path: str) -> tuple[Route | None, dict[str, str]]:
        for route in self._routes:
            match = route.pattern.fullmatch(path)
            if match is not None and route.method == method:
                return route, match.groupdict()
        return None, {}

    async def _handle(self, request: Request, route: Route | None, arguments: dict[str, str]) -> Response:
        """Handle a request normally: check the token, then run the route's handler."""
        path = request.scope["path"]
        needs_token = route.needs_token if route is not None else path.startswith(WEB_API_PREFIX)
        if needs_token:
            rejection = self._check_token(request)
            if rejection is not None:
                return rejection
        if route is None:
            return self._not_found(request)

        try:
            return await route.handler(request, **arguments)
        except DataverseError as error:
            return error.to_response()
        except ODataQueryError as error:
            return dataverse_error_response(400, ODATA_REQUEST_ERROR, str(error))
        except Exception:
            logger.exception("The emulator failed to handle %s %s.", request.method, path)
            return dataverse_error_response(
                500, "0x80040216", "An unexpected error occurred in the Dataverse emulator. Its log has the traceback."
            )

    def _check_url_length(self, scope: Scope) -> Response | None:
        """
        Return a 414 response when a Web API request target (path and query) is longer than ``max_url_length``.

        The length counts the characters as sent, after percent-encoding.
        """
        if not scope["path"].startswith(WEB_API_PREFIX):
            return None
        raw_path = scope.get("raw_path") or scope["path"].encode("utf-8")
        query = scope["query_string"]
        length = len(raw_path) + (len(query) + 1 if query else 0)
        if length <= self._settings.max_url_length:
            return None

        logger.info(
            "Rejecting %s: the request target has %s characters, over max_url_length %s.",
            scope["path"],
            length,
            self._settings.max_url_length,
        )
        # NOTE: Microsoft documents the maximum (32768 characters) but not the status or body
        # sent beyond it. A gateway may send 400 "Invalid URL" or an HTML page instead.
        return dataverse_error_response(
            414,
            ODATA_REQUEST_ERROR,
            f"The request target (path and query string) is {length} characters long, over the maximum of "
            f"{self._settings.max_url_length}. Send fewer values per request, for example by splitting a "
            "Microsoft.Dynamics.CRM.In list into several requests.",
        )

    def _check_token(self, request: Request) -> Response | None:
        """Return a 401 response unless the request carries a valid, unexpired bearer token."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            message = "The request has no 'Authorization: Bearer <access token>' header."
        elif not self._state.is_token_valid(token.strip()):
            message = "The access token is expired or was not issued by this emulator. Request a new token."
        else:
            return None
        challenge = (
            f"Bearer authorization_uri={self._settings.authority}/oauth2/authorize, "
            f"resource_id={self._settings.base_url}/"
        )
        return dataverse_error_response(401, ACCESS_TOKEN_EXPIRED, message, {"WWW-Authenticate": challenge})

    def _not_found(self, request: Request) -> Response:
        path = request.scope["path"]
        url = self._settings.base_url + path
        if any(route.pattern.fullmatch(path) for route in self._routes):
            # Dataverse responds like this, not with 405, to a known resource requested with the wrong method.
            return dataverse_error_response(
                404, NO_MATCHING_RESOURCE, f"No HTTP resource was found that matches the request URI '{url}'."
            )
        if path.startswith(WEB_API_PREFIX):
            segment = re.split(r"[(/]", path[len(WEB_API_PREFIX) :], maxsplit=1)[0]
            return dataverse_error_response(
                404, RESOURCE_NOT_FOUND_FOR_SEGMENT, f"Resource not found for the segment '{segment}'."
            )
        return dataverse_error_response(
            404, NO_MATCHING_RESOURCE, f"No HTTP resource was found that matches the request URI '{url}'."
        )

    def _fault_response(self, fault: Fault, endpoint: str) -> Response:
        """Build the response a fault scripts. Without a body, a 4xx or 5xx gets the endpoint's usual error body."""
        if fault.body is not None:
            body = fault.body.encode("utf-8") if isinstance(fault.body, str) else fault.body
            return Response(body, status_code=fault.status, headers=fault.headers)
        if fault.status < 400:
            return Response(b"", status_code=fault.status, headers=fault.headers)

        if endpoint in IDENTITY_ENDPOINTS:
            response = identity_error_response(self._settings, identity.default_fault_error(fault.status))
        elif endpoint == "managed_identity":
            response = managed_identity_error_response(
                fault.status, f"The managed identity endpoint failed with HTTP status {fault.status}."
            )
        else:
            code, message = default_fault_error(fault.status)
            response = dataverse_error_response(fault.status, code, message)
        response.headers.update(fault.headers)
        return response

    async def _drop_connection(self, scope: Scope, receive: Receive) -> None:
        """Close the client's connection without a response, then wait until uvicorn has seen it close."""
        if not self._connections.abort(scope.get("client")):
            logger.warning("The connection of %s was not found, so it could not be dropped.", scope.get("client"))
            return

        async def wait_for_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        # Returning before uvicorn notices the closed connection would make it send a 500.
        try:
            await asyncio.wait_for(wait_for_disconnect(), DROP_SETTLE_TIMEOUT_SECONDS)
        except asyncio.TimeoutError:
            logger.warning("uvicorn did not report the dropped connection of %s as closed.", scope.get("client"))

    def _record(
        self, request: Request, status: int, endpoint: str | None, arrived_at: float, *, injected: bool
    ) -> None:
        path = request.scope["path"]
        query = request.scope["query_string"].decode("utf-8", errors="backslashreplace")
        # A handler stores the credential kind of a token request here. It is never a secret.
        detail = getattr(request.state, "log_detail", None)
        self._state.record(RequestRecord(request.method, path, query, status, endpoint, arrived_at, detail))
        outcome = str(status) if status else "connection dropped"
        note = " (injected fault)" if injected else ""
        kind = f" [{detail}]" if detail else ""
        logger.info("%s %s -> %s%s%s", request.method, path, outcome, kind, note)

    def _handle_admin(self, request: Request) -> Response:
        path = request.scope["path"][len(ADMIN_PREFIX) :]
        if request.method == "GET" and path == "requests":
            records = [dataclasses.asdict(record) for record in self._state.records()]
            return Response(json_bytes(records), media_type="application/json")
        if request.method == "POST" and path == "reset":
            self._state.reset_log()
            return Response(status_code=204)
        if request.method == "POST" and path == "expire-tokens":
            self._state.expire_tokens()
            return Response(status_code=204)
        if request.method == "GET" and path == "session-reads":
            return Response(json_bytes(self._state.session_read_counts()), media_type="application/json")
        message: dict[str, Any] = {
            "error": f"No admin route {request.method} {ADMIN_PREFIX}{path}. "
            f"Routes: GET {ADMIN_PREFIX}requests, POST {ADMIN_PREFIX}reset, POST {ADMIN_PREFIX}expire-tokens, "
            f"GET {ADMIN_PREFIX}session-reads."
        }
        return Response(json_bytes(message), status_code=404, media_type="application/json")
