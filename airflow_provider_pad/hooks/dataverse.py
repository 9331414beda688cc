"""Airflow hook for the Dataverse Web API's desktop-flow endpoints, with sync and async transports."""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import TYPE_CHECKING, Any, TypeVar

from airflow.sdk import BaseHook

from airflow_provider_pad.exceptions import (
    AmbiguousDesktopFlowNameError,
    DesktopFlowError,
    DesktopFlowNotFoundError,
)
from airflow_provider_pad.hooks.connection import DataverseConnectionConfig
from airflow_provider_pad.hooks.credentials import aacquire_token, acquire_token
from airflow_provider_pad.hooks.dataverse_api import (
    ApiRequest,
    ApiResponse,
    DataverseApi,
    DataverseConnectionError,
    Operation,
    RetryPolicy,
    RunStarted,
    Sleep,
)

if TYPE_CHECKING:
    import httpx
    import requests

    from airflow_provider_pad.flowsession import FlowSession

T = TypeVar("T")

CONNECT_TIMEOUT_SECONDS = 10.0
READ_TIMEOUT_SECONDS = 60.0
# Open connections per environment and event loop; Dataverse allows 52 concurrent requests per user.
MAX_CONNECTIONS = 40

# Environment ids read from Dataverse, keyed by connection id and environment URL.
_environment_ids: dict[tuple[str, str], str] = {}


