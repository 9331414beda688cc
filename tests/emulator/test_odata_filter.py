"""Tests of the $filter grammar: comparisons, dates and times, Dataverse's In function and aliases, without a server."""

from __future__ import annotations

import datetime
import random
import re

import pytest

from airflow_provider_pad.emulator.odata import ColumnType, ODataQueryError
from airflow_provider_pad.emulator.odata_filter import MAX_NESTING_DEPTH, parse_datetime_offset, parse_filter

COLUMNS = {
    "flowsessionid": ColumnType.GUID,
    "statuscode": ColumnType.INT32,
    "createdon": ColumnType.DATETIME_OFFSET,
    "completedon": ColumnType.DATETIME_OFFSET,
    "errorcode": ColumnType.STRING,
    "_regardingobjectid_value": ColumnType.GUID,
}
SESSION_ID = "5f2b0000-0000-4000-8000-000000000001"
OTHER_ID = "5f2b0000-0000-4000-8000-000000000002"
FLOW_ID = "f0000000-0000-4000-8000-000000000001"
ROW = {
    "flowsessionid": SESSION_ID,
    "statuscode": 4,
    "createdon": "2026-12-04T21:00:00Z",
    "completedon": None,
    "errorcode": "NoCandidateMachine",
    "_regardingobjectid_value": FLOW_ID,
}
UTC = datetime.timezone.utc


def matches(expression: str, aliases: dict[str, str] | None = None, row=ROW) -> bool:
    return parse_filter(expression, COLUMNS, "flowsession", aliases)(row)


def in_call(values: str, column: str = "flowsessionid", function: str = "In") -> str:
    return f"Microsoft.Dynamics.CRM.{function}(PropertyName='{column}',PropertyValues=[{values}])"


@pytest.mark.parametrize(
    "expression",
    [
        "statuscode gt 3",
        "statuscode ge 4",
        "statuscode lt 5",
        "statuscode le 4",
        "errorcode gt 'Abc'",
        "errorcode lt 'nocandidatemachinf'",
        "createdon ge 2026-12-04T21:00:00Z",
        "createdon le 2026-12-04T21:00:00Z",
        "createdon gt 2026-12-04T20:59:59.999Z",
        "createdon lt 2026-12-04T21:00:00.000001z",
        "createdon eq 2026-12-04T21:00:00.000+00:00",
        "createdon eq 2026-12-04T23:00:00+02:00",
        "createdon eq 2026-12-04T16:30:00-04:30",
        "createdon eq 2026-12-04T21:00Z",
        f"_regardingobjectid_value eq {FLOW_ID} and createdon ge 2026-12-04T21:00:00Z",
        "completedon eq null",
    ],
)
def test_comparison_matches(expression):
    assert matches(expression) is True


@pytest.mark.parametrize(
    "expression",
    [
        "statuscode gt 4",
        "statuscode lt 4",
        "createdon gt 2026-12-04T21:00:00Z",
        "createdon ge 2026-12-04T21:00:00.5Z",
        "createdon lt 2026-12-04T23:00:00+02:00",
        "completedon ge 2020-01-01T00:00:00Z",
        "completedon lt 2099-01-01T00:00:00Z",
    ],
)
def test_comparison_rejects_row(expression):
    assert matches(expression) is False


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-04T21:00:00Z", datetime.datetime(2026, 12, 4, 21, tzinfo=UTC)),
        ("2026-12-04T21:00:00.25Z", datetime.datetime(2026, 12, 4, 21, 0, 0, 250000, tzinfo=UTC)),
        ("2026-12-04T21:00:00.1234567Z", datetime.datetime(2026, 12, 4, 21, 0, 0, 123456, tzinfo=UTC)),
        ("2026-12-04T21:00:00+00:00", datetime.datetime(2026, 12, 4, 21, tzinfo=UTC)),
        ("2026-12-05T01:00:00+04:00", datetime.datetime(2026, 12, 4, 21, tzinfo=UTC)),
        ("2026-12-04T21:00Z", datetime.datetime(2026, 12, 4, 21, tzinfo=UTC)),
    ],
)
def test_datetime_offset_parsed(text, expected):
    assert parse_datetime_offset(text) == expected


@pytest.mark.parametrize("text", ["2026-12-04T21:00:00", "2026-12-04", "2026-13-04T21:00:00Z", "yesterday"])
def test_datetime_offset_invalid(text):
    with pytest.raises(ValueError):
        parse_datetime_offset(text)


@pytest.mark.parametrize(
    "expression",
    [
        in_call(f"'{SESSION_ID}'"),
        in_call(f"'{OTHER_ID}','{SESSION_ID}'"),
        in_call(f"'{SESSION_ID.upper()}'"),
        in_call(f" '{OTHER_ID}' , '{SESSION_ID}' "),
        in_call("'3','4'", column="statuscode"),
        in_call("'nocandidatemachine'", column="errorcode"),
        in_call("'2026-12-04T21:00:00Z'", column="createdon"),
        in_call(f"'{OTHER_ID}'", function="NotIn"),
        f"{in_call(repr(SESSION_ID))} and statuscode eq 4",
        f"not {in_call(repr(OTHER_ID))}",
        f"(statuscode eq 2 or {in_call(repr(SESSION_ID))})",
    ],
)
def test_in_matches(expression):
    assert matches(expression) is True


@pytest.mark.parametrize(
    "expression",
    [
        in_call(f"'{OTHER_ID}'"),
        in_call(f"'{SESSION_ID}'", function="NotIn"),
        in_call("'2','3'", column="statuscode"),
        in_call("'2026-12-04T21:00:00Z'", column="completedon"),
        f"{in_call(repr(SESSION_ID))} and statuscode eq 2",
    ],
)
def test_in_rejects_row(expression):
    assert matches(expression) is False


