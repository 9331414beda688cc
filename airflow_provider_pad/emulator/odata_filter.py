"""
Compile ``$filter`` expressions into predicates over rows.

The grammar is the subset of OData 4.0 and of Dataverse's query functions that the emulator serves:

- comparisons ``column op literal`` with ``eq``, ``ne``, ``gt``, ``ge``, ``lt`` and ``le``,
  joined by ``and``, ``or`` and ``not``, with parentheses;
- the Dataverse query functions ``Microsoft.Dynamics.CRM.In`` and ``Microsoft.Dynamics.CRM.NotIn``,
  such as ``Microsoft.Dynamics.CRM.In(PropertyName='flowsessionid',PropertyValues=['<guid>','<guid>'])``;
- parameter aliases such as ``@p1`` in place of a literal or a function parameter, with the
  value in the query string: ``...PropertyValues=@p1)&@p1=['<guid>','<guid>']``.

Literals are single-quoted strings (a quote inside is doubled), integers, unquoted GUIDs,
unquoted dates and times with a ``Z`` or ``+hh:mm`` offset (``2026-12-04T21:00:00.5Z``),
``true``, ``false`` and ``null``. Strings compare case-insensitively, as Dataverse's collation
does, and dates and times compare as instants.
"""

from __future__ import annotations

import contextlib
import datetime
import enum
import operator
import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from airflow_provider_pad.emulator.odata import ColumnType, ODataQueryError, Row, unknown_property_message

Predicate = Callable[[Row], bool]

IN_FUNCTION = "Microsoft.Dynamics.CRM.In"
NOT_IN_FUNCTION = "Microsoft.Dynamics.CRM.NotIn"

# Maximum nesting depth of parentheses and 'not'. The emulator chose it to keep the recursive
# parser far from Python's recursion limit. Dataverse documents no such limit.
MAX_NESTING_DEPTH = 100


class _TokenKind(enum.Enum):
    OPEN = "("
    CLOSE = ")"
    OPEN_BRACKET = "["
    CLOSE_BRACKET = "]"
    COMMA = ","
    EQUALS = "="
    NAME = "name"
    ALIAS = "parameter alias"
    STRING = "string"
    INTEGER = "integer"
    GUID = "guid"
    DATETIME_OFFSET = "date and time"
    DATE = "date"
    END = "end of expression"


@dataclass(frozen=True)
class _Token:
    kind: _TokenKind
    text: str
    position: int
    value: Any = None


_SINGLE_CHARACTER_TOKENS = "()[],="

_GUID_PATTERN = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}(?![\w.-])")
_DATETIME_OFFSET_PATTERN = re.compile(
    r"(?P<year>[0-9]{4})-(?P<month>[0-9]{2})-(?P<day>[0-9]{2})"
    r"T(?P<hour>[0-9]{2}):(?P<minute>[0-9]{2})(?::(?P<second>[0-9]{2})(?:\.(?P<fraction>[0-9]+))?)?"
    r"(?P<offset>[Zz]|[+-][0-9]{2}:[0-9]{2})(?![\w.:+-])"
)
# A date and time without an offset. A '+' that the client did not percent-encode decodes to a
# space, which leaves exactly this in front of the offset's digits.
_LOCAL_DATETIME_PATTERN = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+")
_DATE_PATTERN = re.compile(r"(?P<year>[0-9]{4})-(?P<month>[0-9]{2})-(?P<day>[0-9]{2})(?![\w.:-])")
_INTEGER_PATTERN = re.compile(r"-?[0-9]+(?![\w.])")
_ALIAS_PATTERN = re.compile(r"@[A-Za-z_][A-Za-z0-9_]*")
_NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")

# OData's names for the operators, which Dataverse's error messages use.
_COMPARISON_OPERATORS = {
    "eq": "Equal",
    "ne": "NotEqual",
    "gt": "GreaterThan",
    "ge": "GreaterThanOrEqual",
    "lt": "LessThan",
    "le": "LessThanOrEqual",
}
_ORDERING_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "gt": operator.gt,
    "ge": operator.ge,
    "lt": operator.lt,
    "le": operator.le,
}
_ORDERED_TYPES = frozenset({ColumnType.INT32, ColumnType.STRING, ColumnType.DATETIME_OFFSET})
_OPERATOR_EXPECTED = "a comparison operator (eq, ne, gt, ge, lt or le)"
_UNSUPPORTED_OPERATORS = {"has", "add", "sub", "mul", "div", "mod"}
_KEYWORD_LITERALS = {"null": (None, None), "true": (True, ColumnType.BOOLEAN), "false": (False, ColumnType.BOOLEAN)}
_IN_PARAMETERS = ("PropertyName", "PropertyValues")


