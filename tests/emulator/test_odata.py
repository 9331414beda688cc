"""Tests of the OData query option and $filter parsing, without a server."""

from __future__ import annotations

import pytest

from airflow_provider_pad.emulator.odata import (
    ColumnType,
    ODataQueryError,
    build_query_string,
    decode_skiptoken,
    encode_skiptoken,
    parse_max_page_size,
    parse_orderby,
    parse_query_options,
    parse_select,
    sort_rows,
)
from airflow_provider_pad.emulator.odata_filter import parse_filter

COLUMNS = {
    "name": ColumnType.STRING,
    "category": ColumnType.INT32,
    "workflowid": ColumnType.GUID,
    "description": ColumnType.STRING,
}
FLOW_ID = "f0000000-0000-4000-8000-000000000001"
ROW = {"name": "Invoice's Bot", "category": 6, "workflowid": FLOW_ID, "description": None}


def matches(expression: str, row=ROW) -> bool:
    return parse_filter(expression, COLUMNS, "workflow")(row)


@pytest.mark.parametrize(
    "expression",
    [
        "category eq 6",
        "name eq 'Invoice''s Bot'",
        "name eq 'invoice''s bot'",
        f"workflowid eq {FLOW_ID.upper()}",
        "description eq null",
        "category eq 6 and name eq 'Invoice''s Bot'",
        "category eq 5 or name ne 'Other'",
        "not (category eq 5)",
        "(category eq 5 or category eq 6) and name ne 'x'",
        "  category   eq   6  ",
    ],
)
def test_filter_matches(expression):
    assert matches(expression) is True


@pytest.mark.parametrize(
    "expression",
    [
        "category eq 5",
        "name eq 'Invoice'",
        "category ne 6",
        "category eq 6 and name eq 'Other'",
        "category eq 5 or category eq 4 and category eq 6",
        "description ne null",
    ],
)
def test_filter_rejects_row(expression):
    assert matches(expression) is False


@pytest.mark.parametrize(
    ("expression", "message_part"),
    [
        ("color eq 'red'", "Could not find a property named 'color'"),
        ("contains(name,'Bot')", "function 'contains' is not supported"),
        ("category has 5", "operator 'has' is not supported"),
        ("category eq '6'", "incompatible types"),
        ("name eq 'unclosed", "is not closed"),
        ("category eq 6 category", "Syntax error"),
        ("category eq", "Syntax error"),
        ("(category eq 6", "Syntax error"),
        ("category eq 6 & name eq 'x'", "Syntax error"),
        ("   ", "empty"),
    ],
)
def test_filter_error(expression, message_part):
    with pytest.raises(ODataQueryError, match=message_part):
        parse_filter(expression, COLUMNS, "workflow")


def test_query_options_plus_is_space():
    assert parse_query_options(b"$filter=category+eq+6", {"$filter"}) == {"$filter": "category eq 6"}


def test_query_options_encoded_specials():
    raw = b"$filter=name%20eq%20%27C%2B%2B%20%26%20R%23D%20100%25%27"
    assert parse_query_options(raw, {"$filter"})["$filter"] == "name eq 'C++ & R#D 100%'"


def test_query_options_utf8():
    raw = "$filter=name eq '%C3%9Cberweisung'".encode()
    assert parse_query_options(raw, {"$filter"})["$filter"] == "name eq 'Überweisung'"


def test_query_options_invalid_utf8():
    with pytest.raises(ODataQueryError, match="UTF-8"):
        parse_query_options(b"$filter=name eq '%FF'", {"$filter"})


def test_query_options_duplicate():
    with pytest.raises(ODataQueryError, match="more than once"):
        parse_query_options(b"$top=1&$top=2", {"$top"})


def test_query_options_unsupported():
    with pytest.raises(ODataQueryError, match=r"'\$expand' is not supported"):
        parse_query_options(b"$expand=owner", {"$select"})


def test_query_options_alias_passes():
    assert parse_query_options(b"@p1=x", ()) == {"@p1": "x"}


@pytest.mark.parametrize(
    "name", ["Invoice''s Bot", "R&D", "C++", "Tag #1", "100% done", "Überweisung", "日本語", "a=b;c"]
)
def test_query_string_round_trip(name):
    options = {"$filter": f"name eq '{name}'", "$skiptoken": encode_skiptoken(2, 50)}
    assert parse_query_options(build_query_string(options).encode(), {"$filter", "$skiptoken"}) == options


def test_skiptoken_round_trip():
    assert decode_skiptoken(encode_skiptoken(3, 100)) == (3, 100)


def test_skiptoken_foreign():
    with pytest.raises(ODataQueryError, match="nextLink"):
        decode_skiptoken("abc")


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], None),
        (["odata.maxpagesize=10"], 10),
        (['odata.include-annotations="*", odata.maxpagesize=3'], 3),
        (["return=representation", "Odata.MaxPageSize = 7"], 7),
    ],
)
def test_max_page_size(headers, expected):
    assert parse_max_page_size(headers) == expected


@pytest.mark.parametrize("value", ["0", "ten", "-1"])
def test_max_page_size_invalid(value):
    with pytest.raises(ODataQueryError, match="maxpagesize"):
        parse_max_page_size([f"odata.maxpagesize={value}"])


def test_select_unknown_column():
    with pytest.raises(ODataQueryError, match="Could not find a property named 'Name'"):
        parse_select("Name", COLUMNS, "workflow")


def test_orderby_descending_case_insensitive():
    rows = [{"name": "b"}, {"name": "C"}, {"name": "a"}]
    ordering = parse_orderby("name desc", COLUMNS, "workflow")
    assert [row["name"] for row in sort_rows(rows, ordering)] == ["C", "b", "a"]


def test_orderby_invalid_direction():
    with pytest.raises(ODataQueryError, match="orderby"):
        parse_orderby("name downward", COLUMNS, "workflow")
