"""Build Dataverse Web API responses: JSON bodies with OData headers, and Dataverse error bodies."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import Response

DATAVERSE_JSON_MEDIA_TYPE = "application/json; odata.metadata=minimal; charset=utf-8"

# Dataverse error codes the emulator sends. The HTTP status and the code are not tied:
# Dataverse sends "0x0" or an empty code for some OData request errors.
OBJECT_DOES_NOT_EXIST = "0x80040217"
INVALID_ARGUMENT = "0x80040203"
PAYLOAD_ERROR = "0x80048d19"
QUERY_SYNTAX_ERROR = "0x80060888"
RESOURCE_NOT_FOUND_FOR_SEGMENT = "0x8006088a"
ACCESS_TOKEN_EXPIRED = "0x8005f101"
ODATA_REQUEST_ERROR = "0x0"
NO_MATCHING_RESOURCE = ""

# A typical error code and message for each status an injected fault can have.
_FAULT_ERRORS = {
    400: (INVALID_ARGUMENT, "Invalid argument."),
    401: (ACCESS_TOKEN_EXPIRED, "The requested resource requires authentication."),
    403: ("0x80040220", "Principal user is missing the privilege required for this operation."),
    404: (OBJECT_DOES_NOT_EXIST, "The requested record does not exist."),
    408: ("0x80040216", "The request timed out."),
    412: ("0x80060882", "The version of the existing record doesn't match the RowVersion property provided."),
    429: (
        "0x80072322",
        "Number of requests exceeded the limit of 6000 over time window of 300 seconds. "
        "Retry after the number of seconds in the Retry-After header.",
    ),
    500: ("0x80040216", "An unexpected error occurred."),
    502: ("0x80040216", "The gateway received an invalid response from the server."),
    503: ("0x80040216", "The service is temporarily unavailable. Retry later."),
    504: ("0x80040216", "The gateway timed out waiting for the server."),
}


class DataverseError(Exception):
    """An error that a route handler raises to respond with a Dataverse error body."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def to_response(self) -> Response:
        return dataverse_error_response(self.status, self.code, self.message, self.headers)


def json_bytes(payload: Any) -> bytes:
    """Encode ``payload`` as compact UTF-8 JSON."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def dataverse_json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """Build a response with ``payload`` as JSON and the headers Dataverse sends on every response."""
    return Response(
        json_bytes(payload),
        status_code=status,
        headers={"OData-Version": "4.0", **(headers or {})},
        media_type=DATAVERSE_JSON_MEDIA_TYPE,
    )


def dataverse_error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    """Build a response with a Dataverse error body: ``{"error": {"code": ..., "message": ...}}``."""
    return dataverse_json_response({"error": {"code": code, "message": message}}, status, headers)


def default_fault_error(status: int) -> tuple[str, str]:
    """Return a plausible Dataverse error code and message for an injected fault with ``status``."""
    if status in _FAULT_ERRORS:
        return _FAULT_ERRORS[status]
    if status >= 500:
        return _FAULT_ERRORS[500]
    return INVALID_ARGUMENT, f"The request failed with HTTP status {status}."
