from __future__ import annotations

import datetime
import decimal
import json

import pytest

from airflow_provider_pad.exceptions import DesktopFlowInputsError
from airflow_provider_pad.inputs import MAX_INPUTS_BYTES, serialize_inputs, validate_against_schema


def test_none_means_no_inputs():
    assert serialize_inputs(None) is None


def test_dict_becomes_json_object_string():
    text = serialize_inputs({"inputText": "héllo", "inputInteger": 3})

    assert json.loads(text) == {"inputText": "héllo", "inputInteger": 3}


def test_json_string_is_accepted():
    assert json.loads(serialize_inputs('{"a": [1, 2]}')) == {"a": [1, 2]}


@pytest.mark.parametrize("text", ["[1, 2]", "3", '"text"'], ids=["array", "number", "string"])
def test_json_string_must_hold_object(text):
    with pytest.raises(DesktopFlowInputsError, match="must hold a JSON object"):
        serialize_inputs(text)


def test_invalid_json_string_rejected():
    with pytest.raises(DesktopFlowInputsError, match="not valid JSON"):
        serialize_inputs("{not json")


def test_list_rejected():
    with pytest.raises(DesktopFlowInputsError, match="not list"):
        serialize_inputs([1, 2])


def test_datetime_sent_as_iso_8601():
    moment = datetime.datetime(2026, 1, 31, 8, 0, tzinfo=datetime.timezone.utc)

    text = serialize_inputs({"when": moment, "day": datetime.date(2026, 2, 1)})

    assert json.loads(text) == {"when": "2026-01-31T08:00:00+00:00", "day": "2026-02-01"}


def test_decimal_rejected_by_key():
    with pytest.raises(DesktopFlowInputsError) as caught:
        serialize_inputs({"invoice": {"amount": decimal.Decimal("1.10")}})

    assert "inputs['invoice']['amount']" in str(caught.value)
    assert "decimal.Decimal" in str(caught.value)


def test_object_value_rejected_by_key():
    with pytest.raises(DesktopFlowInputsError, match=r"inputs\['rows'\]\[1\]"):
        serialize_inputs({"rows": [1, object()]})


def test_nan_rejected():
    with pytest.raises(DesktopFlowInputsError, match="JSON cannot represent"):
        serialize_inputs({"ratio": float("nan")})


def test_non_string_key_rejected():
    with pytest.raises(DesktopFlowInputsError, match="input names must be strings"):
        serialize_inputs({1: "one"})


def test_size_limit_counts_utf8_bytes():
    # Each "é" is two bytes in UTF-8, so this is just over 2 MB of UTF-8 but under 2 M characters.
    value = "é" * (MAX_INPUTS_BYTES // 2)

    with pytest.raises(DesktopFlowInputsError, match="at most 2097152 bytes"):
        serialize_inputs({"text": value})


def test_size_limit_allows_exactly_2_mb():
    overhead = len('{"t":""}')
    text = serialize_inputs({"t": "a" * (MAX_INPUTS_BYTES - overhead)})

    assert len(text.encode("utf-8")) == MAX_INPUTS_BYTES


SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "count": {"type": "number"},
        "ok": {"type": "boolean"},
        "rows": {"type": "array"},
        "custom": {"type": "datatable"},
    },
}


def test_schema_accepts_declared_types():
    validate_against_schema('{"name": "a", "count": 1, "ok": true, "rows": [], "custom": {}}', SCHEMA, "flow")


def test_schema_allows_missing_inputs():
    validate_against_schema('{"name": "a"}', SCHEMA, "flow")


def test_schema_rejects_bool_as_number():
    with pytest.raises(DesktopFlowInputsError, match=r"count \(expected number, got bool\)"):
        validate_against_schema('{"count": true}', SCHEMA, "flow")


def test_schema_lists_unknown_names():
    with pytest.raises(DesktopFlowInputsError, match=r"\['Name', 'zeta'\] are not inputs of desktop flow flow"):
        validate_against_schema('{"Name": "a", "zeta": 1}', SCHEMA, "flow")
