"""Tests of listing flow sessions over HTTPS: In(), date filters, ordering, paging, URL length and read counts."""

from __future__ import annotations

import datetime
import re
import time
from urllib.parse import quote

import pytest
import requests

from airflow_provider_pad.emulator import DESKTOP_FLOW_1_ID, DataverseEmulator, EmulatedFlow, Fault, SessionStatus
from airflow_provider_pad.emulator.dataverse import SESSION_COLUMN_TYPES
from airflow_provider_pad.emulator.flows import SESSION_COLUMNS
from airflow_provider_pad.emulator.odata_filter import MAX_NESTING_DEPTH, parse_datetime_offset
from tests.emulator.webapi import WEB_API_PATH, WebApiClient, collect_pages, request_token

# Runs of this flow stay queued (statuscode 3) unless a test pins another status.
BATCH_FLOW_ID = "c0000000-0000-4000-8000-000000000001"
TIMED_FLOW_ID = "c0000000-0000-4000-8000-000000000002"
RECOVERY_FLOW_ID = "c0000000-0000-4000-8000-000000000003"
PAGED_FLOW_ID = "c0000000-0000-4000-8000-000000000004"
UNKNOWN_ID = "99999999-9999-4999-8999-999999999999"

BATCH_SIZE = 200
# The first this many batch runs are pinned to 2 (Running).
RUNNING_COUNT = 10
PAGED_SIZE = 10
DEFAULT_PAGE_SIZE = 50
DEFAULT_MAX_URL_LENGTH = 32768
ISO_UTC_SECONDS = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")


def in_filter(ids: list[str], column: str = "flowsessionid", function: str = "In") -> str:
    values = ",".join(f"'{value}'" for value in ids)
    return f"Microsoft.Dynamics.CRM.{function}(PropertyName='{column}',PropertyValues=[{values}])"


def ids_of(response: requests.Response) -> list[str]:
    return [row["flowsessionid"] for row in response.json()["value"]]


def list_url(client: WebApiClient, expression: str) -> str:
    return client.url("flowsessions?$filter=" + quote(expression, safe=""))


@pytest.fixture(scope="module")
def module_client(shared_emulator: DataverseEmulator):
    with WebApiClient(shared_emulator, request_token(shared_emulator)) as web_api:
        yield web_api


@pytest.fixture(scope="module")
def batch_ids(shared_emulator: DataverseEmulator, module_client: WebApiClient) -> list[str]:
    shared_emulator.add_flow(EmulatedFlow(name="Queued batch flow", workflow_id=BATCH_FLOW_ID, outcome=3))
    ids = [module_client.start_run(BATCH_FLOW_ID) for _ in range(BATCH_SIZE)]
    for flowsession_id in ids[:RUNNING_COUNT]:
        shared_emulator.set_session_status(flowsession_id, SessionStatus.RUNNING)
    return ids


@pytest.fixture(scope="module")
def timed_runs(
    shared_emulator: DataverseEmulator, module_client: WebApiClient
) -> tuple[str, str, datetime.datetime]:
    """Two runs of one flow created in different seconds: the older id, the newer id, and the second between them."""
    shared_emulator.add_flow(EmulatedFlow(name="Timed flow", workflow_id=TIMED_FLOW_ID))
    older = module_client.start_run(TIMED_FLOW_ID)
    older_created = parse_datetime_offset(module_client.session_row(older)["createdon"])
    since = older_created + datetime.timedelta(seconds=1)
    while time.time() < since.timestamp():
        time.sleep(0.01)
    newer = module_client.start_run(TIMED_FLOW_ID)
    return older, newer, since


@pytest.fixture(scope="module")
def paged_ids(shared_emulator: DataverseEmulator, module_client: WebApiClient) -> list[str]:
    shared_emulator.add_flow(EmulatedFlow(name="Paged flow", workflow_id=PAGED_FLOW_ID, outcome=3))
    return [module_client.start_run(PAGED_FLOW_ID) for _ in range(PAGED_SIZE)]


# Rows


def test_session_column_types_complete():
    assert set(SESSION_COLUMN_TYPES) == set(SESSION_COLUMNS)


