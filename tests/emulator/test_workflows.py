"""Tests of listing desktop flows and reading their schemas over HTTPS."""

from __future__ import annotations

import ssl
from urllib.parse import quote

import httpx
import pytest

from airflow_provider_pad.emulator import (
    DESKTOP_FLOW_1_ID,
    DRAFT_FLOW_ID,
    FAILING_FLOW_ID,
    DataverseEmulator,
    EmulatedFlow,
)
from tests.emulator.webapi import WEB_API_PATH, WebApiClient, collect_pages, request_token

DEFAULT_PUBLISHED_NAMES = ["Desktop flow 1", "Desktop flow 2", "Failing desktop flow", "Flow without outputs"]
SPECIAL_NAMES = [
    "Invoice's Bot",
    "R&D report",
    "C++ build",
    "Tag #1",
    "100% done",
    "Überweisung prüfen",
    "日本語のフロー",
    "It''s doubled",
    "a=b;c?d/e",
]
SPECIAL_IDS = [f"a0000000-0000-4000-8000-{index:012d}" for index in range(len(SPECIAL_NAMES))]


@pytest.fixture(scope="module", autouse=True)
def special_flows(shared_emulator: DataverseEmulator):
    for workflow_id, name in zip(SPECIAL_IDS, SPECIAL_NAMES):
        shared_emulator.add_flow(EmulatedFlow(name=name, workflow_id=workflow_id))
    # A flow that is not a desktop flow (category 0 is a classic workflow).
    shared_emulator.add_flow(EmulatedFlow(name="Classic workflow", category=0))


def odata_string(value: str) -> str:
    """Quote a string literal for $filter: wrap it in single quotes and double each quote inside."""
    return "'" + value.replace("'", "''") + "'"


def names(response) -> list[str]:
    return [row["name"] for row in response.json()["value"]]


def test_list_published_desktop_flows(client):
    response = client.get("workflows", params={"$filter": "category eq 6", "$select": "name,workflowid"})
    assert response.status_code == 200
    assert names(response)[:4] == DEFAULT_PUBLISHED_NAMES
    assert "Draft desktop flow" not in names(response)
    assert "Classic workflow" not in names(response)


def test_list_row_shape(client):
    response = client.get("workflows", params={"$filter": "category eq 6", "$select": "name,workflowid"})
    first = response.json()["value"][0]
    assert set(first) == {"@odata.etag", "name", "workflowid"}
    assert first["@odata.etag"].startswith('W/"')
    assert response.json()["@odata.context"].endswith("/$metadata#workflows(name,workflowid)")


def test_list_microsoft_example_query(client):
    # The query string exactly as Microsoft's example writes it, with '+' for spaces.
    response = client.get("workflows?$filter=category+eq+6&$select=name,workflowid&$orderby=name")
    assert response.status_code == 200
    assert names(response) == sorted(names(response), key=str.casefold)


def test_list_unpublished_header(client):
    response = client.get(
        "workflows",
        params={"$filter": "category eq 6", "$select": "name,workflowid"},
        headers={"MSCRM.IncludeUnpublished": "true"},
    )
    assert "Draft desktop flow" in names(response)


def test_list_draft_statecode(client):
    response = client.get(
        "workflows",
        params={"$filter": f"workflowid eq {DRAFT_FLOW_ID}", "$select": "statecode"},
        headers={"MSCRM.IncludeUnpublished": "true"},
    )
    assert response.json()["value"][0]["statecode"] == 0


@pytest.mark.parametrize("name", SPECIAL_NAMES)
def test_filter_name_requests_params(client, name):
    # requests encodes the parameter as a form would: '+' for spaces, every reserved character escaped.
    response = client.get("workflows", params={"$filter": f"category eq 6 and name eq {odata_string(name)}"})
    assert response.status_code == 200
    assert names(response) == [name]


@pytest.mark.parametrize("name", SPECIAL_NAMES)
def test_filter_name_percent_encoded(client, name):
    expression = quote(f"category eq 6 and name eq {odata_string(name)}", safe="", encoding="utf-8")
    response = client.get(f"workflows?$filter={expression}&$select=name,workflowid")
    assert response.status_code == 200
    assert names(response) == [name]


