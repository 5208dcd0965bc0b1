"""OData v4 literals and JSON bodies (OData ABNF, *URL Conventions* section 5.1.1 and Annex).

In a URL a literal goes through two encodings: the OData one (a string is quoted and its quotes doubled) and
then percent-encoding of every character the URL syntax gives a meaning to or does not allow. A raw ``+`` in a
query is read as a space by most servers (and refused by some), ``#`` ends the URL, ``%`` starts an escape,
``?`` and ``/`` split a key predicate; non-ASCII text is sent as UTF-8 percent-escapes.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import quote, unquote

_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
ISO_MOMENT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$")
# Left as they are in a query option value: OData's own syntax characters. Everything else (`+ / # % ? &`, space,
# non-ASCII) is percent-encoded.
QUERY_SAFE = "$,()'=:*@"
KEY_SAFE = "(),='"  # in a key predicate (a path segment): `/` and `?` are encoded too


def is_guid(value: Any) -> bool:
    return isinstance(value, str) and bool(_GUID.match(value))


def iso_moment(value: datetime) -> str:
    moment = value if value.tzinfo else value.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def odata_literal(value: Any, *, guid: bool = False, bare: bool = False) -> str:
    """A value as an OData literal: strings quoted (quotes doubled), GUIDs (``guid``), numbers, booleans and
    date-times bare. ``bare`` writes a string as it is (a number or date-time the service typed as such)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | Decimal):
        return str(value)
    if isinstance(value, datetime):
        return iso_moment(value)
    if isinstance(value, date):
        return value.isoformat()
    text = str(value)
    if guid and is_guid(text):
        return text.lower()
    if bare:
        return text
    return "'" + text.replace("'", "''") + "'"


def query_value(text: str) -> str:
    """A query option's value (``$filter`` with its literals) percent-encoded for the URL."""
    return quote(text, safe=QUERY_SAFE)


def key_predicate(entity: str, parts: Sequence[tuple[str, str]]) -> str:
    """``Products('A%2B1')`` or ``Prices(dataAreaId='usmf',ItemNumber='X')`` from (name, literal) pairs,
    percent-encoded as a path segment."""
    if len(parts) == 1:
        inner = parts[0][1]
    else:
        inner = ",".join(f"{name}={literal}" for name, literal in parts)
    return quote(entity, safe="") + quote(f"({inner})", safe=KEY_SAFE)


def parse_key_predicate(text: str) -> dict[str, str] | str | None:
    """The key in an entity id (``Products('A-1')``, ``Prices(dataAreaId='usmf',ItemNumber='X')``, a full URL
    too): the single value, or name -> value for a named (composite) key; literals unquoted. None if none."""
    match = re.search(r"\(([^()]*)\)\s*$", text)
    if match is None:
        return None
    inner = unquote(match.group(1))
    pieces = _split_outside_quotes(inner, ",")
    if len(pieces) == 1 and not _named(pieces[0]):
        return _unquote_literal(pieces[0])
    named: dict[str, str] = {}
    for piece in pieces:
        name, _, literal = piece.partition("=")
        named[name.strip()] = _unquote_literal(literal)
    return named


def _named(piece: str) -> bool:
    head = piece.split("'", 1)[0]
    return "=" in head


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    pieces, current, quoted = [], [], False
    for char in text:
        if char == "'":
            quoted = not quoted
        if char == sep and not quoted:
            pieces.append("".join(current))
            current = []
        else:
            current.append(char)
    pieces.append("".join(current))
    return pieces


def _unquote_literal(literal: str) -> str:
    literal = literal.strip()
    if len(literal) >= 2 and literal[0] == literal[-1] == "'":
        return literal[1:-1].replace("''", "'")
    return literal


def json_body(payload: Any) -> str:
    """JSON with every Decimal written as the exact number it is: json.dumps can only go through float, and
    99999999999999.99 would arrive as 99999999999999.98. NaN and Infinity have no JSON form: refused."""
    if isinstance(payload, Decimal):
        if not payload.is_finite():
            raise ValueError(f"{payload} is not a number JSON can carry")
        return format(payload, "f")
    if isinstance(payload, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{json_body(v)}" for k, v in payload.items()) + "}"
    if isinstance(payload, list | tuple):
        return "[" + ",".join(json_body(v) for v in payload) + "]"
    return json.dumps(payload, default=_json_default, allow_nan=False)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso_moment(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"a {type(value).__name__} cannot be sent as JSON")


def moment(value: Any) -> datetime | None:
    """An Edm.DateTimeOffset as an aware UTC datetime (naive text taken as UTC); None if it is not one."""
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    if not isinstance(value, str) or not value:
        return None
    text = value.replace("Z", "+00:00")
    # Python before 3.11 and some services: more than 6 fractional digits (Edm precision 7) do not parse.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