def test_in_many_values():
    values = ",".join(f"'5f2b0000-0000-4000-8000-{index:012d}'" for index in range(1, 1001))
    assert matches(in_call(values)) is True


def test_in_parameter_aliases():
    expression = "Microsoft.Dynamics.CRM.In(PropertyName=@p1,PropertyValues=@p2)"
    aliases = {"@p1": "'flowsessionid'", "@p2": f"['{OTHER_ID}','{SESSION_ID}']"}
    assert matches(expression, aliases) is True


def test_in_parameters_any_order():
    expression = f"Microsoft.Dynamics.CRM.In(PropertyValues=['{SESSION_ID}'],PropertyName='flowsessionid')"
    assert matches(expression) is True


def test_comparison_parameter_alias():
    assert matches("createdon ge @since", {"@since": "2026-12-04T20:00:00Z"}) is True


@pytest.mark.parametrize(
    ("expression", "message_part"),
    [
        ("statuscode in (1,2)", "Use Microsoft.Dynamics.CRM.In"),
        ("contains(errorcode,'No')", "function 'contains' is not supported"),
        ("Microsoft.Dynamics.CRM.Between(PropertyName='statuscode',PropertyValues=['1','2'])", "'Microsoft"),
        (in_call("'x'", column="status"), "Could not find a property named 'status'"),
        (in_call("'not-a-guid'"), "is not a GUID"),
        (in_call("'four'", column="statuscode"), "is not an integer"),
        (in_call("'2026-12-04'", column="createdon"), "PropertyValues for 'createdon' is invalid"),
        (in_call(""), "is empty"),
        (in_call(f"{SESSION_ID}"), "expected a quoted string"),
        (in_call(f"'{SESSION_ID}'"[:-1] + ",", column="flowsessionid"), "Syntax error"),
        ("Microsoft.Dynamics.CRM.In(PropertyName='flowsessionid')", "needs the parameter 'PropertyValues'"),
        ("Microsoft.Dynamics.CRM.In(PropertyName='flowsessionid',Values=['a'])", "has no parameter 'Values'"),
        ("Microsoft.Dynamics.CRM.In(PropertyName='a',PropertyName='b')", "more than once"),
        ("Microsoft.Dynamics.CRM.In(PropertyName=['a'],PropertyValues=['b'])", "PropertyName of"),
        ("Microsoft.Dynamics.CRM.In(PropertyName='flowsessionid',PropertyValues='b')", "must be an array"),
        ("Microsoft.Dynamics.CRM.In(PropertyName=@p1,PropertyValues=['b'])", "'@p1' has no value"),
        ("createdon ge 2026-12-04T21:00:00", "has no time zone offset"),
        ("createdon ge 2026-12-04T21:00:00 00:00", "percent-encode '+' as %2B"),
        ("createdon ge 2026-12-04", "incompatible types"),
        ("createdon ge '2026-12-04T21:00:00Z'", "incompatible types"),
        ("createdon ge 2026-02-30T21:00:00Z", "is not valid"),
        ("createdon ge 2026-12-04T21:00:00+24:00", "is not valid"),
        ("statuscode ge 2026-12-04T21:00:00Z", "incompatible types"),
        (f"_regardingobjectid_value eq '{FLOW_ID}'", "incompatible types"),
        (f"flowsessionid gt {SESSION_ID}", "cannot compare 'flowsessionid'"),
        ("statuscode gt null", "not null"),
        ("statuscode = 2", "expected a comparison operator"),
        ("statuscode has 2", "operator 'has' is not supported"),
        ("(" * (MAX_NESTING_DEPTH + 1) + "statuscode eq 2" + ")" * (MAX_NESTING_DEPTH + 1), "more than"),
        ("not " * (MAX_NESTING_DEPTH + 1) + "statuscode eq 2", "more than"),
    ],
)
def test_filter_error(expression, message_part):
    with pytest.raises(ODataQueryError, match=re.escape(message_part)):
        parse_filter(expression, COLUMNS, "flowsession")


def test_alias_inside_alias_rejected():
    expression = "Microsoft.Dynamics.CRM.In(PropertyName=@p1,PropertyValues=['a'])"
    with pytest.raises(ODataQueryError, match="inside the value of another alias"):
        parse_filter(expression, COLUMNS, "flowsession", {"@p1": "@p2", "@p2": "'flowsessionid'"})


def test_nesting_at_limit_accepted():
    depth = MAX_NESTING_DEPTH
    assert matches("(" * depth + "statuscode eq 4" + ")" * depth) is True


FRAGMENTS = [
    "statuscode",
    "createdon",
    "eq",
    "ge",
    "and",
    "or",
    "not",
    "(",
    ")",
    "[",
    "]",
    ",",
    "=",
    "'x'",
    "''",
    "'",
    "4",
    "-",
    "@p1",
    SESSION_ID,
    "2026-12-04T21:00:00Z",
    "2026-12-04",
    "T21:00",
    "+00:00",
    "Microsoft.Dynamics.CRM.In",
    "PropertyName",
    "PropertyValues",
    "null",
    "%",
    "#",
]


@pytest.mark.parametrize("seed", range(20))
def test_random_expressions_only_query_errors(seed):
    generator = random.Random(seed)
    for _ in range(200):
        expression = " ".join(generator.choice(FRAGMENTS) for _ in range(generator.randint(1, 12)))
        try:
            parse_filter(expression, COLUMNS, "flowsession", {"@p1": "['a'"})(ROW)
        except ODataQueryError:
            pass