class DataverseHook(BaseHook):
    """Interact with desktop flows through the Dataverse Web API of one Power Platform environment.

    Synchronous methods use ``requests`` and suit operators on a worker; the ``a``-prefixed
    coroutines use ``httpx`` and suit triggers. Both run the same operations from
    :mod:`airflow_provider_pad.hooks.dataverse_api`.

    :param dataverse_conn_id: id of a connection of type ``dataverse``.
    :param retry_policy: attempts and backoff for throttled, failed or unanswered requests;
        five attempts with backoff from 1 to 30 seconds by default.
    """

    conn_name_attr = "dataverse_conn_id"
    default_conn_name = "dataverse_default"
    conn_type = "dataverse"
    hook_name = "Dataverse (Power Automate Desktop)"

    def __init__(
        self,
        dataverse_conn_id: str = default_conn_name,
        *,
        retry_policy: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.dataverse_conn_id = dataverse_conn_id
        self.retry_policy = retry_policy or RetryPolicy()
        self._config: DataverseConnectionConfig | None = None
        self._session: requests.Session | None = None
        self._async_client: httpx.AsyncClient | None = None
        self._token: str | None = None
        self._client_key: tuple[int, str, str] | None = None

    # Connection form ---------------------------------------------------------------------------

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Return the connection form's hidden fields, labels and placeholders (Airflow before 3.2).

        Newer API servers read the same values from the provider metadata, which this derives from.
        """
        behaviour = _connection_type_info()["ui-field-behaviour"]
        return {
            "hidden_fields": list(behaviour["hidden-fields"]),
            "relabeling": dict(behaviour["relabeling"]),
            "placeholders": dict(behaviour["placeholders"]),
        }

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """Return the form widgets of the extra fields for API servers that still build WTForms forms."""
        try:
            from flask_appbuilder.fieldwidgets import BS3TextFieldWidget
            from wtforms import StringField
        except ImportError:  # Airflow 3.2 and newer build the form from the provider metadata.
            return {}
        return {
            name: StringField(field["label"], widget=BS3TextFieldWidget(), description=field.get("description"))
            for name, field in _connection_type_info()["conn-fields"].items()
        }

    # Connection --------------------------------------------------------------------------------

    def get_config(self) -> DataverseConnectionConfig:
        """Read and check the connection once per hook."""
        if self._config is None:
            self._config = DataverseConnectionConfig.from_connection(self.get_connection(self.dataverse_conn_id))
        return self._config

    async def aget_config(self) -> DataverseConnectionConfig:
        """Read and check the connection once per hook without blocking the event loop."""
        if self._config is None:
            connection = await self.aget_connection(self.dataverse_conn_id)
            self._config = DataverseConnectionConfig.from_connection(connection)
        return self._config

    def _api(self, config: DataverseConnectionConfig) -> DataverseApi:
        return DataverseApi(config.environment_url, config.api_version, self.retry_policy)

    # Synchronous endpoints -----------------------------------------------------------------------

    def list_desktop_flows(self, name: str | None = None, *, include_unpublished: bool = False) -> list[dict[str, Any]]:
        """List desktop flows as rows with ``name`` and ``workflowid``, following every page."""
        return self._run(lambda api: api.list_desktop_flows(name=name, include_unpublished=include_unpublished))

    def resolve_flow_id(self, flow_name: str, *, include_unpublished: bool = False) -> str:
        """Return the workflow id of the one desktop flow named exactly ``flow_name``."""
        rows = self.list_desktop_flows(flow_name, include_unpublished=include_unpublished)
        return self._pick_flow(flow_name, rows)

    def get_input_schema(self, flow_id: str) -> dict[str, Any]:
        """Return a flow's input schema (``{"type": "object", "properties": {...}}``)."""
        return self._run(lambda api: api.get_flow_schema(flow_id, "inputs"))

    def get_output_schema(self, flow_id: str) -> dict[str, Any]:
        """Return a flow's output schema (``{"type": "object", "properties": {...}}``)."""
        return self._run(lambda api: api.get_flow_schema(flow_id, "outputs"))

    def run_desktop_flow(self, flow_id: str, body: dict[str, Any]) -> RunStarted:
        """Start a run with a RunDesktopFlow body built by :func:`build_run_body`."""
        return self._run(lambda api: api.run_desktop_flow(flow_id, body))

    def get_flow_session(self, flow_session_id: str) -> FlowSession:
        """Read a run's status columns."""
        return self._run(lambda api: api.get_flow_session(flow_session_id))

    def get_run_outputs(self, flow_session_id: str) -> dict[str, Any]:
        """Read a finished run's outputs; ``{}`` when the flow has none."""
        return self._run(lambda api: api.get_run_outputs(flow_session_id))

    def cancel_run(self, flow_session_id: str) -> None:
        """Ask Dataverse to cancel a queued or running run."""
        self._run(lambda api: api.cancel_run(flow_session_id))

    def get_environment_details(self) -> dict[str, Any]:
        """Return the organization details, among them ``EnvironmentId``."""
        return self._run(lambda api: api.retrieve_current_organization())

    def get_environment_id(self) -> str:
        """Return the Power Platform environment id, from the ``environment_id`` extra or Dataverse.

        The value read from Dataverse is cached per connection for the life of the process.
        """
        config = self.get_config()
        if config.environment_id:
            return config.environment_id
        key = (config.conn_id, config.environment_url)
        if key not in _environment_ids:
            details = self.get_environment_details()
            environment_id = details.get("EnvironmentId")
            if not environment_id:
                raise DesktopFlowError(
                    f"RetrieveCurrentOrganization on {config.environment_url} returned no EnvironmentId; "
                    "set the connection's environment_id extra."
                )
            _environment_ids[key] = str(environment_id)
        return _environment_ids[key]

    def get_portal_url(self) -> str:
        """Return the Power Automate portal origin for this connection's cloud."""
        from airflow_provider_pad.links.desktop_flow import portal_for_environment

        config = self.get_config()
        return config.portal_url or portal_for_environment(config.environment_url)

    def test_connection(self) -> tuple[bool, str]:
        """Call WhoAmI once, without retries, for the Test button of the connection form."""
        self.retry_policy = RetryPolicy(max_attempts=1)
        try:
            config = self.get_config()
            identity = self._run(lambda api: api.who_am_i())
        except DataverseConnectionError as error:
            return False, f"Could not reach {self._config.environment_url if self._config else 'the environment'}: {error}"
        except DesktopFlowError as error:
            return False, str(error)
        return True, (
            f"Connected to {config.environment_url} as user {identity.get('UserId')} "
            f"(organization {identity.get('OrganizationId')})."
        )

    # Asynchronous endpoints ----------------------------------------------------------------------

    async def arun_desktop_flow(self, flow_id: str, body: dict[str, Any]) -> RunStarted:
        return await self._arun(lambda api: api.run_desktop_flow(flow_id, body))

    async def aget_flow_session(self, flow_session_id: str) -> FlowSession:
        return await self._arun(lambda api: api.get_flow_session(flow_session_id))

    async def aget_flow_sessions(self, flow_session_ids: list[str]) -> dict[str, FlowSession]:
        """Read many runs' status in one request; see :meth:`DataverseApi.get_flow_sessions`."""
        return await self._arun(lambda api: api.get_flow_sessions(flow_session_ids))

    async def aget_run_outputs(self, flow_session_id: str) -> dict[str, Any]:
        return await self._arun(lambda api: api.get_run_outputs(flow_session_id))

    async def acancel_run(self, flow_session_id: str) -> None:
        await self._arun(lambda api: api.cancel_run(flow_session_id))

    async def alist_desktop_flows(self, name: str | None = None, *, include_unpublished: bool = False) -> list[dict[str, Any]]:
        return await self._arun(lambda api: api.list_desktop_flows(name=name, include_unpublished=include_unpublished))

    async def aresolve_flow_id(self, flow_name: str, *, include_unpublished: bool = False) -> str:
        rows = await self.alist_desktop_flows(flow_name, include_unpublished=include_unpublished)
        return self._pick_flow(flow_name, rows)

    async def aclose(self) -> None:
        """Release the shared asynchronous client; the last hook to release it closes it."""
        if self._async_client is not None:
            self._async_client = None
            await _release_async_client(self._client_key)

    def close(self) -> None:
        """Close the synchronous session; the hook opens a new one if used again."""
        if self._session is not None:
            session, self._session = self._session, None
            session.close()

    # Drivers: run an operation's instructions with one transport -----------------------------------

    def _run(self, make_operation) -> Any:
        config = self.get_config()
        operation: Operation[Any] = make_operation(self._api(config))
        return self._drive(operation, config)

    def _drive(self, operation: Operation[T], config: DataverseConnectionConfig) -> T:
        instruction = next(operation)
        while True:
            try:
                if isinstance(instruction, Sleep):
                    time.sleep(instruction.seconds)
                    instruction = operation.send(None)
                else:
                    try:
                        response = self._send(instruction, config)
                    except DataverseConnectionError as error:
                        instruction = operation.throw(error)
                    else:
                        instruction = operation.send(response)
            except StopIteration as stop:
                return stop.value

    def _send(self, request: ApiRequest, config: DataverseConnectionConfig) -> ApiResponse:
        import requests

        rejected = self._token if request.refresh_token else None
        token = self._token = acquire_token(config, rejected_token=rejected)
        if self._session is None:
            self._session = requests.Session()
        headers = {**request.headers, "Authorization": f"Bearer {token}"}
        try:
            response = self._session.request(
                request.method,
                request.url,
                headers=headers,
                data=request.body,
                verify=config.verify,
                timeout=(CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS),
                allow_redirects=False,
            )
        except requests.RequestException as error:
            raise DataverseConnectionError(_describe_transport_error(error), request=request.description) from None
        return ApiResponse(
            response.status_code,
            {name.lower(): value for name, value in response.headers.items()},
            response.content,
        )

    async def _arun(self, make_operation) -> Any:
        config = await self.aget_config()
        operation: Operation[Any] = make_operation(self._api(config))
        instruction = next(operation)
        while True:
            try:
                if isinstance(instruction, Sleep):
                    await asyncio.sleep(instruction.seconds)
                    instruction = operation.send(None)
                else:
                    try:
                        response = await self._asend(instruction, config)
                    except DataverseConnectionError as error:
                        instruction = operation.throw(error)
                    else:
                        instruction = operation.send(response)
            except StopIteration as stop:
                return stop.value

    async def _asend(self, request: ApiRequest, config: DataverseConnectionConfig) -> ApiResponse:
        import httpx

        rejected = self._token if request.refresh_token else None
        token = self._token = await aacquire_token(config, rejected_token=rejected)
        if self._async_client is None:
            self._client_key = (id(asyncio.get_running_loop()), config.environment_url, str(config.verify))
            self._async_client = _acquire_async_client(self._client_key, config)
        headers = {**request.headers, "Authorization": f"Bearer {token}"}
        try:
            response = await self._async_client.request(
                request.method, request.url, headers=headers, content=request.body
            )
        except httpx.HTTPError as error:
            raise DataverseConnectionError(_describe_transport_error(error), request=request.description) from None
        return ApiResponse(
            response.status_code,
            {name.lower(): value for name, value in response.headers.items()},
            response.content,
        )

    # Helpers -------------------------------------------------------------------------------------

    def _pick_flow(self, flow_name: str, rows: list[dict[str, Any]]) -> str:
        matches = [row for row in rows if row.get("name") == flow_name]
        if not matches:
            raise DesktopFlowNotFoundError(
                f"No desktop flow named {flow_name!r} was found in connection '{self.dataverse_conn_id}'s "
                "environment. Check the exact name in the Power Automate portal; drafts match only "
                "with include_unpublished=True."
            )
        if len(matches) > 1:
            ids = ", ".join(str(row.get("workflowid")) for row in matches)
            raise AmbiguousDesktopFlowNameError(
                f"{len(matches)} desktop flows are named {flow_name!r} (workflow ids: {ids}); pass flow_id instead."
            )
        return str(matches[0]["workflowid"])


def _connection_type_info() -> dict[str, Any]:
    from airflow_provider_pad.get_provider_info import get_provider_info

    return get_provider_info()["connection-types"][0]


# One keep-alive client per environment and event loop, shared by every hook (and so every
# trigger) in that loop, with the number of hooks using it.
_async_clients: dict[tuple[int, str, str], list[Any]] = {}


def _acquire_async_client(key: tuple[int, str, str], config: DataverseConnectionConfig) -> httpx.AsyncClient:
    import httpx

    entry = _async_clients.get(key)
    if entry is None:
        client = httpx.AsyncClient(
            verify=_ssl_context(config.verify),
            timeout=httpx.Timeout(READ_TIMEOUT_SECONDS, connect=CONNECT_TIMEOUT_SECONDS),
            # As many idle connections as open ones, so a tick's burst of batch requests reuses them
            # instead of reconnecting (httpx keeps 20 idle by default).
            limits=httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS),
            follow_redirects=False,
            # Proxy variables apply; the CA bundle cannot be overridden, because verify is an SSLContext.
            trust_env=True,
        )
        entry = _async_clients[key] = [client, 0]
    entry[1] += 1
    return entry[0]


async def _release_async_client(key: tuple[int, str, str] | None) -> None:
    entry = _async_clients.get(key) if key is not None else None
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] <= 0:
        del _async_clients[key]
        await entry[0].aclose()


def _ssl_context(verify: bool | str) -> ssl.SSLContext | bool:
    if verify is False:
        return False
    if verify is True:
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=verify)


def _describe_transport_error(error: Exception) -> str:
    # Transport errors name the URL and the cause, never the headers.
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
