"""Tests of the transport-free request/response core, driven with scripted responses."""

from __future__ import annotations

import json
from urllib.parse import unquote

import pytest

from airflow_provider_pad.exceptions import (
    DataverseApiError,
    DataverseAuthenticationError,
    DataverseNotFoundError,
    DataversePermissionError,
    DataverseThrottledError,
    DesktopFlowConfigurationError,
    DesktopFlowRunMayExistError,
)
from airflow_provider_pad.hooks.dataverse_api import (
    DEFAULT_RETRY_POLICY,
    ApiRequest,
    ApiResponse,
    DataverseApi,
    DataverseConnectionError,
    Sleep,
    check_guid,
    error_from_response,
    parse_outputs,
    quote_odata_literal,
)

ENVIRONMENT = "https://contoso.crm.dynamics.com"
SESSION_ID = "d9687093-d0c0-ec11-983e-0022480b428a"
FLOW_ID = "f091ffab-58bb-4630-a115-659453d56f59"
REQUEST = ApiRequest("GET", f"{ENVIRONMENT}/api/data/v9.2/WhoAmI", "GET WhoAmI")


def respond(status: int, body: object = None, headers: dict | None = None) -> ApiResponse:
    if isinstance(body, (dict, list)):
        content = json.dumps(body).encode()
    elif isinstance(body, str):
        content = body.encode()
    else:
        content = body or b""
    return ApiResponse(status, headers or {}, content)


def drive(operation, responses):
    """Run an operation against a list of responses (or exceptions); return (result, requests, sleeps)."""
    sent, sleeps = [], []
    responses = list(responses)
    instruction = next(operation)
    try:
        while True:
            if isinstance(instruction, Sleep):
                sleeps.append(instruction.seconds)
                instruction = operation.send(None)
                continue
            sent.append(instruction)
            answer = responses.pop(0)
            if isinstance(answer, Exception):
                instruction = operation.throw(answer)
            else:
                instruction = operation.send(answer)
    except StopIteration as stop:
        return stop.value, sent, sleeps


@pytest.fixture
def api():
    return DataverseApi(ENVIRONMENT, "v9.2")


@pytest.mark.parametrize(
    ("name", "literal"),
    [("Invoice's Bot", "'Invoice''s Bot'"), ("plain", "'plain'"), ("''", "''''''")],
)
def test_quote_odata_literal(name, literal):
    assert quote_odata_literal(name) == literal


@pytest.mark.parametrize("name", ["Tom's & Jerry's + #1 100%", "Rechnungsprüfung ÄÖÜ", "日本語フロー"])
def test_flow_name_filter_round_trips(api, name):
    _, sent, _ = drive(api.list_desktop_flows(name=name), [respond(200, {"value": []})])
    query = sent[0].url.split("?", 1)[1]

    raw_filter, raw_select = query.split("&")

    assert raw_select == "$select=name,workflowid"
    assert not set(raw_filter) & set("+# ")
    assert unquote(raw_filter) == f"$filter=category eq 6 and name eq {quote_odata_literal(name)}"


def test_listing_follows_next_link(api):
    next_link = f"{ENVIRONMENT}/api/data/v9.2/workflows?$skiptoken=abc"
    pages = [
        respond(200, {"value": [{"name": "a"}], "@odata.nextLink": next_link}),
        respond(200, {"value": [{"name": "b"}]}),
    ]

    rows, sent, _ = drive(api.list_desktop_flows(), pages)

    assert [row["name"] for row in rows] == ["a", "b"]
    assert sent[1].url == next_link


def test_listing_refuses_next_link_on_other_host(api):
    page = respond(200, {"value": [], "@odata.nextLink": "https://attacker.example/api/data/v9.2/workflows"})

    with pytest.raises(DataverseApiError, match="refusing to send the access token"):
        drive(api.list_desktop_flows(), [page])


def test_unpublished_header_only_when_asked(api):
    _, plain, _ = drive(api.list_desktop_flows(), [respond(200, {"value": []})])
    _, drafts, _ = drive(api.list_desktop_flows(include_unpublished=True), [respond(200, {"value": []})])

    assert "MSCRM.IncludeUnpublished" not in plain[0].headers
    assert drafts[0].headers["MSCRM.IncludeUnpublished"] == "true"


def test_run_body_is_json_with_inputs_string(api):
    body = {"runMode": "unattended", "connectionName": "c", "inputs": '{"a":1}'}
    started, sent, _ = drive(
        api.run_desktop_flow(FLOW_ID, body),
        [respond(200, {"flowsessionId": SESSION_ID, "licenseCheck": {"code": "AttendedNoLicense", "message": "m"}})],
    )

    assert json.loads(sent[0].body) == body
    assert sent[0].idempotent is False
    assert started.flow_session_id == SESSION_ID
    assert started.license_code == "AttendedNoLicense"


def test_lost_run_answer_looks_run_up(api):
    lost = DataverseConnectionError("ReadTimeout", request="POST")
    found = respond(200, {"value": [{"flowsessionid": SESSION_ID}]})

    started, sent, _ = drive(api.run_desktop_flow(FLOW_ID, {}), [lost, found])

    assert started.flow_session_id == SESSION_ID
    assert [request.method for request in sent] == ["POST", "GET"]
    lookup = unquote(sent[1].url)
    assert f"_regardingobjectid_value eq {FLOW_ID} and triggertype eq 3 and createdon ge " in lookup


