"""Route handlers of the emulated Dataverse Web API: desktop flows, their runs, and the connection-test functions."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from airflow_provider_pad.emulator.flows import (
    DESKTOP_FLOW_CATEGORY,
    POWER_AUTOMATE_DESKTOP_UIFLOWTYPE,
    SESSION_COLUMNS,
    EmulatedFlow,
    FlowSession,
    SessionStatus,
    normalize_guid,
)
from airflow_provider_pad.emulator.identifiers import BUSINESS_UNIT_ID, ENVIRONMENT_ID, ORGANIZATION_ID, USER_ID
from airflow_provider_pad.emulator.odata import (
    ColumnType,
    Row,
    build_query_string,
    decode_skiptoken,
    encode_skiptoken,
    parse_max_page_size,
    parse_orderby,
    parse_query_options,
    parse_select,
    parse_top,
    sort_rows,
)
from airflow_provider_pad.emulator.odata_filter import Predicate, parse_filter
from airflow_provider_pad.emulator.responses import (
    INVALID_ARGUMENT,
    OBJECT_DOES_NOT_EXIST,
    ODATA_REQUEST_ERROR,
    QUERY_SYNTAX_ERROR,
    DataverseError,
    dataverse_json_response,
)
from airflow_provider_pad.emulator.run_request import parse_run_request
from airflow_provider_pad.emulator.state import EmulatorSettings, EmulatorState, UnknownRecordError

logger = logging.getLogger("airflow_provider_pad.emulator")

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

SESSION_COLUMN_TYPES = {
    "flowsessionid": ColumnType.GUID,
    "statuscode": ColumnType.INT32,
    "statecode": ColumnType.INT32,
    "createdon": ColumnType.DATETIME_OFFSET,
    "modifiedon": ColumnType.DATETIME_OFFSET,
    "startedon": ColumnType.DATETIME_OFFSET,
    "completedon": ColumnType.DATETIME_OFFSET,
    "errorcode": ColumnType.STRING,
    "errormessage": ColumnType.STRING,
    "errordetails": ColumnType.STRING,
    "_regardingobjectid_value": ColumnType.GUID,
    "triggertype": ColumnType.INT32,
    "runmode": ColumnType.INT32,
}

COLLECTION_QUERY_OPTIONS = frozenset({"$filter", "$select", "$orderby", "$top", "$skiptoken"})

# workflow.type 1 is a definition, as opposed to an activation or a template.
WORKFLOW_DEFINITION_TYPE = 1

_ACCESS_TYPE_PATTERN = re.compile(r"Microsoft\.Dynamics\.CRM\.EndpointAccessType'(?P<value>Default|Internet|Intranet)'")


@dataclass(frozen=True)
class CollectionQuery:
    """The query options and paging preference of one ``GET <entity set>`` request."""

    options: dict[str, str]
    selected: list[str] | None
    predicate: Predicate
    ordering: list[tuple[str, bool]]
    top: int | None
    requested_page_size: int | None
    page_number: int
    offset: int


def parse_collection_query(request: Request, columns: dict[str, ColumnType], entity: str) -> CollectionQuery:
    """Read $filter (with parameter aliases), $select, $orderby, $top, $skiptoken and ``Prefer: odata.maxpagesize``."""
    options = parse_query_options(request.scope["query_string"], allowed=COLLECTION_QUERY_OPTIONS)
    aliases = {name: value for name, value in options.items() if name.startswith("@")}
    page_number, offset = decode_skiptoken(options.get("$skiptoken"))
    return CollectionQuery(
        options=options,
        selected=parse_select(options.get("$select"), columns, entity),
        predicate=parse_filter(options.get("$filter"), columns, entity, aliases),
        ordering=parse_orderby(options.get("$orderby"), columns, entity),
        top=parse_top(options.get("$top")),
        requested_page_size=parse_max_page_size(request.headers.getlist("prefer")),
        page_number=page_number,
        offset=offset,
    )


class DataverseApi:
    """Route handlers of the Web API under ``/api/data/v9.2/``. The caller has already checked the token."""

    def __init__(self, settings: EmulatorSettings, state: EmulatorState) -> None:
        self._settings = settings
        self._state = state

    # Workflows

    async def list_workflows(self, request: Request) -> Response:
        """Serve ``GET workflows`` with $filter, $select, $orderby, $top and server-driven paging."""
        query = parse_collection_query(request, WORKFLOW_COLUMN_TYPES, "workflow")
        include_unpublished = request.headers.get("MSCRM.IncludeUnpublished", "").strip().lower() == "true"
        rows = [
            _workflow_row(flow, version)
            for flow, version in self._state.flow_rows()
            if flow.published or include_unpublished
        ]
        response, _ = self._collection_page("workflows", "workflowid", rows, query)
        return response

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
            "licenseCheck": dict(flow.license_check or LICENSE_CHECK),
        }
        return dataverse_json_response(body)

    # Flow sessions

    async def list_sessions(self, request: Request) -> Response:
        """
        Serve ``GET flowsessions`` with $filter, $select, $orderby, $top and server-driven paging.

        $filter also takes ``Microsoft.Dynamics.CRM.In(PropertyName='flowsessionid',PropertyValues=[...])``,
        so that a client can read the status of many runs in one request. Each row on the
        returned page counts as one status read of its session.

        ``createdon`` has whole seconds, so runs created within the same second compare equal in
        $filter and $orderby. Ties keep creation order.
        """
        query = parse_collection_query(request, SESSION_COLUMN_TYPES, "flowsession")
        rows = [_session_row(session) for session in self._state.sessions().values()]
        response, page = self._collection_page("flowsessions", "flowsessionid", rows, query)
        self._state.record_session_reads(row["flowsessionid"] for row in page)
        return response

    async def get_session(self, request: Request, key: str) -> Response:
        """Serve ``GET flowsessions(<id>)`` with optional $select. Each response counts as one status read."""
        options = parse_query_options(request.scope["query_string"], allowed={"$select"})
        selected = parse_select(options.get("$select"), SESSION_COLUMNS, "flowsession")
        session = self._find_session(key)
        self._state.record_session_reads([session.flowsession_id])
        row = _session_row(session)
        body = {
            "@odata.context": self._context_url("flowsessions", selected, single=True),
            **_project(row, selected, "flowsessionid"),
        }
        return dataverse_json_response(body)

    async def session_outputs(self, request: Request, key: str) -> Response:
        """
        Serve ``GET flowsessions(<id>)/outputs/$value``.

        The outputs file exists only once a run of a flow with outputs has succeeded. Before
        that, and for runs that did not succeed or flows without outputs, the response is
        200 with an empty body, the same as for a flow that writes no outputs.
        """
        session = self._find_session(key)
        if session.statuscode != SessionStatus.SUCCEEDED or session.outputs is None:
            # NOTE: what Dataverse sends for an empty outputs file column is not documented.
            # It may be 204 or 404 instead of an empty 200.
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
        """Serve ``GET WhoAmI``: the ids of the application user the token represents."""
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
                    f"The parameter alias '{value}' has no value. Add {value}=... to the query string.",
                )
            value = aliases[value]
        if _ACCESS_TYPE_PATTERN.fullmatch(value) is None:
            raise DataverseError(
                400,
                ODATA_REQUEST_ERROR,
                f"The AccessType value {value!r} is not a Microsoft.Dynamics.CRM.EndpointAccessType literal "
                "such as Microsoft.Dynamics.CRM.EndpointAccessType'Default'.",
            )

    def _collection_page(
        self, entity_set: str, primary_key: str, rows: Sequence[Row], query: CollectionQuery
    ) -> tuple[Response, list[Row]]:
        """Filter, sort and page ``rows`` for ``query``. Return the response and the rows on its page."""
        rows = sort_rows([row for row in rows if query.predicate(row)], query.ordering)

        # Dataverse ignores $top when the client asks for pages with odata.maxpagesize.
        if query.top is not None and query.requested_page_size is None:
            rows = rows[: query.top]

        page_size = min(query.requested_page_size or self._settings.page_size, self._settings.page_size)
        page = rows[query.offset : query.offset + page_size]
        body: dict[str, Any] = {
            "@odata.context": self._context_url(entity_set, query.selected),
            "value": [_project(row, query.selected, primary_key) for row in page],
        }
        if query.offset + page_size < len(rows):
            next_options = {name: value for name, value in query.options.items() if name != "$skiptoken"}
            next_options["$skiptoken"] = encode_skiptoken(query.page_number + 1, query.offset + page_size)
            body["@odata.nextLink"] = f"{self._settings.web_api_url}/{entity_set}?{build_query_string(next_options)}"

        headers = {}
        if query.requested_page_size is not None:
            headers["Preference-Applied"] = f"odata.maxpagesize={page_size}"
        return dataverse_json_response(body, headers=headers), page

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
        # A published (activated) workflow has statecode 1 and statuscode 2, and a draft has 0 and 1.
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


def _session_row(session: FlowSession) -> dict[str, Any]:
    return {"@odata.etag": _session_etag(session), **session.to_row()}


def _session_etag(session: FlowSession) -> str:
    return f'W/"{int(session.modified_at * 1000)}"'


def _status_label(statuscode: int) -> str:
    try:
        return SessionStatus(statuscode).name.replace("_", " ").title().replace(" ", "")
    except ValueError:
        return "Unknown"