def parse_filter(
    expression: str | None,
    columns: Mapping[str, ColumnType],
    entity: str,
    aliases: Mapping[str, str] | None = None,
) -> Predicate:
    """
    Compile a ``$filter`` expression into a predicate over rows. No expression matches every row.

    ``aliases`` maps parameter alias names, such as ``@p1``, to their text in the query string.
    """
    if expression is None:
        return lambda row: True
    if not expression.strip():
        raise ODataQueryError("The $filter expression is empty.")
    return _FilterParser(expression, columns, entity, aliases or {}).parse()


def parse_datetime_offset(text: str) -> datetime.datetime:
    """
    Parse an ISO 8601 date and time with a ``Z`` or ``+hh:mm`` offset into an aware datetime in UTC.

    Seconds and fractional seconds are optional. Fractions beyond microseconds are cut off.
    Raise ValueError for any other text or an impossible date or time.
    """
    match = _DATETIME_OFFSET_PATTERN.fullmatch(text)
    if match is None:
        raise ValueError(f"'{text}' is not a date and time such as 2026-12-04T21:00:00Z.")
    offset = match["offset"]
    if offset in ("Z", "z"):
        zone = datetime.timezone.utc
    else:
        sign = 1 if offset[0] == "+" else -1
        zone = datetime.timezone(sign * datetime.timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6])))

    microseconds = (match["fraction"] or "")[:6].ljust(6, "0")
    moment = datetime.datetime(
        int(match["year"]),
        int(match["month"]),
        int(match["day"]),
        int(match["hour"]),
        int(match["minute"]),
        int(match["second"] or 0),
        int(microseconds),
        tzinfo=zone,
    )
    return moment.astimezone(datetime.timezone.utc)


def _tokenize(expression: str) -> list[_Token]:
    tokens = []
    position = 0
    while position < len(expression):
        character = expression[position]
        if character.isspace():
            position += 1
            continue
        if character in _SINGLE_CHARACTER_TOKENS:
            tokens.append(_Token(_TokenKind(character), character, position))
            position += 1
            continue
        if character == "'":
            token, position = _read_string(expression, position)
            tokens.append(token)
            continue

        token = _read_unquoted_literal(expression, position)
        if token is None:
            token = _read_name(expression, position)
        if token is None:
            raise ODataQueryError(f"Syntax error: character {character!r} at position {position} in '{expression}'.")
        tokens.append(token)
        position += len(token.text)

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


def _read_unquoted_literal(expression: str, position: int) -> _Token | None:
    """Read a GUID, date and time, date or integer literal at ``position``, or return None."""
    match = _GUID_PATTERN.match(expression, position)
    if match:
        return _Token(_TokenKind.GUID, match.group(), position, str(uuid.UUID(match.group())))

    match = _DATETIME_OFFSET_PATTERN.match(expression, position)
    if match:
        try:
            moment = parse_datetime_offset(match.group())
        except ValueError as error:
            raise ODataQueryError(f"The date and time '{match.group()}' in $filter is not valid: {error}.") from None
        return _Token(_TokenKind.DATETIME_OFFSET, match.group(), position, moment)

    match = _LOCAL_DATETIME_PATTERN.match(expression, position)
    if match:
        raise ODataQueryError(
            f"The date and time '{match.group()}' at position {position} in $filter has no time zone offset. "
            "End it with Z or an offset such as +00:00, and percent-encode '+' as %2B in the URL, "
            "because a '+' in a query string decodes to a space."
        )

    match = _DATE_PATTERN.match(expression, position)
    if match:
        try:
            day = datetime.date(int(match["year"]), int(match["month"]), int(match["day"]))
        except ValueError as error:
            raise ODataQueryError(f"The date '{match.group()}' in $filter is not valid: {error}.") from None
        return _Token(_TokenKind.DATE, match.group(), position, day)

    match = _INTEGER_PATTERN.match(expression, position)
    if match:
        return _Token(_TokenKind.INTEGER, match.group(), position, int(match.group()))
    return None


