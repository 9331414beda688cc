"""Requests and responses of the Dataverse desktop-flow API, written once for both transports.

Each operation is a generator that yields :class:`ApiRequest` or :class:`Sleep` instructions and
receives an :class:`ApiResponse` for each request. It does no I/O itself: the synchronous hook drives
it with ``requests`` and ``time.sleep``, the asynchronous one with ``httpx`` and ``asyncio.sleep``.
URL building, OData quoting, JSON bodies, paging, retries and error parsing therefore exist once.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import random
import re
import time
import uuid
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

from airflow_provider_pad.exceptions import (
    DataverseApiError,
    DataverseAuthenticationError,
    DataverseNotFoundError,
    DataversePermissionError,
    DataverseThrottledError,
    DesktopFlowConfigurationError,
    DesktopFlowRunMayExistError,
)
from airflow_provider_pad.flowsession import FlowSession

log = logging.getLogger(__name__)

T = TypeVar("T")

ODATA_HEADERS = {
    "Accept": "application/json",
    "OData-MaxVersion": "4.0",
    "OData-Version": "4.0",
}
JSON_CONTENT_TYPE = "application/json; charset=utf-8"

DESKTOP_FLOW_CATEGORY = 6
FLOWSESSION_COLUMNS = "statuscode,statecode,startedon,completedon,errorcode,errormessage"

ERROR_BODY_PREVIEW_CHARS = 300
RETRYABLE_STATUSES = frozenset({500, 502, 503, 504})
# Gateway statuses after which a POST may or may not have reached Dataverse.
AMBIGUOUS_SUBMIT_STATUSES = frozenset({502, 504})
LOST_RUN_CLOCK_MARGIN_SECONDS = 60
LOST_RUN_LOOKUPS = 3
LOST_RUN_LOOKUP_INTERVAL_SECONDS = 2.0

_CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


@dataclass(frozen=True)
class ApiRequest:
    """One HTTP request to the environment; the transport adds the ``Authorization`` header.

    :param description: method and path for logs and errors, for example ``GET flowsessions(<id>)``.
    :param idempotent: whether sending it twice is harmless, so a request that got no response may be retried.
    :param refresh_token: ask the transport for a new token instead of a cached one.
    """

    method: str
    url: str
    description: str
    headers: Mapping[str, str] = field(default_factory=lambda: dict(ODATA_HEADERS))
    body: bytes | None = None
    idempotent: bool = True
    refresh_token: bool = False


@dataclass(frozen=True)
class ApiResponse:
    """The parts of an HTTP response the operations read; header names are lower case."""

    status_code: int
    headers: Mapping[str, str]
    content: bytes


@dataclass(frozen=True)
class Sleep:
    """Ask the transport to wait before the next request."""

    seconds: float


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry a request that failed in a way that may pass.

    :param max_attempts: attempts in total, the first included.
    :param backoff_base_seconds: the first backoff ceiling; it doubles with each attempt.
    :param backoff_max_seconds: the highest backoff ceiling.
    :param deadline: wall-clock time (epoch seconds) that no wait may pass; a retry that would have
        to wait beyond it raises the last error instead. None means no deadline.
    :param max_wait_seconds: the longest single wait, ``Retry-After`` included; a longer one raises.
    """

    max_attempts: int = 5
    backoff_base_seconds: float = 1.0
    backoff_max_seconds: float = 30.0
    deadline: float | None = None
    max_wait_seconds: float = 300.0

    def passes_deadline(self, delay_seconds: float) -> bool:
        """Return whether waiting ``delay_seconds`` from now is too long: past the deadline or the cap."""
        if delay_seconds > self.max_wait_seconds:
            return True
        return self.deadline is not None and time.time() + delay_seconds > self.deadline

    def backoff_seconds(self, attempt: int) -> float:
        """Capped exponential backoff with jitter for the given 1-based attempt."""
        ceiling = min(self.backoff_max_seconds, self.backoff_base_seconds * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)


