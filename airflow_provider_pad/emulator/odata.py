"""
Parse the OData query options the emulator supports: ``$select``, ``$orderby``, ``$top``,
``$skiptoken`` and the ``Prefer: odata.maxpagesize`` header. :mod:`odata_filter` parses ``$filter``.

Anything malformed or unsupported raises ODataQueryError, which the caller turns into a 400 response.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, quote

Row = Mapping[str, Any]


class ODataQueryError(ValueError):
    """A query option is malformed, unknown, or outside the subset the emulator supports."""


class ColumnType(enum.Enum):
    """Edm type of a filterable column or of a ``$filter`` literal."""

    STRING = "Edm.String"
    INT32 = "Edm.Int32"
    GUID = "Edm.Guid"
    BOOLEAN = "Edm.Boolean"
    DATETIME_OFFSET = "Edm.DateTimeOffset"
    # Only a literal such as 2026-12-04 has this type. No emulated column does.
    DATE = "Edm.Date"


# Characters left unencoded when the emulator writes query options into a link. Everything
# that could end or split a query option ('&', '+', '#', '%', ';', spaces) is percent-encoded.
_LINK_SAFE_CHARACTERS = "$,()'@:/"

_SKIPTOKEN_PATTERN = re.compile(r'<cookie pagenumber="(?P<page>[0-9]+)" offset="(?P<offset>[0-9]+)" />')


def parse_query_options(raw_query: bytes, allowed: Iterable[str]) -> dict[str, str]:
    """
    Decode a raw query string into a map of option name to value.

    Percent-escapes are decoded as UTF-8 and ``+`` as a space, as clients encode query options.
    Names starting with ``$`` must be in ``allowed``. Other names, such as parameter aliases
    (``@p1``), pass through.
    """
    try:
        text = raw_query.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise ODataQueryError("The query string is not valid UTF-8 after percent-decoding.") from None

    allowed_names = set(allowed)
    options: dict[str, str] = {}
    for name, value in pairs:
        if name.startswith("$") and name not in allowed_names:
            supported = ", ".join(sorted(allowed_names)) or "none"
            raise ODataQueryError(
                f"The query option '{name}' is not supported here by the Dataverse emulator. Supported: {supported}."
            )
        if name in options:
            raise ODataQueryError(f"The query option '{name}' was specified more than once. Specify it once.")
        options[name] = value
    return options


def build_query_string(options: Mapping[str, str]) -> str:
    """Encode query options for a link, so that ``parse_query_options`` reads them back unchanged."""
    return "&".join(
        f"{quote(name, safe=_LINK_SAFE_CHARACTERS)}={quote(value, safe=_LINK_SAFE_CHARACTERS)}"
        for name, value in options.items()
    )


def parse_select(value: str | None, columns: Iterable[str], entity: str) -> list[str] | None:
    """Return the columns that ``$select`` names, or None to select every column."""
    if value is None:
        return None
    known = set(columns)
    selected = []
    for column in (part.strip() for part in value.split(",")):
        if not column:
            raise ODataQueryError(f"The $select value '{value}' has an empty column name.")
        if column not in known:
            raise ODataQueryError(unknown_property_message(column, entity))
        if column not in selected:
            selected.append(column)
    return selected


def parse_orderby(value: str | None, columns: Iterable[str], entity: str) -> list[tuple[str, bool]]:
    """Return ``(column, descending)`` pairs from ``$orderby``, in order of precedence."""
    if value is None:
        return []
    known = set(columns)
    ordering = []
    for clause in (part.strip() for part in value.split(",")):
        words = clause.split()
        if not words or len(words) > 2 or (len(words) == 2 and words[1] not in ("asc", "desc")):
            raise ODataQueryError(f"The $orderby clause '{clause}' is not 'column', 'column asc' or 'column desc'.")
        if words[0] not in known:
            raise ODataQueryError(unknown_property_message(words[0], entity))
        ordering.append((words[0], len(words) == 2 and words[1] == "desc"))
    return ordering


def parse_top(value: str | None) -> int | None:
    if value is None:
        return None
    if not value.isdigit():
        raise ODataQueryError(f"The $top value '{value}' is not a non-negative integer.")
    return int(value)


def parse_max_page_size(prefer_values: Iterable[str]) -> int | None:
    """Return the ``odata.maxpagesize`` preference from the ``Prefer`` header values, if any."""
    for header_value in prefer_values:
        for preference in header_value.split(","):
            name, _, value = preference.strip().partition("=")
            if name.strip().lower() != "odata.maxpagesize":
                continue
            value = value.strip().strip('"')
            if not value.isdigit() or int(value) == 0:
                raise ODataQueryError(
                    f"The Prefer header value 'odata.maxpagesize={value}' is invalid. Give a positive integer."
                )
            return int(value)
    return None


def encode_skiptoken(page_number: int, offset: int) -> str:
    """Build the paging cookie of the page that starts at row ``offset``."""
    return f'<cookie pagenumber="{page_number}" offset="{offset}" />'


def decode_skiptoken(value: str | None) -> tuple[int, int]:
    """Return ``(page_number, offset)`` from a ``$skiptoken`` value, or the first page for no token."""
    if value is None:
        return 1, 0
    match = _SKIPTOKEN_PATTERN.fullmatch(value)
    if match is None:
        raise ODataQueryError(
            "The $skiptoken value is not a paging cookie from this emulator. Follow @odata.nextLink unchanged."
        )
    return int(match["page"]), int(match["offset"])


def sort_rows(rows: list[Row], ordering: list[tuple[str, bool]]) -> list[Row]:
    """Sort rows by ``ordering``. Strings compare case-insensitively and nulls sort first, as in Dataverse."""
    ordered = list(rows)
    for column, descending in reversed(ordering):
        ordered.sort(key=lambda row: _sort_key(row.get(column)), reverse=descending)
    return ordered


def _sort_key(value: Any) -> tuple[int, Any]:
    if value is None:
        return 0, ""
    if isinstance(value, str):
        return 1, value.casefold()
    return 1, value


def unknown_property_message(column: str, entity: str) -> str:
    return f"Could not find a property named '{column}' on type 'Microsoft.Dynamics.CRM.{entity}'."