def test_lost_run_not_found_raises(api):
    lost = DataverseConnectionError("ReadTimeout", request="POST")
    empty = respond(200, {"value": []})

    with pytest.raises(DesktopFlowRunMayExistError, match="no run of the flow created since"):
        drive(api.run_desktop_flow(FLOW_ID, {}), [lost, empty, empty, empty])


def test_run_500_not_looked_up(api):
    with pytest.raises(DataverseApiError, match="HTTP 500"):
        drive(api.run_desktop_flow(FLOW_ID, {}), [respond(500)])


def test_run_retried_after_429(api):
    answers = [respond(429, {"error": {"code": "0x80072322", "message": "limit"}}, {"retry-after": "7"}),
               respond(200, {"flowsessionId": SESSION_ID})]

    started, sent, sleeps = drive(api.run_desktop_flow(FLOW_ID, {}), answers)

    assert started.flow_session_id == SESSION_ID
    assert len(sent) == 2
    assert sleeps == [7.0]


def test_get_retried_after_5xx_and_lost_answer(api):
    answers = [respond(503, "<html>Service Unavailable</html>"), DataverseConnectionError("reset"),
               respond(200, {"statuscode": 2})]

    session, sent, sleeps = drive(api.get_flow_session(SESSION_ID), answers)

    assert session.statuscode == 2
    assert len(sent) == 3
    assert len(sleeps) == 2


def test_get_gives_up_after_max_attempts(api):
    with pytest.raises(DataverseApiError, match="HTTP 500"):
        drive(api.get_flow_session(SESSION_ID), [respond(500)] * DEFAULT_RETRY_POLICY.max_attempts)


def test_401_retried_once_with_fresh_token(api):
    answers = [respond(401), respond(200, {"UserId": "u"})]

    identity, sent, _ = drive(api.who_am_i(), answers)

    assert identity == {"UserId": "u"}
    assert [request.refresh_token for request in sent] == [False, True]


def test_second_401_raises_authentication_error(api):
    with pytest.raises(DataverseAuthenticationError, match="application user"):
        drive(api.who_am_i(), [respond(401), respond(401)])


def test_403_not_retried(api):
    body = {"error": {"code": "0x80040220", "message": "missing prvReadflowsession privilege"}}

    with pytest.raises(DataversePermissionError) as caught:
        drive(api.get_flow_session(SESSION_ID), [respond(403, body)])

    assert caught.value.error_code == "0x80040220"
    assert "prvReadflowsession" in str(caught.value)
    assert SESSION_ID in str(caught.value)


def test_outputs_404_reads_as_empty(api):
    outputs, _, _ = drive(api.get_run_outputs(SESSION_ID), [respond(404)])

    assert outputs == {}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", {}),
        (b"\xef\xbb\xbf{\"a\": 1}", {"a": 1}),
        (json.dumps(json.dumps({"a": {"b": 2}})).encode(), {"a": {"b": 2}}),
        (b'{"text": "{\\"kept\\": true}"}', {"text": '{"kept": true}'}),
    ],
    ids=["empty", "byte-order-mark", "serialized-twice", "nested-string-kept"],
)
def test_parse_outputs(content, expected):
    assert parse_outputs(ApiResponse(200, {}, content), REQUEST) == expected


def test_parse_outputs_rejects_array():
    with pytest.raises(DataverseApiError, match="got list"):
        parse_outputs(ApiResponse(200, {}, b"[1]"), REQUEST)


@pytest.mark.parametrize(
    ("status", "content", "expected_type", "fragment"),
    [
        (502, b"<html><body>Bad Gateway</body></html>", DataverseApiError, "<html><body>Bad Gateway"),
        (500, b"", DataverseApiError, "(empty body)"),
        (500, b"bad\x00\x07 body\x1b", DataverseApiError, "bad body"),
        (404, b'{"error": {"code": "0x80040217", "message": "Does Not Exist"}}', DataverseNotFoundError, "Does Not Exist"),
        (429, b"{}", DataverseThrottledError, "HTTP 429"),
    ],
    ids=["html", "empty", "control-characters", "not-found", "throttled"],
)
def test_error_from_response(status, content, expected_type, fragment):
    error = error_from_response(ApiResponse(status, {}, content), REQUEST)

    assert type(error) is expected_type
    assert fragment in str(error)
    assert f"HTTP {status}" in str(error)


def test_check_guid_rejects_path_characters():
    with pytest.raises(DesktopFlowConfigurationError, match="flow_id"):
        check_guid("abc)/../WhoAmI", "flow_id")


def test_check_guid_accepts_braces():
    assert check_guid("{F091FFAB-58BB-4630-A115-659453D56F59}", "flow_id") == FLOW_ID


def test_failed_lost_run_lookup_raises_may_exist(api):
    lost = DataverseConnectionError("ReadTimeout", request="POST")
    forbidden = respond(403, {"error": {"code": "0x80040220", "message": "missing prvReadflowsession"}})

    with pytest.raises(DesktopFlowRunMayExistError, match="looking for the run it may have created failed too"):
        drive(api.run_desktop_flow(FLOW_ID, {}), [lost, forbidden])