def test_list_row_columns(client, batch_ids):
    row = client.get("flowsessions", params={"$filter": f"flowsessionid eq {batch_ids[-1]}"}).json()["value"][0]
    assert row["_regardingobjectid_value"] == BATCH_FLOW_ID
    assert row["triggertype"] == 3
    assert ISO_UTC_SECONDS.fullmatch(row["createdon"])
    assert row["statuscode"] == SessionStatus.WAITING


def test_list_row_etag(client, batch_ids):
    row = client.get("flowsessions", params={"$filter": f"flowsessionid eq {batch_ids[-1]}"}).json()["value"][0]
    assert row["@odata.etag"] == client.session_row(batch_ids[-1])["@odata.etag"]


def test_list_select_shape(client, batch_ids):
    response = client.get(
        "flowsessions",
        params={"$filter": f"flowsessionid eq {batch_ids[0]}", "$select": "statuscode,completedon"},
    )
    assert set(response.json()["value"][0]) == {"@odata.etag", "flowsessionid", "statuscode", "completedon"}
    assert response.json()["@odata.context"].endswith("/$metadata#flowsessions(statuscode,completedon)")


def test_list_regarding_flow(client, batch_ids):
    pages = collect_pages(client, list_url(client, f"_regardingobjectid_value eq {BATCH_FLOW_ID}"), {})
    rows = [row for page in pages for row in page["value"]]
    assert [row["flowsessionid"] for row in rows] == batch_ids
    assert {row["triggertype"] for row in rows} == {3}


def test_list_logged_as_list_sessions(client, emulator):
    client.get("flowsessions", params={"$top": "1"})
    assert emulator.count("list_sessions") == 1
    assert emulator.requests[-1].path == f"{WEB_API_PATH}/flowsessions"


def test_list_fault_injected(client, emulator):
    emulator.inject("list_sessions", Fault(status=503))
    assert client.get("flowsessions").status_code == 503


# Microsoft.Dynamics.CRM.In


def test_in_one_id(client, batch_ids):
    response = client.get("flowsessions", params={"$filter": in_filter(batch_ids[:1])})
    assert response.status_code == 200
    assert ids_of(response) == batch_ids[:1]


def test_in_fifty_ids(client, batch_ids):
    response = client.get("flowsessions", params={"$filter": in_filter(batch_ids[50:100])})
    assert response.status_code == 200
    assert ids_of(response) == batch_ids[50:100]
    assert "@odata.nextLink" not in response.json()


