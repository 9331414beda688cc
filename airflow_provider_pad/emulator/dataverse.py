"""Route handlers of the emulated Dataverse Web API: desktop flows, their runs, and the connection-test functions."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from airflow_provider_pad.emulator.flows import (
    DEFAULT_RUN_TIMEOUT_SECONDS,
    DESKTOP_FLOW_CATEGORY,
    POWER_AUTOMATE_DESKTOP_UIFLOWTYPE,
    RUN_MODE_CODES,
    SESSION_COLUMNS,
    EmulatedFlow,
    FlowSession,
    SessionStatus,
    normalize_guid,
)
from airflow_provider_pad.emulator.odata import (
    ColumnType,
    build_query_string,
    decode_skiptoken,
    encode_skiptoken,
    parse_filter,
    parse_max_page_size,
    parse_orderby,
    parse_query_options,
    parse_select,
    parse_top,
    sort_rows,
)
from airflow_provider_pad.emulator.responses import (
    INVALID_ARGUMENT,
    OBJECT_DOES_NOT_EXIST,
    ODATA_REQUEST_ERROR,
    PAYLOAD_ERROR,
    QUERY_SYNTAX_ERROR,
    DataverseError,
    dataverse_json_response,
)
from airflow_provider_pad.emulator.state import EmulatorSettings, EmulatorState, RunRequest, UnknownRecordError

logger = logging.getLogger("airflow_provider_pad.emulator")

# Fixed ids of the emulated organization and of the application user the tokens stand for.
ORGANIZATION_ID = "00000000-0000-0000-0000-0000000000a1"
ENVIRONMENT_ID = "00000000-0000-0000-0000-0000000000e1"
BUSINESS_UNIT_ID = "00000000-0000-0000-0000-0000000000b1"
USER_ID = "00000000-0000-0000-0000-0000000000d1"

# NOTE: Microsoft documents the limit as "2 MB" without saying whether that is 10**6 or
# 2**20 bytes; the emulator takes the larger reading, so it never rejects what Dataverse accepts.
MAX_INPUTS_BYTES = 2 * 1024 * 1024
MAX_RUN_TIMEOUT_SECONDS = 86400

RUN_PARAMETERS = ("runMode", "runPriority", "connectionName", "connectionType", "timeout", "inputs", "callbackUrl")
RUN_PRIORITIES = ("normal", "high")
CONNECTION_TYPES = (1, 2)

LICENSE_CHECK = {
    "code": "ValidLicenseCoverage",
    "message": "The run is covered by a valid license.",
}

WORKFLOW_COLUMN_TYPES = {
    "workflowid": ColumnType.GUID,
    "name": ColumnType.STRING,
    "category": ColumnType.INT32,
    "type": ColumnType.INT32,
    "uiflowtype": ColumnType.INT32,
    "statecode": ColumnType.INT32,
    "statuscode": ColumnType.INT32,
    "primaryentity": ColumnType.STRING,
    "description": ColumnType.STRING,
}

# workflow.type 1 is a definition, as opposed to an activation or a template.
WORKFLOW_DEFINITION_TYPE = 1

_ACCESS_TYPE_PATTERN = re.compile(r"Microsoft\.Dynamics\.CRM\.EndpointAccessType'(?P<value>Default|Internet|Intranet)'")


class DataverseApi:
    """Route handlers of the Web API under ``/api/data/v9.2/``; the caller has already checked the token."""

    def __init__(self, settings: EmulatorSettings, state: EmulatorState) -> None:
        self._settings = settings
        self._state = state

    # Workflows

    async def list_workflows(self, request: Request) -> Response:
        """Serve ``GET workflows`` with $filter, $select, $orderby, $top and server-driven paging."""
        options = parse_query_options(
            request.scope["query_string"], allowed={"$filter", "$select", "$orderby", "$top", "$skiptoken"}
        )
        selected = parse_select(options.get("$select"), WORKFLOW_COLUMN_TYPES, "workflow")
        predicate = parse_filter(options.get("$filter"), WORKFLOW_COLUMN_TYPES, "workflow")
        ordering = parse_orderby(options.get("$orderby"), WORKFLOW_COLUMN_TYPES, "workflow")
        top = parse_top(options.get("$top"))
        requested_page_size = parse_max_page_size(request.headers.getlist("prefer"))
        page_number, offset = decode_skiptoken(options.get("$skiptoken"))

        include_unpublished = request.headers.get("MSCRM.IncludeUnpublished", "").strip().lower() == "true"
        rows = [
            _workflow_row(flow, version)
            for flow, version in self._state.flow_rows()
            if flow.published or include_unpublished
        ]
        rows = sort_rows([row for row in rows if predicate(row)], ordering)

        # Dataverse ignores $top when the client asks for pages with odata.maxpagesize.
        if top is not None and requested_page_size is None:
            rows = rows[:top]

        page_size = min(requested_page_size or self._settings.page_size, self._settings.page_size)
        page = rows[offset : offset + page_size]
        body: dict[str, Any] = {
            "@odata.context": self._context_url("workflows", selected),
            "value": [_project(row, selected, "workflowid") for row in page],
        }
        if offset + page_size < len(rows):
            next_options = {name: value for name, value in options.items() if name != "$skiptoken"}
            next_options["$skiptoken"] = encode_skiptoken(page_number + 1, offset + page_size)
            body["@odata.nextLink"] = f"{self._settings.web_api_url}/workflows?{build_query_string(next_options)}"

        headers = {}
        if requested_page_size is not None:
            headers["Preference-Applied"] = f"odata.maxpagesize={page_size}"
        return dataverse_json_response(body, headers=headers)

    async def get_workflow(self, request: Request, key: str) -> Response:
        """Serve ``GET workflows(<id>)`` with optional $select."""
        options = parse_query_options(request.scope["query_string"], allowed={"$select"})
        selected = parse_select(options.get("$select"), WORKFLOW_COLUMN_TYPES, "workflow")
        flow, version = self._find_flow(key)
        body = {
            "@odata.context": self._context_url("workflows", selected, single=True),
            **_project(_workflow_row(flow, version), selected, "workflowid"),
        }
        return dataverse_json_response(body)

    async def input_schema(self, request: Request, key: str) -> Response:
        """Serve ``GET workflows(<id>)/inputs/$value``: the flow's input schema."""
        flow, _ = self._find_flow(key)
        return dataverse_json_response(_schema_document(flow.inputs_schema))

    async def output_schema(self, request: Request, key: str) -> Response:
        """Serve ``GET workflows(<id>)/outputs/$value``: the flow's output schema."""
        flow, _ = self._find_flow(key)
        return dataverse_json_response(_schema_document(flow.outputs_schema))

    async def run(self, request: Request, key: str) -> Response:
        """Serve ``POST workflows(<id>)/Microsoft.Dynamics.CRM.RunDesktopFlow``: queue a run."""
        flow, _ = self._find_flow(key)
        if flow.category != DESKTOP_FLOW_CATEGORY:
            raise DataverseError(
                400,
                INVALID_ARGUMENT,
                f"The workflow {flow.workflow_id} has category {flow.category}, but RunDesktopFlow "
                f"runs only desktop flows (category {DESKTOP_FLOW_CATEGORY}).",
            )
        run_request = parse_run_request(await request.body())
        session = self._state.create_session(flow, run_request, self._settings)
        logger.info(
            "Flow session %s of flow %s (%s) is queued in %s mode.",
            session.flowsession_id,
            flow.workflow_id,
            flow.name,
            run_request.run_mode,
        )
        body = {
            "@odata.context": f"{self._settings.web_api_url}/$metadata#Microsoft.Dynamics.CRM.RunDesktopFlowResponse",
            "flowsessionId": session.flowsession_id,
            "licenseCheck": dict(LICENSE_CHECK),
        }
        return dataverse_json_response(body)

    # Flow sessions

    async def get_session(self, request: Request, key: str) -> Response:
        """Serve ``GET flowsessions(<id>)`` with optional $select."""
        options = parse_query_options(request.scope["query_string"], allowed={"$select"})
        selected = parse_select(options.get("$select"), SESSION_COLUMNS, "flowsession")
        session = self._find_session(key)
        row = {"@odata.etag": _session_etag(session), **session.to_row()}
        body = {
            "@odata.context": self._context_url("flowsessions", selected, single=True),
            **_project(row, selected, "flowsessionid"),
        }
        return dataverse_json_response(body)

    async def session_outputs(self, request: Request, key: str) -> Response:
        """
        Serve ``GET flowsessions(<id>)/outputs/$value``.

        The outputs file exists only once a run of a flow with outputs has succeeded. Before
        that, and for runs that did not succeed or flows without outputs, the answer is
        200 with an empty body, the same as for a flow that writes no outputs.
        """
        session = self._find_session(key)
        if session.statuscode != SessionStatus.SUCCEEDED or session.outputs is None:
            # NOTE: what Dataverse sends for an empty outputs file column is not documented;
            # it may be 204 or 404 instead of an empty 200.
            return Response(b"", status_code=200, headers={"OData-Version": "4.0"})
        return dataverse_json_response(session.outputs)

    async def cancel(self, request: Request, key: str) -> Response:
        """Serve ``POST flowsessions(<id>)/Microsoft.Dynamics.CRM.CancelDesktopFlowRun``."""
        try:
            cancelled, session = self._state.cancel_session(_parse_key(key))
        except UnknownRecordError:
            raise _not_found("flowsession", key) from None
        if not cancelled:
            # NOTE: the error code and message Dataverse sends here are not documented.
            status = _status_label(session.statuscode)
            raise DataverseError(
                400,
                INVALID_ARGUMENT,
                f"The flow session {session.flowsession_id} has already ended with status {status} "
                f"({session.statuscode}), so it cannot be cancelled. Only queued or running runs can be cancelled.",
            )
        logger.info("Flow session %s is cancelled.", session.flowsession_id)
        return Response(status_code=204, headers={"OData-Version": "4.0"})

    # Connection test functions

    async def whoami(self, request: Request) -> Response:
        """Serve ``GET WhoAmI``: the ids of the application user the token stands for."""
        body = {
            "@odata.context": f"{self._settings.web_api_url}/$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse",
            "BusinessUnitId": BUSINESS_UNIT_ID,
            "UserId": USER_ID,
            "OrganizationId": ORGANIZATION_ID,
        }
        return dataverse_json_response(body)

    async def current_organization(self, request: Request, arguments: str) -> Response:
        """
        Serve ``GET RetrieveCurrentOrganization(AccessType=...)``.

        The access type may be inline, ``AccessType=Microsoft.Dynamics.CRM.EndpointAccessType'Default'``,
        or a parameter alias such as ``AccessType=@p1`` with ``?@p1=...`` in the query string.
        """
        self._check_access_type(request, arguments)
        base_url = self._settings.base_url
        detail = {
            "OrganizationId": ORGANIZATION_ID,
            "FriendlyName": "Dataverse emulator",
            "OrganizationVersion": "9.2.0.0",
            "EnvironmentId": ENVIRONMENT_ID,
            "DatacenterId": "00000000-0000-0000-0000-000000000000",
            "Geo": "EMU",
            "TenantId": self._settings.tenant_id,
            "UrlName": "emulator",
            "UniqueName": "emulator",
            "State": "Enabled",
            "OrganizationType": "Customer",
            "Endpoints": {
                "Count": 3,
                "IsReadOnly": False,
                "Keys": ["WebApplication", "OrganizationService", "OrganizationDataService"],
                "Values": [
                    f"{base_url}/",
                    f"{base_url}/XRMServices/2011/Organization.svc",
                    f"{base_url}/XRMServices/2011/OrganizationData.svc",
                ],
            },
        }
        body = {
            "@odata.context": (
                f"{self._settings.web_api_url}/$metadata#Microsoft.Dynamics.CRM.RetrieveCurrentOrganizationResponse"
            ),
            "Detail": detail,
        }
        return dataverse_json_response(body)

    # Helpers

    def _check_access_type(self, request: Request, arguments: str) -> None:
        """Raise DataverseError unless ``arguments`` sets AccessType to an EndpointAccessType literal."""
        name, _, value = arguments.partition("=")
        if name.strip() != "AccessType" or not value.strip():
            raise DataverseError(
                400,
                ODATA_REQUEST_ERROR,
                "RetrieveCurrentOrganization needs the parameter 'AccessType', for example "
                "AccessType=Microsoft.Dynamics.CRM.EndpointAccessType'Default'.",
            )
        value = value.strip()
        if value.startswith("@"):
            aliases = parse_query_options(request.scope["query_string"], allowed=())
            if value not in aliases:
                raise DataverseError(
                    400,
                    ODATA_REQUEST_ERROR,
                    f"The parameter alias '{value}' has no value; add {value}=... to the query string.",
                )
            value = aliases[value]
        if _ACCESS_TYPE_PATTERN.fullmatch(value) is None:
            raise DataverseError(
                400,
                ODATA_REQUEST_ERROR,
                f"The AccessType value {value!r} is not a Microsoft.Dynamics.CRM.EndpointAccessType literal "
                "such as Microsoft.Dynamics.CRM.EndpointAccessType'Default'.",
            )

    def _find_flow(self, key: str) -> tuple[EmulatedFlow, int]:
        try:
            return self._state.get_flow(_parse_key(key))
        except UnknownRecordError:
            raise _not_found("workflow", key) from None

    def _find_session(self, key: str) -> FlowSession:
        try:
            return self._state.get_session(_parse_key(key))
        except UnknownRecordError:
            raise _not_found("flowsession", key) from None

    def _context_url(self, entity_set: str, selected: list[str] | None, *, single: bool = False) -> str:
        columns = f"({','.join(selected)})" if selected else ""
        suffix = "/$entity" if single else ""
        return f"{self._settings.web_api_url}/$metadata#{entity_set}{columns}{suffix}"