@pytest.mark.parametrize("name", SPECIAL_NAMES)
async def test_filter_name_httpx(emulator, name):
    token = request_token(emulator)
    verify = ssl.create_default_context(cafile=emulator.ca_path)
    async with httpx.AsyncClient(verify=verify, trust_env=False) as http:
        response = await http.get(
            f"{emulator.base_url}{WEB_API_PATH}/workflows",
            params={"$filter": f"name eq {odata_string(name)}", "$select": "name"},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert response.status_code == 200
    assert [row["name"] for row in response.json()["value"]] == [name]


def test_filter_name_case_insensitive(client):
    response = client.get("workflows", params={"$filter": "name eq 'DESKTOP FLOW 1'"})
    assert names(response) == ["Desktop flow 1"]


def test_filter_unknown_name(client):
    response = client.get("workflows", params={"$filter": "name eq 'No such flow'"})
    assert response.json()["value"] == []


@pytest.mark.parametrize(
    ("expression", "message_part"),
    [
        ("contains(name,'flow')", "function 'contains'"),
        ("Name eq 'x'", "Could not find a property named 'Name'"),
        ("category eq '6'", "incompatible types"),
        ("name eq 'unclosed", "not closed"),
    ],
)
def test_filter_unsupported_400(client, expression, message_part):
    response = client.get("workflows", params={"$filter": expression})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "0x0"
    assert message_part in response.json()["error"]["message"]


def test_select_unknown_column_400(client):
    response = client.get("workflows", params={"$select": "name,Name"})
    assert response.status_code == 400
    assert "Could not find a property named 'Name'" in response.json()["error"]["message"]


def test_orderby_name_desc(client):
    response = client.get("workflows", params={"$filter": "category eq 6", "$orderby": "name desc"})
    assert names(response) == sorted(names(response), key=str.casefold, reverse=True)


def test_top_limits_rows(client):
    response = client.get("workflows", params={"$top": "2"})
    assert len(response.json()["value"]) == 2
    assert "@odata.nextLink" not in response.json()


def test_paging_max_page_size(client):
    headers = {"Prefer": "odata.maxpagesize=3"}
    pages = collect_pages(client, client.url("workflows?$filter=category+eq+6&$select=name"), headers)
    all_names = [row["name"] for page in pages for row in page["value"]]
    assert [len(page["value"]) for page in pages[:-1]] == [3] * (len(pages) - 1)
    assert all_names[:4] == DEFAULT_PUBLISHED_NAMES
    assert set(SPECIAL_NAMES) <= set(all_names)
    assert len(all_names) == len(set(all_names))


def test_paging_next_link_absolute(client, emulator):
    response = client.get("workflows", params={"$select": "name"}, headers={"Prefer": "odata.maxpagesize=2"})
    next_link = response.json()["@odata.nextLink"]
    assert next_link.startswith(f"{emulator.base_url}{WEB_API_PATH}/workflows?")
    assert "skiptoken" in next_link
    assert response.headers["Preference-Applied"] == "odata.maxpagesize=2"


def test_paging_keeps_special_filter(client):
    expression = "category eq 6 and name ne 'R&D report' and name ne 'C++ build'"
    first_url = client.url("workflows?" + "$filter=" + quote(expression, safe=""))
    pages = collect_pages(client, first_url, {"Prefer": "odata.maxpagesize=1"})
    all_names = [row["name"] for page in pages for row in page["value"]]
    assert "R&D report" not in all_names
    assert "C++ build" not in all_names
    assert "Tag #1" in all_names
    assert len(pages) == len(all_names)


def test_paging_capped_by_page_size():
    with DataverseEmulator(page_size=2) as emulator, WebApiClient(emulator, request_token(emulator)) as client:
        pages = collect_pages(client, client.url("workflows"), {"Prefer": "odata.maxpagesize=100"})
    assert [len(page["value"]) for page in pages] == [2, 2]


def test_paging_without_prefer():
    with DataverseEmulator(page_size=3) as emulator, WebApiClient(emulator, request_token(emulator)) as client:
        pages = collect_pages(client, client.url("workflows"), {})
    assert [len(page["value"]) for page in pages] == [3, 1]


def test_paging_foreign_skiptoken(client):
    response = client.get("workflows", params={"$skiptoken": "page-2"})
    assert response.status_code == 400


def test_get_workflow_select(client):
    response = client.get(f"workflows({DESKTOP_FLOW_1_ID})", params={"$select": "name"})
    assert response.json()["name"] == "Desktop flow 1"
    assert response.json()["workflowid"] == DESKTOP_FLOW_1_ID


def test_input_schema_example(client):
    schema = client.get(f"workflows({DESKTOP_FLOW_1_ID})/inputs/$value").json()["schema"]
    assert schema["type"] == "object"
    assert set(schema["properties"]) == {"inputText", "inputInteger"}
    assert schema["properties"]["inputInteger"] == {
        "default": "",
        "description": "",
        "format": None,
        "title": "inputInteger",
        "type": "number",
        "value": "0",
    }


def test_output_schema_example(client):
    schema = client.get(f"workflows({DESKTOP_FLOW_1_ID})/outputs/$value").json()["schema"]
    assert schema["properties"]["outputText"]["type"] == "string"
    assert schema["properties"]["outputText"]["value"] is None


def test_schema_flow_without_inputs(client):
    schema = client.get(f"workflows({FAILING_FLOW_ID})/inputs/$value").json()["schema"]
    assert schema["properties"] == {}


def test_schema_unknown_flow_404(client):
    unknown_id = "99999999-9999-4999-8999-999999999999"
    response = client.get(f"workflows({unknown_id})/inputs/$value")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "0x80040217"
    assert response.json()["error"]["message"] == f"workflow With Id = {unknown_id} Does Not Exist"


def test_schema_key_not_guid_400(client):
    response = client.get("workflows(flow-1)/outputs/$value")
    assert response.status_code == 400


def test_unknown_segment_404(client):
    response = client.get("Account")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "0x8006088a"
    assert response.json()["error"]["message"] == "Resource not found for the segment 'Account'."


def test_wrong_method_404(client):
    response = client.post("WhoAmI")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == ""


def test_list_logged_with_raw_query(client, emulator):
    client.get("workflows?$filter=name%20eq%20%27R%26D%20report%27")
    record = emulator.requests[-1]
    assert record.endpoint == "list_workflows"
    assert record.query == "$filter=name%20eq%20%27R%26D%20report%27"
    assert record.path == f"{WEB_API_PATH}/workflows"
