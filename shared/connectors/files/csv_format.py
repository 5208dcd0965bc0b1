"""CSV as configured per entity (shared.connectors.files_settings.CsvFormat): reading an export row by row, writing an import file.

Reading never trusts a row: one whose column count differs from the header's, or whose cell does not parse as
its declared type, comes back with a `problem` naming the line and the column and the rule it broke, so it
can be dead-lettered while the rest of the file goes on. Lines are physical lines (a quoted value may span
several; a row is named by the line it starts on), the header being line 1. A file that is not a CSV of this
format at all (no header, the wrong encoding) raises FileFormatError: that is the file's problem, not a row's.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import IO, Any

from shared.connectors.files_settings import CsvFormat

_QUOTING = {"minimal": csv.QUOTE_MINIMAL, "all": csv.QUOTE_ALL, "none": csv.QUOTE_NONE}
_INT = re.compile(r"^[+-]?\d{1,19}$")
_DECIMAL = {".": re.compile(r"^[+-]?\d{1,38}(\.\d{1,38})?$"), ",": re.compile(r"^[+-]?\d{1,38}(,\d{1,38})?$")}
_TRUE, _FALSE = {"true", "1", "yes", "y"}, {"false", "0", "no", "n"}


class FileFormatError(ValueError):
    """The file as a whole cannot be read with its entity's format."""


@dataclass
class Row:
    line: int  # where the row starts (the header is line 1)
    values: dict[str, Any]  # field name -> parsed value (None for an empty cell)
    problem: str | None = None  # why the row cannot be used: line, column and rule


def _dialect(fmt: CsvFormat) -> dict[str, Any]:
    return {"delimiter": fmt.delimiter, "quotechar": fmt.quotechar, "quoting": _QUOTING[fmt.quoting],
            "escapechar": fmt.escapechar, "doublequote": fmt.escapechar is None, "strict": True}


def field_names(header: Sequence[str], fmt: CsvFormat) -> list[str]:
    return [fmt.columns.get(name, name) for name in header]


def parse_cell(text: str, type_name: str | None, fmt: CsvFormat) -> Any:
    """The cell's value as `type_name`; raises ValueError saying which rule it broke."""
    if text in ("", fmt.null_marker):
        return None
    if type_name is None or type_name == "string":
        return text
    value = text.strip()
    if type_name == "decimal":
        if not _DECIMAL[fmt.decimal_separator].match(value):
            raise ValueError(f"{text!r} is not a decimal number with decimal separator {fmt.decimal_separator!r}")
        return str(Decimal(value.replace(",", ".")))
    if type_name == "int":
        if not _INT.match(value):
            raise ValueError(f"{text!r} is not a whole number")
        return int(value)
    if type_name == "bool":
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        raise ValueError(f"{text!r} is not a boolean (true/false, 1/0, yes/no)")
    try:
        if type_name == "date":
            return date.fromisoformat(value).isoformat()
        if type_name == "datetime":
            return datetime.fromisoformat(value).isoformat()
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 {type_name}") from None
    raise ValueError(f"unknown type {type_name!r}")


def read_rows(stream: IO[bytes], fmt: CsvFormat, where: str) -> Iterator[Row]:
    """The rows of one file, in order. `where` names the file in every problem."""
    text = io.TextIOWrapper(stream, encoding=fmt.encoding, errors="strict", newline="")  # type: ignore[arg-type]
    reader = csv.reader(text, **_dialect(fmt))
    try:
        header, names = _header(reader, fmt, where)
        line = reader.line_num + 1
        for cells in reader:
            start, line = line, reader.line_num + 1
            if not cells:
                continue  # a blank line
            yield _row(cells, header, names, fmt, where, start)
    except UnicodeDecodeError as exc:
        raise FileFormatError(f"{where}: not {fmt.encoding} after line {reader.line_num} ({exc.reason})") from None
    except csv.Error as exc:
        raise FileFormatError(f"{where} line {reader.line_num}: {exc}") from None


def read_field_names(stream: IO[bytes], fmt: CsvFormat, where: str) -> list[str]:
    """The field names of a file's header (its first line only)."""
    text = io.TextIOWrapper(stream, encoding=fmt.encoding, errors="strict", newline="")  # type: ignore[arg-type]
    try:
        return _header(csv.reader(text, **_dialect(fmt)), fmt, where)[1]
    except UnicodeDecodeError as exc:
        raise FileFormatError(f"{where}: header not {fmt.encoding} ({exc.reason})") from None
    except csv.Error as exc:
        raise FileFormatError(f"{where} line 1: {exc}") from None


def _header(reader: Iterator[list[str]], fmt: CsvFormat, where: str) -> tuple[list[str], list[str]]:
    """(the header's columns, their field names)."""
    header = next(reader, None)
    if not header or header == [""]:
        raise FileFormatError(f"{where}: no header row")
    names = field_names(header, fmt)
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise FileFormatError(f"{where}: the header names field(s) {', '.join(twice)} more than once")
    return header, names


def _row(cells: list[str], header: list[str], names: list[str], fmt: CsvFormat, where: str, line: int) -> Row:
    if len(cells) != len(header):
        return Row(line, dict(zip(names, cells, strict=False)), f"file {where} line {line}: {len(cells)} columns where the header has "
                                 f"{len(header)} (delimiter {fmt.delimiter!r})")
    values: dict[str, Any] = {}
    problem = None
    for column, name, cell in zip(header, names, cells, strict=True):
        try:
            values[name] = parse_cell(cell, fmt.types.get(name), fmt)
        except ValueError as exc:
            values[name] = cell
            problem = problem or f"file {where} line {line} column {column!r} (field {name}): {exc}"
    return Row(line, values, problem)


def format_cell(value: Any, fmt: CsvFormat, type_name: str | None = None) -> str:
    if value is None:
        return fmt.null_marker
    if type_name == "decimal" and isinstance(value, str):
        return value.replace(".", fmt.decimal_separator)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float | Decimal):
        return str(value).replace(".", fmt.decimal_separator)
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def encode_rows(columns: Sequence[str], rows: Sequence[dict[str, Any]], fmt: CsvFormat) -> Iterator[bytes]:
    """An import file: the header (each field under its CSV name), then one line per row, encoded in chunks. A
    field a row does not have is an empty cell; a field it sets to null is the null marker."""
    headers = {name: column for column, name in fmt.columns.items()}
    encoder = codecs.getincrementalencoder(fmt.encoding)()
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n", **_dialect(fmt))
    writer.writerow([headers.get(name, name) for name in columns])
    for number, row in enumerate(rows, start=1):
        writer.writerow([format_cell(row[name], fmt, fmt.types.get(name)) if name in row else ""
                         for name in columns])
        if number % 1000 == 0:
            yield encoder.encode(buffer.getvalue())
            buffer.seek(0)
            buffer.truncate()
    yield encoder.encode(buffer.getvalue(), final=True)