def parse_run_request(body: bytes) -> RunRequest:
    """Validate a RunDesktopFlow request body; raise DataverseError (400) naming the first invalid parameter."""
    payload = _parse_json_object(body)

    unknown = [name for name in payload if name not in RUN_PARAMETERS]
    if unknown:
        raise DataverseError(
            400,
            ODATA_REQUEST_ERROR,
            f"The parameter '{unknown[0]}' in the request payload is not a valid parameter for the operation "
            f"'RunDesktopFlow'. Valid parameters: {', '.join(RUN_PARAMETERS)}.",
        )

    run_mode = payload.get("runMode")
    if run_mode is None:
        raise _invalid_parameter(
            "The parameter 'runMode' is required: give 'attended' or 'unattended'.")
    if not isinstance(run_mode, str) or run_mode not in RUN_MODE_CODES:
        raise _invalid_parameter(
            f"The parameter 'runMode' must be 'attended' or 'unattended', got {_json(run_mode)}."
        )

    run_priority = payload.get("runPriority")
    if run_priority is None:
        run_priority = "normal"
    elif not isinstance(run_priority, str) or run_priority not in RUN_PRIORITIES:
        raise _invalid_parameter(
            f"The parameter 'runPriority' must be 'normal' or 'high', got {_json(run_priority)}."
        )

    connection_name = payload.get("connectionName")
    if connection_name is None or connection_name == "":
        raise _invalid_parameter(
            "The parameter 'connectionName' is required: give the desktop flow connection's name, "
            "or a connection reference's logical name with connectionType 2.",
        )
    if not isinstance(connection_name, str) or not connection_name.strip():
        raise _invalid_parameter(
            f"The parameter 'connectionName' must be a non-empty string, got {_json(connection_name)}.",
        )

    connection_type = payload.get("connectionType")
    if connection_type is None:
        connection_type = 1
    elif not _is_integer(connection_type) or connection_type not in CONNECTION_TYPES:
        raise _invalid_parameter(
            "The parameter 'connectionType' must be 1 (connection) or 2 (connection reference), "
            f"got {_json(connection_type)}.",
        )

    timeout = payload.get("timeout")
    if timeout is None:
        timeout = DEFAULT_RUN_TIMEOUT_SECONDS
    elif not _is_integer(timeout) or not 1 <= timeout <= MAX_RUN_TIMEOUT_SECONDS:
        raise _invalid_parameter(
            f"The parameter 'timeout' must be an integer number of seconds from 1 to {MAX_RUN_TIMEOUT_SECONDS}, "
            f"got {_json(timeout)}.",
        )

    inputs = _parse_inputs(payload.get("inputs"))

    callback_url = payload.get("callbackUrl")
    if callback_url is not None and not isinstance(callback_url, str):
        raise _invalid_parameter(
            f"The parameter 'callbackUrl' must be a string URL, got {_json(callback_url)}."
        )

    # NOTE: the emulator stores callbackUrl but never calls it. Dataverse would POST the
    # final status there, and accepts only HTTPS URLs with a public DNS name.
    return RunRequest(
        run_mode=run_mode,
        run_priority=run_priority,
        connection_name=connection_name,
        connection_type=connection_type,
        timeout_seconds=timeout,
        inputs=inputs,
        callback_url=callback_url or None,
    )