DEFAULT_RETRY_POLICY = RetryPolicy()


class DataverseConnectionError(DataverseApiError):
    """The request got no HTTP response: connection refused or reset, TLS failure, or a timeout."""

    def __init__(self, message: str, *, request: str = ""):
        super().__init__(f"no response: {message}", status_code=None, request=request)


Operation = Generator["ApiRequest | Sleep", "ApiResponse | None", T]


@dataclass(frozen=True)
class RunStarted:
    """The response of RunDesktopFlow: the new run's flowsession id and Dataverse's license check."""

    flow_session_id: str
    license_code: str | None = None
    license_message: str | None = None


class DataverseApi:
    """Builds the requests of one environment and parses their responses.

    :param environment_url: origin of the environment, for example ``https://contoso.crm.dynamics.com``.
    :param api_version: Web API version, for example ``v9.2``.
    :param retry_policy: attempts and backoff for throttled, failed or unanswered requests.
    """

    def __init__(self, environment_url: str, api_version: str, retry_policy: RetryPolicy = DEFAULT_RETRY_POLICY):
        self.environment_url = environment_url.rstrip("/")
        self.api_root = f"{self.environment_url}/api/data/{api_version}/"
        self.retry_policy = retry_policy

    # Endpoints -----------------------------------------------------------------------------------

    def list_desktop_flows(
        self, *, name: str | None = None, include_unpublished: bool = False
    ) -> Operation[list[dict[str, Any]]]:
        """List desktop flows (``category`` 6), optionally only those with exactly ``name``."""
        clauses = [f"category eq {DESKTOP_FLOW_CATEGORY}"]
        if name is not None:
            clauses.append(f"name eq {quote_odata_literal(name)}")
        url = self._url("workflows", {"$filter": " and ".join(clauses), "$select": "name,workflowid"})
        headers = dict(ODATA_HEADERS)
        headers["Prefer"] = "odata.maxpagesize=500"
        if include_unpublished:
            headers["MSCRM.IncludeUnpublished"] = "true"

        rows: list[dict[str, Any]] = []
        while url:
            request = ApiRequest("GET", url, "GET workflows", headers=headers)
            page = parse_json_object((yield from self.exchange(request)), request)
            rows.extend(page.get("value") or [])
            url = page.get("@odata.nextLink") or ""
            if url:
                self.check_same_origin(url)
        return rows

    def get_flow_schema(self, flow_id: str, kind: str) -> Operation[dict[str, Any]]:
        """Read a flow's ``inputs`` or ``outputs`` schema; an empty file reads as an empty schema."""
        if kind not in ("inputs", "outputs"):
            raise ValueError(f"kind must be 'inputs' or 'outputs', not {kind!r}")
        flow_id = check_guid(flow_id, "flow_id")
        request = ApiRequest("GET", self._url(f"workflows({flow_id})/{kind}/$value"), f"GET {kind} schema of flow {flow_id}")
        document = parse_json_object((yield from self.exchange(request)), request)
        return document.get("schema") or {}

    def run_desktop_flow(self, flow_id: str, body: dict[str, Any]) -> Operation[RunStarted]:
        """Start a run. The request is not idempotent, so a lost response is never blindly resent.

        After a timeout, a dropped connection, a 502 or a 504, Dataverse may have created the run
        anyway. The run is then looked up (see :meth:`find_lost_run`) instead of being started again.
        """
        flow_id = check_guid(flow_id, "flow_id")
        submitted_at = time.time()
        request = ApiRequest(
            "POST",
            self._url(f"workflows({flow_id})/Microsoft.Dynamics.CRM.RunDesktopFlow"),
            f"POST RunDesktopFlow for flow {flow_id}",
            headers={**ODATA_HEADERS, "Content-Type": JSON_CONTENT_TYPE},
            body=json.dumps(body, ensure_ascii=False).encode("utf-8"),
            idempotent=False,
        )
        try:
            response = yield from self.exchange(request)
        except DataverseApiError as error:
            if not (isinstance(error, DataverseConnectionError) or error.status_code in AMBIGUOUS_SUBMIT_STATUSES):
                raise
            return (yield from self.find_lost_run(flow_id, submitted_at, error))
        document = parse_json_object(response, request)
        flow_session_id = document.get("flowsessionId") or document.get("flowsessionid")
        if not flow_session_id:
            raise DataverseApiError(
                f"the response has no flowsessionId: {preview_body(json.dumps(document).encode())}",
                status_code=200,
                request=request.description,
            )
        license_check = document.get("licenseCheck") or {}
        return RunStarted(
            flow_session_id=str(flow_session_id),
            license_code=license_check.get("code"),
            license_message=license_check.get("message"),
        )

    def find_lost_run(self, flow_id: str, submitted_at: float, error: DataverseApiError) -> Operation[RunStarted]:
        """Find the run a RunDesktopFlow request created when its response was lost.

        Looks for flowsessions of the flow started through the API (``triggertype`` 3) since shortly
        before ``submitted_at``, a few times, because a new row may take a moment to be readable.
        Exactly one match is the run; none or several raise :class:`DesktopFlowRunMayExistError`.
        """
        log.warning(
            "RunDesktopFlow for flow %s may have started a run despite the error (%s); looking for it.",
            flow_id, error,
        )
        # createdon has whole seconds and the two clocks may differ, so the window opens earlier.
        since = datetime.datetime.fromtimestamp(
            math.floor(submitted_at) - LOST_RUN_CLOCK_MARGIN_SECONDS, tz=datetime.timezone.utc
        ).strftime("%Y-%m-%dT%H:%M:%SZ")
        query = {
            "$select": "flowsessionid,createdon,statuscode",
            "$filter": f"_regardingobjectid_value eq {flow_id} and triggertype eq 3 and createdon ge {since}",
            "$orderby": "createdon desc",
        }
        request = ApiRequest("GET", self._url("flowsessions", query), f"GET flowsessions of flow {flow_id}")

        where = (
            f"Check the flow's run history in the Power Automate portal, or query flowsessions with "
            f"$filter=_regardingobjectid_value eq {flow_id} and createdon ge {since}, before running the task again."
        )
        rows: list[dict[str, Any]] = []
        for lookup in range(LOST_RUN_LOOKUPS):
            if lookup:
                yield Sleep(LOST_RUN_LOOKUP_INTERVAL_SECONDS)
            try:
                rows = parse_json_object((yield from self.exchange(request)), request).get("value") or []
            except DataverseApiError as lookup_error:
                raise DesktopFlowRunMayExistError(
                    f"RunDesktopFlow for flow {flow_id} failed ({error}), and looking for the run it may have "
                    f"created failed too ({lookup_error}). {where}"
                ) from None
            if rows:
                break

        if not rows:
            raise DesktopFlowRunMayExistError(
                f"RunDesktopFlow for flow {flow_id} failed ({error}) and no run of the flow created since {since} "
                f"was found, but one may still appear. {where}"
            )
        if len(rows) > 1:
            ids = ", ".join(str(row.get("flowsessionid")) for row in rows)
            raise DesktopFlowRunMayExistError(
                f"RunDesktopFlow for flow {flow_id} failed ({error}) and {len(rows)} runs of the flow were created "
                f"since {since} ({ids}); which one this request started is unknown. {where}"
            )
        flow_session_id = str(rows[0]["flowsessionid"])
        log.warning("Attached to run %s, which the lost RunDesktopFlow request created.", flow_session_id)
        return RunStarted(flow_session_id=flow_session_id)

    def get_flow_sessions(self, flow_session_ids: list[str]) -> Operation[dict[str, FlowSession]]:
        """Read many runs' status columns in one query; runs Dataverse did not return are absent.

        Callers keep the id list short (about 50 ids make a 2.5 KB URL), because Dataverse limits
        URLs to 32 KB.
        """
        ids = [check_guid(flow_session_id, "flow_session_id") for flow_session_id in flow_session_ids]
        values = ",".join(f"'{flow_session_id}'" for flow_session_id in ids)
        query = {
            "$select": f"flowsessionid,{FLOWSESSION_COLUMNS}",
            "$filter": f"Microsoft.Dynamics.CRM.In(PropertyName='flowsessionid',PropertyValues=[{values}])",
        }
        url = self._url("flowsessions", query)
        sessions: dict[str, FlowSession] = {}
        while url:
            request = ApiRequest("GET", url, f"GET flowsessions ({len(ids)} runs)")
            page = parse_json_object((yield from self.exchange(request)), request)
            for row in page.get("value") or []:
                session = FlowSession.from_row(str(row.get("flowsessionid")), row)
                sessions[session.flow_session_id] = session
            url = page.get("@odata.nextLink") or ""
            if url:
                self.check_same_origin(url)
        return sessions

    def get_flow_session(self, flow_session_id: str) -> Operation[FlowSession]:
        flow_session_id = check_guid(flow_session_id, "flow_session_id")
        request = ApiRequest(
            "GET",
            self._url(f"flowsessions({flow_session_id})", {"$select": FLOWSESSION_COLUMNS}),
            f"GET flowsessions({flow_session_id})",
        )
        row = parse_json_object((yield from self.exchange(request)), request)
        return FlowSession.from_row(flow_session_id, row)

    def get_run_outputs(self, flow_session_id: str) -> Operation[dict[str, Any]]:
        """Read a run's outputs; a run of a flow without outputs reads as ``{}``."""
        flow_session_id = check_guid(flow_session_id, "flow_session_id")
        request = ApiRequest(
            "GET",
            self._url(f"flowsessions({flow_session_id})/outputs/$value"),
            f"GET outputs of flowsessions({flow_session_id})",
        )
        try:
            response = yield from self.exchange(request)
        except DataverseNotFoundError:
            # Dataverse has no outputs file for a flow that declares no outputs.
            log.info("Desktop flow run %s has no outputs file; its outputs are {}.", flow_session_id)
            return {}
        return parse_outputs(response, request)

    def cancel_run(self, flow_session_id: str) -> Operation[None]:
        flow_session_id = check_guid(flow_session_id, "flow_session_id")
        request = ApiRequest(
            "POST",
            self._url(f"flowsessions({flow_session_id})/Microsoft.Dynamics.CRM.CancelDesktopFlowRun"),
            f"POST CancelDesktopFlowRun for flowsessions({flow_session_id})",
            headers={**ODATA_HEADERS, "Content-Type": JSON_CONTENT_TYPE},
            body=b"{}",
        )
        yield from self.exchange(request)

    def who_am_i(self) -> Operation[dict[str, Any]]:
        request = ApiRequest("GET", self._url("WhoAmI"), "GET WhoAmI")
        return parse_json_object((yield from self.exchange(request)), request)

    def retrieve_current_organization(self) -> Operation[dict[str, Any]]:
        """Read the organization's details, among them ``EnvironmentId`` for portal links."""
        request = ApiRequest(
            "GET",
            self._url(
                "RetrieveCurrentOrganization(AccessType=@p1)",
                {"@p1": "Microsoft.Dynamics.CRM.EndpointAccessType'Default'"},
            ),
            "GET RetrieveCurrentOrganization",
        )
        document = parse_json_object((yield from self.exchange(request)), request)
        return document.get("Detail") or {}

    # The exchange loop ---------------------------------------------------------------------------

    def exchange(self, request: ApiRequest) -> Operation[ApiResponse]:
        """Send one request, retrying what is safe to retry, and return a successful response.

        A 401 is retried once with a fresh token. 429 waits ``Retry-After`` seconds (or backs off).
        5xx responses and lost connections are retried with backoff, the latter only for idempotent
        requests, because a POST that got no response may have taken effect.
        """
        self.check_same_origin(request.url)
        policy = self.retry_policy
        refreshed = False
        attempt = 1
        while True:
            try:
                response = yield request
            except DataverseConnectionError as error:
                if not request.idempotent or attempt >= policy.max_attempts:
                    raise
                delay = policy.backoff_seconds(attempt)
                if policy.passes_deadline(delay):
                    raise
                log.warning(
                    "%s got no response (attempt %d of %d): %s. Retrying in %.1f s.",
                    request.description, attempt, policy.max_attempts, error.error_message, delay,
                )
                yield Sleep(delay)
                attempt += 1
                continue

            assert response is not None
            if response.status_code < 400:
                return response

            if response.status_code == 401 and not refreshed:
                log.info("%s returned HTTP 401. Retrying once with a new access token.", request.description)
                refreshed = True
                request = _with_token_refresh(request)
                continue

            error = error_from_response(response, request)
            retryable = isinstance(error, DataverseThrottledError) or (
                response.status_code in RETRYABLE_STATUSES and request.idempotent
            )
            if not retryable or attempt >= policy.max_attempts:
                raise error

            delay = policy.backoff_seconds(attempt)
            if isinstance(error, DataverseThrottledError) and error.retry_after_seconds is not None:
                delay = error.retry_after_seconds
            if policy.passes_deadline(delay):
                error.add_note(
                    f"A retry in {delay:.1f} s would pass the task's deadline or the {policy.max_wait_seconds:g} s "
                    "wait limit, so none was made."
                )
                raise error
            log.warning(
                "%s returned HTTP %d (attempt %d of %d). Retrying in %.1f s.",
                request.description, response.status_code, attempt, policy.max_attempts, delay,
            )
            yield Sleep(delay)
            attempt += 1

    # Helpers -------------------------------------------------------------------------------------

    def check_same_origin(self, url: str) -> None:
        """Raise unless ``url`` is on the environment's origin, so the bearer token goes nowhere else."""
        expected = urlsplit(self.environment_url)
        actual = urlsplit(url)
        if (actual.scheme, actual.netloc.lower()) != (expected.scheme, expected.netloc.lower()):
            raise DataverseApiError(
                f"refusing to send the access token to {actual.scheme}://{actual.netloc}, which is not the "
                f"connection's environment {self.environment_url}.",
                status_code=None,
                request=f"GET {url}",
            )

    def _url(self, path: str, query: Mapping[str, str] | None = None) -> str:
        url = self.api_root + path
        if query:
            url += "?" + "&".join(f"{key}={quote(value, safe=QUERY_SAFE_CHARACTERS)}" for key, value in query.items())
        return url


