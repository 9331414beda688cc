"""
Parse the OData query options the emulator supports: ``$filter``, ``$select``, ``$orderby``,
``$top``, ``$skiptoken`` and the ``Prefer: odata.maxpagesize`` header.

The ``$filter`` grammar is a subset of OData 4.0: comparisons ``column eq literal`` and
``column ne literal`` joined by ``and``, ``or`` and ``not``, with parentheses. Literals are
single-quoted strings (a quote inside is doubled), integers, GUIDs and ``null``. Anything else
raises ODataQueryError, which the caller turns into a 400 response.
"""

from __future__ import annotations

import enum
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote

Row = Mapping[str, Any]
Predicate = Callable[[Row], bool]


class ODataQueryError(ValueError):
    """A query option is malformed, unknown, or outside the subset the emulator supports."""


class ColumnType(enum.Enum):
    """Edm type of a filterable column."""

    STRING = "Edm.String"
    INT32 = "Edm.Int32"
    GUID = "Edm.Guid"
    BOOLEAN = "Edm.Boolean"


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
            raise ODataQueryError(_unknown_property_message(column, entity))
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
            raise ODataQueryError(_unknown_property_message(words[0], entity))
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


def _unknown_property_message(column: str, entity: str) -> str:
    return f"Could not find a property named '{column}' on type 'Microsoft.Dynamics.CRM.{entity}'."


# $filter


class _TokenKind(enum.Enum):
    OPEN = "("
    CLOSE = ")"
    COMMA = ","
    NAME = "name"
    STRING = "string"
    INTEGER = "integer"
    GUID = "guid"
    END = "end of expression"


@dataclass(frozen=True)
class _Token:
    kind: _TokenKind
    text: str
    position: int
    value: Any = None


_GUID_PATTERN = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}(?![\w.-])")
_INTEGER_PATTERN = re.compile(r"-?[0-9]+(?![\w.])")
_NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")

_COMPARISON_OPERATORS = {"eq": "Equal", "ne": "NotEqual"}
_UNSUPPORTED_OPERATORS = {"gt", "ge", "lt", "le", "has", "in", "add", "sub", "mul", "div", "mod"}
_KEYWORD_LITERALS = {"null": (None, None), "true": (True, ColumnType.BOOLEAN), "false": (False, ColumnType.BOOLEAN)}


def parse_filter(expression: str | None, columns: Mapping[str, ColumnType], entity: str) -> Predicate:
    """Compile a ``$filter`` expression into a predicate over rows. No expression matches every row."""
    if expression is None:
        return lambda row: True
    if not expression.strip():
        raise ODataQueryError("The $filter expression is empty.")
    return _FilterParser(expression, columns, entity).parse()


def _tokenize(expression: str) -> list[_Token]:
    tokens = []
    position = 0
    while position < len(expression):
        character = expression[position]
        if character.isspace():
            position += 1
            continue
        if character in "(),":
            tokens.append(_Token(_TokenKind(character), character, position))
            position += 1
            continue
        if character == "'":
            token, position = _read_string(expression, position)
            tokens.append(token)
            continue

        match = _GUID_PATTERN.match(expression, position)
        if match:
            tokens.append(_Token(_TokenKind.GUID, match.group(), position, str(uuid.UUID(match.group()))))
            position = match.end()
            continue
        match = _INTEGER_PATTERN.match(expression, position)
        if match:
            tokens.append(_Token(_TokenKind.INTEGER, match.group(), position, int(match.group())))
            position = match.end()
            continue
        match = _NAME_PATTERN.match(expression, position)
        if match:
            tokens.append(_Token(_TokenKind.NAME, match.group(), position))
            position = match.end()
            continue
        raise ODataQueryError(f"Syntax error: character {character!r} at position {position} in '{expression}'.")

    tokens.append(_Token(_TokenKind.END, "", len(expression)))
    return tokens


def _read_string(expression: str, start: int) -> tuple[_Token, int]:
    """Read the string literal that opens at ``start``, where a doubled quote is one quote character."""
    characters = []
    position = start + 1
    while position < len(expression):
        if expression[position] != "'":
            characters.append(expression[position])
            position += 1
        elif expression.startswith("''", position):
            characters.append("'")
            position += 2
        else:
            text = expression[start : position + 1]
            return _Token(_TokenKind.STRING, text, start, "".join(characters)), position + 1
    raise ODataQueryError(f"Syntax error: the string literal at position {start} in '{expression}' is not closed.")