def _parse_json_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        raise DataverseError(
            400,
            PAYLOAD_ERROR,
            "The request body is empty; send a JSON object with at least runMode and connectionName.",
        )
    try:
        payload = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataverseError(
            400, PAYLOAD_ERROR, f"Error identified in Payload provided by the user: the body is not valid JSON ({error})."
        ) from None
    if not isinstance(payload, dict):
        raise DataverseError(
            400,
            PAYLOAD_ERROR,
            f"Error identified in Payload provided by the user: the body must be a JSON object, got {_json_type(payload)}.",
        )
    return payload


def _parse_inputs(inputs: Any) -> dict[str, Any]:
    """Read the ``inputs`` parameter: a string that holds a serialized JSON object, at most 2 MB."""
    if inputs is None:
        return {}
    if not isinstance(inputs, str):
        raise _invalid_parameter(
            "The parameter 'inputs' must be a string holding a serialized JSON object, "
            f'such as "{{\\"Input1\\":\\"Value\\"}}", got {_json_type(inputs)}.',
        )
    size = len(inputs.encode("utf-8"))
    if size > MAX_INPUTS_BYTES:
        raise _invalid_parameter(
            f"The parameter 'inputs' is {size} bytes long, over the limit of {MAX_INPUTS_BYTES} bytes (2 MB).",
        )
    try:
        parsed = json.loads(inputs)
    except json.JSONDecodeError as error:
        raise _invalid_parameter(
            f"The parameter 'inputs' does not hold valid JSON ({error}).") from None
    if not isinstance(parsed, dict):
        raise _invalid_parameter(
            f"The parameter 'inputs' must hold a JSON object, got {_json_type(parsed)}."
        )
    return parsed