# Characters left readable in query values: OData punctuation that never needs escaping there.
QUERY_SAFE_CHARACTERS = "',()@.:"


def _with_token_refresh(request: ApiRequest) -> ApiRequest:
    return ApiRequest(
        request.method,
        request.url,
        request.description,
        headers=request.headers,
        body=request.body,
        idempotent=request.idempotent,
        refresh_token=True,
    )


def quote_odata_literal(value: str) -> str:
    """Quote a string for an OData ``$filter``: single quotes doubled, the whole in single quotes.

    The result is percent-encoded later, once, with the rest of the query.
    """
    return "'" + value.replace("'", "''") + "'"


def check_guid(value: str, argument: str) -> str:
    """Return ``value`` as a canonical GUID string, or raise naming the argument."""
    try:
        return str(uuid.UUID(str(value).strip().strip("{}")))
    except ValueError:
        raise DesktopFlowConfigurationError(
            f"{argument} {value!r} is not a GUID; copy the id from Dataverse or the Power Automate portal, "
            "for example 'f091ffab-58bb-4630-a115-659453d56f59'."
        ) from None


def parse_retry_after(value: str | None) -> float | None:
    """Read a ``Retry-After`` header given in seconds; Dataverse does not send HTTP dates."""
    if not value:
        return None
    try:
        return max(0.0, float(value.strip()))
    except ValueError:
        return None