def _read_name(expression: str, position: int) -> _Token | None:
    """Read a parameter alias (``@p1``) or a name (a column, keyword, operator or function) at ``position``."""
    match = _ALIAS_PATTERN.match(expression, position)
    if match:
        return _Token(_TokenKind.ALIAS, match.group(), position)
    match = _NAME_PATTERN.match(expression, position)
    if match:
        return _Token(_TokenKind.NAME, match.group(), position)
    return None


class _FilterParser:
    """
    Recursive-descent parser: or-expression, and-expression, not, then a function call,
    a comparison or parentheses.
    """

    def __init__(
        self, expression: str, columns: Mapping[str, ColumnType], entity: str, aliases: Mapping[str, str]
    ) -> None:
        self._expression = expression
        self._columns = columns
        self._entity = entity
        self._aliases = aliases
        self._tokens = _tokenize(expression)
        self._index = 0
        self._depth = 0
        self._reading_alias = False

    def parse(self) -> Predicate:
        predicate = self._parse_or()
        self._expect(_TokenKind.END)
        return predicate

    # Logical operators and grouping

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
            with self._nested():
                operand = self._parse_not()
            return lambda row: not operand(row)
        return self._parse_primary()

    def _parse_primary(self) -> Predicate:
        if self._peek().kind is _TokenKind.OPEN:
            self._advance()
            with self._nested():
                predicate = self._parse_or()
            self._expect(_TokenKind.CLOSE)
            return predicate
        if self._peek().kind is _TokenKind.NAME and self._peek(1).kind is _TokenKind.OPEN:
            return self._parse_function_call()
        return self._parse_comparison()

    @contextlib.contextmanager
    def _nested(self) -> Iterator[None]:
        self._depth += 1
        try:
            if self._depth > MAX_NESTING_DEPTH:
                raise ODataQueryError(
                    f"The $filter expression nests parentheses and 'not' more than {MAX_NESTING_DEPTH} levels deep. "
                    "Simplify it."
                )
            yield
        finally:
            self._depth -= 1

    # Comparisons

    def _parse_comparison(self) -> Predicate:
        column_token = self._expect(_TokenKind.NAME)
        column = column_token.text
        if column not in self._columns:
            raise ODataQueryError(unknown_property_message(column, self._entity))

        operator_token = self._expect(_TokenKind.NAME, _OPERATOR_EXPECTED)
        operator_name = operator_token.text
        if operator_name == "in":
            raise ODataQueryError(
                "The operator 'in' is not supported by the Dataverse emulator. Use "
                f"{IN_FUNCTION}(PropertyName='{column}',PropertyValues=['value1','value2']) instead."
            )
        if operator_name in _UNSUPPORTED_OPERATORS:
            raise ODataQueryError(
                f"The operator '{operator_name}' is not supported by the Dataverse emulator. "
                "Use eq, ne, gt, ge, lt or le."
            )
        if operator_name not in _COMPARISON_OPERATORS:
            raise self._syntax_error(operator_token, _OPERATOR_EXPECTED)

        literal, literal_type = self._parse_literal()
        column_type = self._columns[column]
        if literal_type is not None and literal_type is not column_type:
            raise ODataQueryError(
                "A binary operator with incompatible types was detected. Found operand types "
                f"'{column_type.value}' and '{literal_type.value}' for operator kind "
                f"'{_COMPARISON_OPERATORS[operator_name]}'."
            )
        if operator_name in _ORDERING_OPERATORS:
            self._check_ordering(operator_name, column, column_type, literal)
        return _comparison_predicate(column, column_type, operator_name, literal)

    def _check_ordering(self, operator_name: str, column: str, column_type: ColumnType, literal: Any) -> None:
        if column_type not in _ORDERED_TYPES:
            raise ODataQueryError(
                f"The operator '{operator_name}' cannot compare '{column}' of type {column_type.value} "
                "in the Dataverse emulator. Use eq or ne."
            )
        if literal is None:
            raise ODataQueryError(
                f"The operator '{operator_name}' needs a value, not null. Use eq null or ne null to test for no value."
            )

    def _parse_literal(self) -> tuple[Any, ColumnType | None]:
        token = self._advance()
        if token.kind is _TokenKind.ALIAS:
            return self._read_alias(token, self._parse_literal)
        if token.kind is _TokenKind.STRING:
            return token.value, ColumnType.STRING
        if token.kind is _TokenKind.INTEGER:
            return token.value, ColumnType.INT32
        if token.kind is _TokenKind.GUID:
            return token.value, ColumnType.GUID
        if token.kind is _TokenKind.DATETIME_OFFSET:
            return token.value, ColumnType.DATETIME_OFFSET
        if token.kind is _TokenKind.DATE:
            return token.value, ColumnType.DATE
        if token.kind is _TokenKind.NAME and token.text in _KEYWORD_LITERALS:
            return _KEYWORD_LITERALS[token.text]
        raise self._syntax_error(
            token,
            "a literal (a quoted string, an integer, a GUID, a date and time such as 2026-12-04T21:00:00Z, or null)",
        )

    # Dataverse query functions

    def _parse_function_call(self) -> Predicate:
        name_token = self._advance()
        function = name_token.text
        if function not in (IN_FUNCTION, NOT_IN_FUNCTION):
            raise ODataQueryError(
                f"The function '{function}' is not supported by the Dataverse emulator. Use eq, ne, gt, ge, lt "
                f"or le comparisons, {IN_FUNCTION} or {NOT_IN_FUNCTION}, joined by and, or, not."
            )

        arguments = self._parse_function_arguments(function)
        column, values = self._check_in_arguments(function, arguments)
        column_type = self._columns[column]
        accepted = frozenset(_in_value(value, column, column_type) for value in values)

        def is_in(row: Row) -> bool:
            value = _comparable(_row_value(row, column, column_type))
            return value is not None and value in accepted

        if function == IN_FUNCTION:
            return is_in
        return lambda row: not is_in(row)

    def _parse_function_arguments(self, function: str) -> dict[str, str | list[str]]:
        """Read ``(Name=value,...)``, where each value is a string, an array of strings or an alias."""
        self._expect(_TokenKind.OPEN)
        arguments: dict[str, str | list[str]] = {}
        while True:
            name_token = self._expect(_TokenKind.NAME, "a parameter name")
            self._expect(_TokenKind.EQUALS)
            if name_token.text in arguments:
                raise ODataQueryError(f"The parameter '{name_token.text}' of {function} is given more than once.")
            arguments[name_token.text] = self._parse_argument_value()
            if not self._accept(_TokenKind.COMMA):
                break
        self._expect(_TokenKind.CLOSE)
        return arguments

    def _parse_argument_value(self) -> str | list[str]:
        token = self._peek()
        if token.kind is _TokenKind.ALIAS:
            return self._read_alias(self._advance(), self._parse_argument_value)
        if token.kind is _TokenKind.STRING:
            return self._advance().value
        if token.kind is _TokenKind.OPEN_BRACKET:
            return self._parse_string_array()
        raise self._syntax_error(token, "a quoted string or an array of quoted strings such as ['a','b']")

    def _parse_string_array(self) -> list[str]:
        self._expect(_TokenKind.OPEN_BRACKET)
        values: list[str] = []
        if self._accept(_TokenKind.CLOSE_BRACKET):
            return values
        while True:
            values.append(self._expect(_TokenKind.STRING, "a quoted string").value)
            if self._accept(_TokenKind.CLOSE_BRACKET):
                return values
            self._expect(_TokenKind.COMMA, "',' or ']'")

    def _check_in_arguments(self, function: str, arguments: dict[str, str | list[str]]) -> tuple[str, list[str]]:
        """Return the column and the values of an In or NotIn call, or raise ODataQueryError."""
        for name in arguments:
            if name not in _IN_PARAMETERS:
                raise ODataQueryError(
                    f"{function} has no parameter '{name}'. Its parameters are PropertyName and PropertyValues."
                )
        for name in _IN_PARAMETERS:
            if name not in arguments:
                raise ODataQueryError(f"{function} needs the parameter '{name}'.")

        column = arguments["PropertyName"]
        if not isinstance(column, str):
            raise ODataQueryError(f"PropertyName of {function} must be a quoted column name such as 'flowsessionid'.")
        if column not in self._columns:
            raise ODataQueryError(unknown_property_message(column, self._entity))

        values = arguments["PropertyValues"]
        if not isinstance(values, list):
            raise ODataQueryError(f"PropertyValues of {function} must be an array of quoted values such as ['a','b'].")
        if not values:
            # NOTE: what Dataverse does with an empty PropertyValues array is not documented.
            raise ODataQueryError(f"PropertyValues of {function} is empty. Give at least one value.")
        return column, values

    # Parameter aliases

    def _read_alias(self, token: _Token, parse_value: Callable[[], Any]) -> Any:
        """Parse the query-string value of the alias ``token`` with ``parse_value``, then continue after the alias."""
        if self._reading_alias:
            raise ODataQueryError(
                f"The parameter alias '{token.text}' is used inside the value of another alias. Give the value itself."
            )
        if token.text not in self._aliases:
            raise ODataQueryError(
                f"The parameter alias '{token.text}' has no value. Add {token.text}=... to the query string."
            )

        text = self._aliases[token.text]
        saved = self._expression, self._tokens, self._index
        self._expression, self._tokens, self._index = text, _tokenize(text), 0
        self._reading_alias = True
        try:
            value = parse_value()
            self._expect(_TokenKind.END)
        finally:
            self._expression, self._tokens, self._index = saved
            self._reading_alias = False
        return value

    # Token stream

    def _peek(self, ahead: int = 0) -> _Token:
        return self._tokens[min(self._index + ahead, len(self._tokens) - 1)]

    def _advance(self) -> _Token:
        token = self._tokens[self._index]
        if token.kind is not _TokenKind.END:
            self._index += 1
        return token

    def _accept(self, kind: _TokenKind) -> bool:
        if self._peek().kind is kind:
            self._advance()
            return True
        return False

    def _accept_keyword(self, keyword: str) -> bool:
        token = self._peek()
        if token.kind is _TokenKind.NAME and token.text == keyword:
            self._advance()
            return True
        return False

    def _expect(self, kind: _TokenKind, expected: str | None = None) -> _Token:
        token = self._peek()
        if token.kind is not kind:
            if expected is None:
                expected = kind.value if kind is not _TokenKind.NAME else "a column name"
            raise self._syntax_error(token, expected)
        return self._advance()

    def _syntax_error(self, token: _Token, expected: str) -> ODataQueryError:
        found = token.text or "the end"
        return ODataQueryError(
            f"Syntax error at position {token.position} in '{self._expression}': expected {expected}, found '{found}'."
        )