def _invalid_parameter(message: str) -> DataverseError:
    return DataverseError(400, INVALID_ARGUMENT, message)


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _json(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."


def _json_type(value: Any) -> str:
    if isinstance(value, dict):
        return "a JSON object"
    if isinstance(value, list):
        return "a JSON array"
    if isinstance(value, bool):
        return "a JSON boolean"
    if isinstance(value, (int, float)):
        return "a JSON number"
    if value is None:
        return "null"
    return "a JSON string"


def _parse_key(key: str) -> str:
    """Read the GUID between the parentheses of ``entityset(<key>)``."""
    try:
        return normalize_guid(key.strip(), what="key")
    except ValueError:
        raise DataverseError(
            400, QUERY_SYNTAX_ERROR, f"Bad Request - Error in query syntax: the key '{key}' is not a GUID."
        ) from None


def _not_found(entity: str, key: str) -> DataverseError:
    return DataverseError(404, OBJECT_DOES_NOT_EXIST, f"{entity} With Id = {key.strip()} Does Not Exist")


def _workflow_row(flow: EmulatedFlow, version: int) -> dict[str, Any]:
    return {
        "@odata.etag": f'W/"{version}"',
        "workflowid": flow.workflow_id,
        "name": flow.name,
        "category": flow.category,
        "type": WORKFLOW_DEFINITION_TYPE,
        "uiflowtype": POWER_AUTOMATE_DESKTOP_UIFLOWTYPE if flow.category == DESKTOP_FLOW_CATEGORY else None,
        # A published (activated) workflow has statecode 1 and statuscode 2; a draft has 0 and 1.
        "statecode": 1 if flow.published else 0,
        "statuscode": 2 if flow.published else 1,
        "primaryentity": "none",
        "description": None,
    }


def _project(row: dict[str, Any], selected: list[str] | None, primary_key: str) -> dict[str, Any]:
    """Keep the etag, the selected columns and the primary key, which Dataverse always returns."""
    if selected is None:
        return dict(row)
    projected = {"@odata.etag": row["@odata.etag"]}
    for column in selected:
        projected[column] = row[column]
    projected[primary_key] = row[primary_key]
    return projected


def _schema_document(properties: dict[str, Any]) -> dict[str, Any]:
    return {"schema": {"type": "object", "properties": properties}}


def _session_etag(session: FlowSession) -> str:
    return f'W/"{int(session.modified_at * 1000)}"'


def _status_label(statuscode: int) -> str:
    try:
        return SessionStatus(statuscode).name.replace("_", " ").title().replace(" ", "")
    except ValueError:
        return "Unknown"