def test_in_two_hundred_ids(client, batch_ids):
    pages = collect_pages(client, list_url(client, in_filter(batch_ids)), {})
    assert [len(page["value"]) for page in pages] == [DEFAULT_PAGE_SIZE] * (BATCH_SIZE // DEFAULT_PAGE_SIZE)
    assert [row["flowsessionid"] for page in pages for row in page["value"]] == batch_ids


def test_in_and_statuscode(client, batch_ids):
    expression = f"{in_filter(batch_ids[:50])} and statuscode eq 2"
    response = client.get("flowsessions", params={"$filter": expression})
    assert response.status_code == 200
    assert ids_of(response) == batch_ids[:RUNNING_COUNT]


def test_in_unknown_id_ignored(client, batch_ids):
    response = client.get("flowsessions", params={"$filter": in_filter([UNKNOWN_ID, batch_ids[3]])})
    assert ids_of(response) == [batch_ids[3]]


def test_in_upper_case_ids(client, batch_ids):
    response = client.get("flowsessions", params={"$filter": in_filter([value.upper() for value in batch_ids[:3]])})
    assert ids_of(response) == batch_ids[:3]


def test_in_parameter_aliases(client, batch_ids):
    values = quote("[" + ",".join(f"'{value}'" for value in batch_ids[:2]) + "]", safe="")
    response = client.get(
        "flowsessions?$filter=Microsoft.Dynamics.CRM.In(PropertyName=@p1,PropertyValues=@p2)"
        f"&@p1='flowsessionid'&@p2={values}"
    )
    assert response.status_code == 200
    assert ids_of(response) == batch_ids[:2]


def test_not_in(client, batch_ids):
    expression = f"_regardingobjectid_value eq {BATCH_FLOW_ID} and {in_filter(batch_ids[5:], function='NotIn')}"
    response = client.get("flowsessions", params={"$filter": expression})
    assert ids_of(response) == batch_ids[:5]


# Dates and times, ordering


LITERAL_FORMATS = {
    "z": lambda moment: moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
    "fraction": lambda moment: moment.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
    "utc-offset": lambda moment: moment.strftime("%Y-%m-%dT%H:%M:%S+00:00"),
    "plus-two-hours": lambda moment: (moment + datetime.timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S+02:00"),
}


@pytest.mark.parametrize("format_name", LITERAL_FORMATS)
def test_createdon_ge_newer_only(client, timed_runs, format_name):
    _, newer, since = timed_runs
    expression = f"_regardingobjectid_value eq {TIMED_FLOW_ID} and createdon ge {LITERAL_FORMATS[format_name](since)}"
    response = client.get("flowsessions", params={"$filter": expression})
    assert response.status_code == 200
    assert ids_of(response) == [newer]


def test_createdon_lt_older_only(client, timed_runs):
    older, _, since = timed_runs
    expression = f"_regardingobjectid_value eq {TIMED_FLOW_ID} and createdon lt {LITERAL_FORMATS['z'](since)}"
    response = client.get("flowsessions", params={"$filter": expression})
    assert ids_of(response) == [older]


def test_orderby_desc_top_one(client, timed_runs):
    _, newer, _ = timed_runs
    params = {
        "$filter": f"_regardingobjectid_value eq {TIMED_FLOW_ID}",
        "$orderby": "createdon desc",
        "$top": "1",
        "$select": "createdon",
    }
    response = client.get("flowsessions", params=params)
    assert ids_of(response) == [newer]


def test_orderby_asc(client, timed_runs):
    older, newer, _ = timed_runs
    params = {"$filter": f"_regardingobjectid_value eq {TIMED_FLOW_ID}", "$orderby": "createdon asc"}
    assert ids_of(client.get("flowsessions", params=params)) == [older, newer]


def test_find_run_after_lost_response(client, emulator):
    emulator.add_flow(EmulatedFlow(name="Recovery flow", workflow_id=RECOVERY_FLOW_ID))
    since = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    emulator.inject("run", Fault(after_handling=True, drop=True))
    with pytest.raises(requests.ConnectionError):
        client.run(RECOVERY_FLOW_ID)

    sessions = emulator.sessions.values()
    created = [session.flowsession_id for session in sessions if session.workflow_id == RECOVERY_FLOW_ID]
    params = {
        "$filter": (
            f"_regardingobjectid_value eq {RECOVERY_FLOW_ID} and triggertype eq 3 "
            f"and createdon ge {since.strftime('%Y-%m-%dT%H:%M:%SZ')}"
        ),
        "$orderby": "createdon desc",
        "$top": "1",
        "$select": "flowsessionid,statuscode,createdon",
    }
    response = client.get("flowsessions", params=params)
    assert len(created) == 1
    assert ids_of(response) == created


# Paging


def test_paging_max_page_size(client, paged_ids):
    pages = collect_pages(
        client, list_url(client, f"_regardingobjectid_value eq {PAGED_FLOW_ID}"), {"Prefer": "odata.maxpagesize=3"}
    )
    assert [len(page["value"]) for page in pages] == [3, 3, 3, 1]
    assert [row["flowsessionid"] for page in pages for row in page["value"]] == paged_ids


def test_paging_next_link(client, emulator, paged_ids):
    response = client.get(
        "flowsessions",
        params={"$filter": f"_regardingobjectid_value eq {PAGED_FLOW_ID}"},
        headers={"Prefer": "odata.maxpagesize=4"},
    )
    next_link = response.json()["@odata.nextLink"]
    assert next_link.startswith(f"{emulator.base_url}{WEB_API_PATH}/flowsessions?")
    assert "skiptoken" in next_link
    assert PAGED_FLOW_ID in next_link
    assert response.headers["Preference-Applied"] == "odata.maxpagesize=4"


def test_paging_keeps_in_filter(client, paged_ids):
    pages = collect_pages(client, list_url(client, in_filter(paged_ids[2:7])), {"Prefer": "odata.maxpagesize=2"})
    assert [row["flowsessionid"] for page in pages for row in page["value"]] == paged_ids[2:7]


def test_top_limits_rows(client, paged_ids):
    response = client.get(
        "flowsessions", params={"$filter": f"_regardingobjectid_value eq {PAGED_FLOW_ID}", "$top": "2"}
    )
    assert ids_of(response) == paged_ids[:2]
    assert "@odata.nextLink" not in response.json()


def test_top_ignored_with_max_page_size(client, paged_ids):
    response = client.get(
        "flowsessions",
        params={"$filter": f"_regardingobjectid_value eq {PAGED_FLOW_ID}", "$top": "2"},
        headers={"Prefer": "odata.maxpagesize=3"},
    )
    assert ids_of(response) == paged_ids[:3]


# Invalid queries


@pytest.mark.parametrize(
    ("expression", "message_part"),
    [
        ("statuscode eq", "Syntax error"),
        ("flowsessionid in ('a')", "Use Microsoft.Dynamics.CRM.In"),
        (in_filter(["not-a-guid"]), "is not a GUID"),
        ("Microsoft.Dynamics.CRM.In(PropertyName='flowsessionid')", "needs the parameter 'PropertyValues'"),
        (in_filter([UNKNOWN_ID], column="sessionid"), "Could not find a property named 'sessionid'"),
        ("createdon ge 2026-12-04", "incompatible types"),
        (f"_regardingobjectid_value eq '{BATCH_FLOW_ID}'", "incompatible types"),
        ("contains(errormessage,'x')", "function 'contains'"),
        ("(" * (MAX_NESTING_DEPTH + 1) + "statuscode eq 2" + ")" * (MAX_NESTING_DEPTH + 1), "more than"),
    ],
    ids=[
        "no-literal",
        "odata-in-operator",
        "in-not-guid",
        "in-no-values",
        "in-unknown-column",
        "date-only",
        "quoted-guid",
        "contains",
        "deep-nesting",
    ],
)
def test_filter_invalid_400(client, expression, message_part):
    response = client.get("flowsessions", params={"$filter": expression})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "0x0"
    assert message_part in response.json()["error"]["message"]


def test_filter_raw_plus_400(client):
    # A '+' left unencoded in a query string decodes to a space, so the offset is lost.
    response = client.get("flowsessions?$filter=createdon%20ge%202026-12-04T21:00:00+00:00")
    assert response.status_code == 400
    assert "%2B" in response.json()["error"]["message"]


def test_select_unknown_400(client):
    response = client.get("flowsessions", params={"$select": "statuscode,status"})
    assert response.status_code == 400
    assert "Could not find a property named 'status'" in response.json()["error"]["message"]


def test_unsupported_option_400(client):
    response = client.get("flowsessions", params={"$count": "true"})
    assert response.status_code == 400
    assert "'$count' is not supported" in response.json()["error"]["message"]


# Status read counts


def test_reads_single_get(client, emulator):
    flowsession_id = client.start_run(DESKTOP_FLOW_1_ID)
    client.session_row(flowsession_id)
    client.session_row(flowsession_id)
    assert emulator.count_session_reads(flowsession_id) == 2


def test_reads_new_run_zero(client, emulator):
    assert emulator.count_session_reads(client.start_run(DESKTOP_FLOW_1_ID)) == 0


def test_reads_list_rows(client, emulator):
    first, second = client.start_run(DESKTOP_FLOW_1_ID), client.start_run(DESKTOP_FLOW_1_ID)
    client.get("flowsessions", params={"$filter": in_filter([first, second])})
    client.get("flowsessions", params={"$filter": in_filter([first])})
    assert emulator.count_session_reads(first) == 2
    assert emulator.count_session_reads(second) == 1


def test_reads_only_returned_page(client, emulator):
    ids = [client.start_run(DESKTOP_FLOW_1_ID) for _ in range(3)]
    client.get("flowsessions", params={"$filter": in_filter(ids)}, headers={"Prefer": "odata.maxpagesize=1"})
    assert [emulator.count_session_reads(flowsession_id) for flowsession_id in ids] == [1, 0, 0]


def test_reads_outputs_not_counted(client, emulator):
    flowsession_id = client.start_run(DESKTOP_FLOW_1_ID)
    client.get(f"flowsessions({flowsession_id})/outputs/$value")
    assert emulator.count_session_reads(flowsession_id) == 0


def test_reads_fault_not_counted(client, emulator):
    flowsession_id = client.start_run(DESKTOP_FLOW_1_ID)
    emulator.inject("get_session", Fault(status=503))
    assert client.get(f"flowsessions({flowsession_id})").status_code == 503
    assert emulator.count_session_reads(flowsession_id) == 0


def test_reads_reset_with_log(client, emulator):
    flowsession_id = client.start_run(DESKTOP_FLOW_1_ID)
    client.session_row(flowsession_id)
    emulator.reset_log()
    assert emulator.count_session_reads(flowsession_id) == 0


def test_reads_unknown_id(emulator):
    with pytest.raises(KeyError):
        emulator.count_session_reads(UNKNOWN_ID)


def test_reads_admin_route(client, emulator, http):
    flowsession_id = client.start_run(DESKTOP_FLOW_1_ID)
    client.session_row(flowsession_id)
    counts = http.get(f"{emulator.base_url}/_emulator/session-reads").json()
    assert counts[flowsession_id] == 1


# URL length


def padded_target(length: int) -> str:
    """Build a flowsessions request target of exactly ``length`` characters, padded by an unused parameter alias."""
    start = f"{WEB_API_PATH}/flowsessions?$select=statuscode&$top=1&@pad="
    return start + "a" * (length - len(start))


def test_url_at_limit_served(client, emulator):
    response = client.session.get(emulator.base_url + padded_target(DEFAULT_MAX_URL_LENGTH), timeout=10)
    record = emulator.requests[-1]
    assert response.status_code == 200
    assert len(record.path) + 1 + len(record.query) == DEFAULT_MAX_URL_LENGTH


def test_url_over_limit_414(client, emulator):
    response = client.session.get(emulator.base_url + padded_target(DEFAULT_MAX_URL_LENGTH + 1), timeout=10)
    assert response.status_code == 414
    assert response.json()["error"]["code"] == "0x0"
    assert f"over the maximum of {DEFAULT_MAX_URL_LENGTH}" in response.json()["error"]["message"]
    assert emulator.count("list_sessions", status=414) == 1


def test_url_far_over_limit_414(client, emulator):
    response = client.session.get(emulator.base_url + padded_target(500_000), timeout=10)
    assert response.status_code == 414


def test_url_limit_before_fault(client, emulator):
    emulator.inject("list_sessions", Fault(status=503))
    too_long = client.session.get(emulator.base_url + padded_target(40_000), timeout=10)
    next_request = client.get("flowsessions", params={"$top": "1"})
    assert too_long.status_code == 414
    assert next_request.status_code == 503


def test_url_limit_before_token(emulator, http):
    assert http.get(emulator.base_url + padded_target(40_000)).status_code == 414


def test_url_limit_configurable():
    with DataverseEmulator(max_url_length=2048) as emulator, WebApiClient(emulator, request_token(emulator)) as client:
        ids = [client.start_run(DESKTOP_FLOW_1_ID) for _ in range(50)]
        whole = client.get("flowsessions", params={"$filter": in_filter(ids)})
        halves = [client.get("flowsessions", params={"$filter": in_filter(part)}) for part in (ids[:25], ids[25:])]
    assert whole.status_code == 414
    assert [half.status_code for half in halves] == [200, 200]
    assert [row_id for half in halves for row_id in ids_of(half)] == ids


def test_max_url_length_invalid():
    with pytest.raises(ValueError, match="max_url_length"):
        DataverseEmulator(max_url_length=0)