def _comparison_predicate(column: str, column_type: ColumnType, operator_name: str, literal: Any) -> Predicate:
    expected = _comparable(literal)

    if operator_name in ("eq", "ne"):

        def equals(row: Row) -> bool:
            return _comparable(_row_value(row, column, column_type)) == expected

        if operator_name == "eq":
            return equals
        return lambda row: not equals(row)

    compare = _ORDERING_OPERATORS[operator_name]

    def ordered(row: Row) -> bool:
        value = _comparable(_row_value(row, column, column_type))
        # A missing value is neither greater nor less than any value.
        return value is not None and compare(value, expected)

    return ordered


def _in_value(text: str, column: str, column_type: ColumnType) -> Any:
    """Convert one PropertyValues string to the column's type, in the form ``_comparable`` returns."""
    if column_type is ColumnType.STRING:
        return text.casefold()
    if column_type is ColumnType.GUID:
        try:
            return str(uuid.UUID(text.strip()))
        except ValueError:
            raise ODataQueryError(
                f"The value '{text}' in PropertyValues is not a GUID, but '{column}' has type Edm.Guid."
            ) from None
    if column_type is ColumnType.INT32:
        if _INTEGER_PATTERN.fullmatch(text.strip()) is None:
            raise ODataQueryError(
                f"The value '{text}' in PropertyValues is not an integer, but '{column}' has type Edm.Int32."
            )
        return int(text)
    if column_type is ColumnType.DATETIME_OFFSET:
        try:
            return parse_datetime_offset(text.strip())
        except ValueError as error:
            raise ODataQueryError(f"The value in PropertyValues for '{column}' is invalid: {error}") from None
    if column_type is ColumnType.BOOLEAN and text.strip().lower() in ("true", "false"):
        return text.strip().lower() == "true"
    raise ODataQueryError(f"The value '{text}' in PropertyValues does not fit '{column}' of type {column_type.value}.")


def _row_value(row: Row, column: str, column_type: ColumnType) -> Any:
    """Read a column for comparison. Rows carry dates and times as ISO 8601 text, as Dataverse returns them."""
    value = row.get(column)
    if column_type is ColumnType.DATETIME_OFFSET and isinstance(value, str):
        return parse_datetime_offset(value)
    return value


def _comparable(value: Any) -> Any:
    """Fold strings, so that comparisons ignore case as Dataverse's collation does."""
    if isinstance(value, str):
        return value.casefold()
    return value
