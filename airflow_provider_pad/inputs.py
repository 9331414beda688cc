"""Turn a desktop flow's inputs into the JSON string that RunDesktopFlow expects.

Checked before any request: the inputs must be a JSON object of at most 2 MB of UTF-8, and every
value must be JSON-serializable. ``datetime`` and ``date`` values become ISO 8601 strings
(``2026-01-31T08:00:00+00:00``), because desktop flow inputs have no date type. ``Decimal`` and every
other type are rejected by key, because a silent float conversion could change an amount.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from typing import Any

from airflow_provider_pad.exceptions import DesktopFlowInputsError

MAX_INPUTS_BYTES = 2 * 1024 * 1024


def serialize_inputs(inputs: Mapping[str, Any] | str | None) -> str | None:
    """Return ``inputs`` as a JSON object string, or None when there are no inputs.

    :param inputs: a mapping, a string holding a JSON object, or None.
    :raises DesktopFlowInputsError: with the offending key and type, or the size.
    """
    if inputs is None:
        return None
    if isinstance(inputs, str):
        inputs = _parse_json_object(inputs)
    if not isinstance(inputs, Mapping):
        raise DesktopFlowInputsError(
            f"inputs must be a dict or a string holding a JSON object, not {type(inputs).__name__}."
        )

    checked = _check_value(dict(inputs), "inputs")
    text = json.dumps(checked, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    size = len(text.encode("utf-8"))
    if size > MAX_INPUTS_BYTES:
        raise DesktopFlowInputsError(
            f"inputs are {size} bytes of UTF-8 JSON; Dataverse accepts at most {MAX_INPUTS_BYTES} bytes (2 MB). "
            "Pass a reference (a file path or URL) to large data instead of the data itself."
        )
    return text


def _parse_json_object(text: str) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise DesktopFlowInputsError(f"inputs is a string but not valid JSON: {error}.") from None
    if not isinstance(value, dict):
        raise DesktopFlowInputsError(f"inputs must hold a JSON object, not a JSON {type(value).__name__}.")
    return value


def _check_value(value: Any, path: str) -> Any:
    """Return ``value`` with dates converted, raising with ``path`` at the first unsupported value."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise DesktopFlowInputsError(f"{path} is {value}, which JSON cannot represent.")
        return value
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if isinstance(value, Mapping):
        result = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise DesktopFlowInputsError(
                    f"{path} has the key {key!r} of type {type(key).__name__}; input names must be strings."
                )
            result[key] = _check_value(item, f"{path}[{key!r}]")
        return result
    if isinstance(value, (list, tuple)):
        return [_check_value(item, f"{path}[{index}]") for index, item in enumerate(value)]
    raise DesktopFlowInputsError(
        f"{path} is of type {type(value).__module__}.{type(value).__qualname__}, which is not JSON-serializable; "
        "convert it to a str, int, float, bool, list or dict first."
    )


# Python types accepted for each JSON Schema type a desktop flow declares for an input.
# bool is excluded from the numeric types because JSON keeps true and 1 apart.
_SCHEMA_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "number": (int, float),
    "integer": (int,),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


def validate_against_schema(inputs_json: str | None, schema: Mapping[str, Any], flow: str) -> None:
    """Reject inputs the flow does not declare, or whose JSON type differs from the declared one.

    Inputs the flow declares but that are absent are allowed: the flow then uses its default value.
    A declared type this module does not know (PAD may add some) is not checked.

    :param inputs_json: the serialized inputs, as :func:`serialize_inputs` returns them.
    :param schema: the flow's input schema, ``{"type": "object", "properties": {...}}``.
    :param flow: the flow's name or id, for the error message.
    """
    inputs = json.loads(inputs_json) if inputs_json else {}
    properties: Mapping[str, Any] = schema.get("properties") or {}

    unknown = sorted(set(inputs) - set(properties))
    if unknown:
        raise DesktopFlowInputsError(
            f"inputs {unknown} are not inputs of desktop flow {flow}; its inputs are {sorted(properties)}."
        )

    mismatches = []
    for name, value in inputs.items():
        declared = str((properties[name] or {}).get("type") or "")
        accepted = _SCHEMA_TYPES.get(declared)
        if accepted is None or value is None:
            continue
        is_bool = isinstance(value, bool)
        if not isinstance(value, accepted) or (is_bool and declared != "boolean"):
            mismatches.append(f"{name} (expected {declared}, got {type(value).__name__})")
    if mismatches:
        raise DesktopFlowInputsError(
            f"inputs of desktop flow {flow} do not match its input schema: {', '.join(mismatches)}."
        )