class _FilterParser:
    """Recursive-descent parser: or-expression, and-expression, not, then comparison or parentheses."""

    def __init__(self, expression: str, columns: Mapping[str, ColumnType], entity: str) -> None:
        self._expression = expression
        self._columns = columns
        self._entity = entity
        self._tokens = _tokenize(expression)
        self._index = 0

    def parse(self) -> Predicate:
        predicate = self._parse_or()
        self._expect(_TokenKind.END)
        return predicate

    def _parse_or(self) -> Predicate:
        operands = [self._parse_and()]
        while self._accept_keyword("or"):
            operands.append(self._parse_and())
        if len(operands) == 1:
            return operands[0]
        return lambda row: any(operand(row) for operand in operands)

    def _parse_and(self) -> Predicate:
        operands = [self._parse_not()]
        while self._accept_keyword("and"):
            operands.append(self._parse_not())
        if len(operands) == 1:
            return operands[0]
        return lambda row: all(operand(row) for operand in operands)

    def _parse_not(self) -> Predicate:
        if self._accept_keyword("not"):
            operand = self._parse_not()
            return lambda row: not operand(row)
        return self._parse_primary()

    def _parse_primary(self) -> Predicate:
        if self._peek().kind is _TokenKind.OPEN:
            self._advance()
            predicate = self._parse_or()
            self._expect(_TokenKind.CLOSE)
            return predicate
        return self._parse_comparison()

    def _parse_comparison(self) -> Predicate:
        column_token = self._expect(_TokenKind.NAME)
        if self._peek().kind is _TokenKind.OPEN:
            raise ODataQueryError(
                f"The function '{column_token.text}' is not supported by the Dataverse emulator. "
                "Use eq or ne comparisons joined by and, or, not."
            )
        column = column_token.text
        if column not in self._columns:
            raise ODataQueryError(_unknown_property_message(column, self._entity))

        operator_token = self._expect(_TokenKind.NAME)
        if operator_token.text in _UNSUPPORTED_OPERATORS:
            raise ODataQueryError(
                f"The operator '{operator_token.text}' is not supported by the Dataverse emulator. Use eq or ne."
            )
        if operator_token.text not in _COMPARISON_OPERATORS:
            raise self._syntax_error(operator_token, "a comparison operator (eq or ne)")

        literal, literal_type = self._parse_literal()
        column_type = self._columns[column]
        if literal_type is not None and literal_type is not column_type:
            raise ODataQueryError(
                "A binary operator with incompatible types was detected. Found operand types "
                f"'{column_type.value}' and '{literal_type.value}' for operator kind "
                f"'{_COMPARISON_OPERATORS[operator_token.text]}'."
            )

        def matches(row: Row) -> bool:
            return _values_equal(row.get(column), literal)

        if operator_token.text == "eq":
            return matches
        return lambda row: not matches(row)

    def _parse_literal(self) -> tuple[Any, ColumnType | None]:
        token = self._advance()
        if token.kind is _TokenKind.STRING:
            return token.value, ColumnType.STRING
        if token.kind is _TokenKind.INTEGER:
            return token.value, ColumnType.INT32
        if token.kind is _TokenKind.GUID:
            return token.value, ColumnType.GUID
        if token.kind is _TokenKind.NAME and token.text in _KEYWORD_LITERALS:
            return _KEYWORD_LITERALS[token.text]
        raise self._syntax_error(token, "a literal (a quoted string, an integer, a GUID or null)")

    def _peek(self) -> _Token:
        return self._tokens[self._index]

    def _advance(self) -> _Token:
        token = self._tokens[self._index]
        if token.kind is not _TokenKind.END:
            self._index += 1
        return token

    def _accept_keyword(self, keyword: str) -> bool:
        token = self._peek()
        if token.kind is _TokenKind.NAME and token.text == keyword:
            self._advance()
            return True
        return False

    def _expect(self, kind: _TokenKind) -> _Token:
        token = self._peek()
        if token.kind is not kind:
            raise self._syntax_error(token, kind.value if kind is not _TokenKind.NAME else "a column name")
        return self._advance()

    def _syntax_error(self, token: _Token, expected: str) -> ODataQueryError:
        found = token.text or "the end"
        return ODataQueryError(
            f"Syntax error at position {token.position} in '{self._expression}': expected {expected}, found '{found}'."
        )


def _values_equal(value: Any, literal: Any) -> bool:
    """Compare a row value with a literal. Strings compare case-insensitively, as Dataverse's collation does."""
    if isinstance(value, str) and isinstance(literal, str):
        return value.casefold() == literal.casefold()
    return value == literal
