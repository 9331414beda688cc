"""Validate the body of a RunDesktopFlow call the way Dataverse documents it, naming the first invalid parameter."""

from __future__ import annotations

import json
from typing import Any

from airflow_provider_pad.emulator.flows import DEFAULT_RUN_TIMEOUT_SECONDS, RUN_MODE_CODES
from airflow_provider_pad.emulator.responses import (
    INVALID_ARGUMENT,
    ODATA_REQUEST_ERROR,
    PAYLOAD_ERROR,
    DataverseError,
)
from airflow_provider_pad.emulator.state import RunRequest

# NOTE: Microsoft documents the limit as "2 MB" without saying whether that is 10**6 or
# 2**20 bytes. The emulator takes the larger reading, so it never rejects what Dataverse accepts.
MAX_INPUTS_BYTES = 2 * 1024 * 1024
MAX_RUN_TIMEOUT_SECONDS = 86400

RUN_PARAMETERS = ("runMode", "runPriority", "connectionName", "connectionType", "timeout", "inputs", "callbackUrl")
RUN_PRIORITIES = ("normal", "high")
CONNECTION_TYPES = (1, 2)

# Longest JSON rendering of a rejected value that an error message quotes in full.
MAX_QUOTED_VALUE_CHARACTERS = 80


def parse_run_request(body: bytes) -> RunRequest:
    """
    Validate a RunDesktopFlow request body and return its parameters with defaults filled in.

    Raise DataverseError (400) for a body that is not a JSON object, an unknown parameter,
    or the first parameter with a missing or invalid value. A JSON null counts as absent.
    """
    payload = _parse_json_object(body)

    unknown = [name for name in payload if name not in RUN_PARAMETERS]
    if unknown:
        raise DataverseError(
            400,
            ODATA_REQUEST_ERROR,
            f"The parameter '{unknown[0]}' in the request payload is not a valid parameter for the operation "
            f"'RunDesktopFlow'. Valid parameters: {', '.join(RUN_PARAMETERS)}.",
        )

    # NOTE: the emulator stores callbackUrl but never calls it. Dataverse would POST the
    # final status there, and accepts only HTTPS URLs with a public DNS name.
    return RunRequest(
        run_mode=_read_run_mode(payload.get("runMode")),
        run_priority=_read_run_priority(payload.get("runPriority")),
        connection_name=_read_connection_name(payload.get("connectionName")),
        connection_type=_read_connection_type(payload.get("connectionType")),
        timeout_seconds=_read_timeout(payload.get("timeout")),
        inputs=_read_inputs(payload.get("inputs")),
        callback_url=_read_callback_url(payload.get("callbackUrl")),
    )


def _parse_json_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        raise DataverseError(
            400,
            PAYLOAD_ERROR,
            "The request body is empty. Send a JSON object with at least runMode and connectionName.",
        )
    try:
        payload = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataverseError(
            400,
            PAYLOAD_ERROR,
            f"Error identified in Payload provided by the user: the body is not valid JSON ({error}).",
        ) from None
    if not isinstance(payload, dict):
        raise DataverseError(
            400,
            PAYLOAD_ERROR,
            "Error identified in Payload provided by the user: the body must be a JSON object, "
            f"got {_json_type(payload)}.",
        )
    return payload


def _read_run_mode(value: Any) -> str:
    if value is None:
        raise _invalid_parameter("The parameter 'runMode' is required: give 'attended' or 'unattended'.")
    # NOTE: Microsoft's examples use lower case. Whether Dataverse also accepts "Attended" is
    # not documented, so the emulator rejects it.
    if not isinstance(value, str) or value not in RUN_MODE_CODES:
        raise _invalid_parameter(f"The parameter 'runMode' must be 'attended' or 'unattended', got {_quote(value)}.")
    return value


def _read_run_priority(value: Any) -> str:
    if value is None:
        return "normal"
    if not isinstance(value, str) or value not in RUN_PRIORITIES:
        raise _invalid_parameter(f"The parameter 'runPriority' must be 'normal' or 'high', got {_quote(value)}.")
    return value


def _read_connection_name(value: Any) -> str:
    if value is None or value == "":
        raise _invalid_parameter(
            "The parameter 'connectionName' is required: give the desktop flow connection's name, "
            "or a connection reference's logical name with connectionType 2."
        )
    if not isinstance(value, str) or not value.strip():
        raise _invalid_parameter(f"The parameter 'connectionName' must be a non-empty string, got {_quote(value)}.")
    return value


def _read_connection_type(value: Any) -> int:
    if value is None:
        return 1
    if not _is_integer(value) or value not in CONNECTION_TYPES:
        raise _invalid_parameter(
            "The parameter 'connectionType' must be 1 (connection) or 2 (connection reference), "
            f"got {_quote(value)}."
        )
    return value


def _read_timeout(value: Any) -> int:
    if value is None:
        return DEFAULT_RUN_TIMEOUT_SECONDS
    if not _is_integer(value) or not 1 <= value <= MAX_RUN_TIMEOUT_SECONDS:
        raise _invalid_parameter(
            f"The parameter 'timeout' must be an integer number of seconds from 1 to {MAX_RUN_TIMEOUT_SECONDS}, "
            f"got {_quote(value)}."
        )
    return value


def _read_inputs(value: Any) -> dict[str, Any]:
    """Read ``inputs``: a string with a serialized JSON object of at most 2 MB in UTF-8."""
    if value is None:
        return {}
    if not isinstance(value, str):
        raise _invalid_parameter(
            "The parameter 'inputs' must be a string holding a serialized JSON object, "
            f'such as "{{\\"Input1\\":\\"Value\\"}}", got {_json_type(value)}.'
        )

    size = len(value.encode("utf-8"))
    if size > MAX_INPUTS_BYTES:
        raise _invalid_parameter(
            f"The parameter 'inputs' is {size} bytes long, over the limit of {MAX_INPUTS_BYTES} bytes (2 MB)."
        )

    try:
        inputs = json.loads(value)
    except json.JSONDecodeError as error:
        raise _invalid_parameter(f"The parameter 'inputs' does not hold valid JSON ({error}).") from None
    if not isinstance(inputs, dict):
        raise _invalid_parameter(f"The parameter 'inputs' must hold a JSON object, got {_json_type(inputs)}.")
    return inputs


def _read_callback_url(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _invalid_parameter(f"The parameter 'callbackUrl' must be a string URL, got {_quote(value)}.")
    return value


def _invalid_parameter(message: str) -> DataverseError:
    return DataverseError(400, INVALID_ARGUMENT, message)


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _quote(value: Any) -> str:
    """Render a rejected value as JSON for an error message, shortened when long."""
    text = json.dumps(value, ensure_ascii=False)
    if len(text) <= MAX_QUOTED_VALUE_CHARACTERS:
        return text
    return text[: MAX_QUOTED_VALUE_CHARACTERS - 3] + "..."


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