def decode_json(content: bytes) -> Any:
    """Decode a JSON body, tolerating a UTF-8 byte-order mark; an empty body decodes to None."""
    text = content.decode("utf-8-sig").strip()
    if not text:
        return None
    return json.loads(text)


def parse_json_object(
    response: ApiResponse, request: ApiRequest, *, what: str = "the response", unwrap_string: bool = False
) -> dict[str, Any]:
    """Return the response body as a JSON object; an empty body is ``{}``.

    :param what: names the body in errors, for example ``the outputs``.
    :param unwrap_string: also accept an object serialized twice (a JSON string containing it).
    """
    try:
        document = decode_json(response.content)
        if unwrap_string and isinstance(document, str) and document.strip().startswith("{"):
            document = json.loads(document)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise DataverseApiError(
            f"{what} is not JSON: {preview_body(response.content)}",
            status_code=response.status_code,
            request=request.description,
        ) from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise DataverseApiError(
            f"expected {what} to be a JSON object, got {type(document).__name__}: {preview_body(response.content)}",
            status_code=response.status_code,
            request=request.description,
        )
    return document


def parse_outputs(response: ApiResponse, request: ApiRequest) -> dict[str, Any]:
    """Return a run's outputs as a dict.

    Accepts an empty body (no outputs), a byte-order mark, and an object serialized twice (a JSON
    string that contains the object). Values inside the object are returned as they are.
    """
    return parse_json_object(response, request, what="the outputs", unwrap_string=True)


def preview_body(content: bytes) -> str:
    """Return the start of a body as readable text: control characters removed, length capped."""
    if not content.strip():
        return "(empty body)"
    text = _CONTROL_CHARACTERS.sub("", content.decode("utf-8", errors="replace")).strip()
    text = " ".join(text.split())
    if len(text) > ERROR_BODY_PREVIEW_CHARS:
        text = text[:ERROR_BODY_PREVIEW_CHARS] + "..."
    return text


def error_from_response(response: ApiResponse, request: ApiRequest) -> DataverseApiError:
    """Turn an error response into the matching exception, whether its body is Dataverse JSON or not."""
    code = ""
    message = ""
    try:
        document = decode_json(response.content)
    except (UnicodeDecodeError, json.JSONDecodeError):
        document = None
    if isinstance(document, dict) and isinstance(document.get("error"), dict):
        code = str(document["error"].get("code") or "")
        message = _CONTROL_CHARACTERS.sub("", str(document["error"].get("message") or "")).strip()
    if not message:
        message = preview_body(response.content)

    arguments: dict[str, Any] = {
        "status_code": response.status_code,
        "error_code": code,
        "request": request.description,
    }
    status = response.status_code
    if status == 401:
        return DataverseAuthenticationError(message, **arguments)
    if status == 403:
        return DataversePermissionError(message, **arguments)
    if status == 404:
        return DataverseNotFoundError(message, **arguments)
    if status == 429:
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        return DataverseThrottledError(message, retry_after_seconds=retry_after, **arguments)
    return DataverseApiError(message, **arguments)


def build_run_body(
    *,
    connection_name: str,
    connection_type: int,
    run_mode: str,
    run_priority: str,
    inputs_json: str | None,
    run_timeout_seconds: int | None,
    callback_url: str | None,
) -> dict[str, Any]:
    """Build a RunDesktopFlow request body; ``inputs`` travels as a string holding a JSON object."""
    body: dict[str, Any] = {
        "runMode": run_mode,
        "runPriority": run_priority,
        "connectionName": connection_name,
        "connectionType": connection_type,
    }
    if run_timeout_seconds is not None:
        body["timeout"] = run_timeout_seconds
    if inputs_json is not None:
        body["inputs"] = inputs_json
    if callback_url:
        body["callbackUrl"] = callback_url
    return body
