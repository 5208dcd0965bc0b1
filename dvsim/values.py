"""Conversions between the three shapes a value takes: JSON on the wire, Python, and the SQLite column.

Kept in one place so the payload validator, the $filter translator and the row serializer agree on, say,
how a datetime is normalised (UTC, second precision, ``Z`` suffix, so text order is time order).
"""

from __future__ import annotations

import json
import math
import re
import uuid
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def is_guid(text: Any) -> bool:
    return isinstance(text, str) and bool(GUID_RE.match(text))


def norm_guid(text: str) -> str:
    return str(uuid.UUID(text))


def new_guid() -> str:
    return str(uuid.uuid4())


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def format_datetime(dt: datetime) -> str:
    """Dataverse returns DateTimeOffset values as UTC with a Z suffix and whole seconds."""
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_datetime(text: str) -> str:
    """Parse an ISO 8601 date or date-time (a date alone means midnight UTC); return the stored form."""
    if not isinstance(text, str):
        raise ValueError(text)
    s = text.strip()
    if len(s) == 10:
        dt = datetime.strptime(s, "%Y-%m-%d").replace(tzinfo=timezone.utc)
    else:
        if s.endswith(("Z", "z")):
            s = s[:-1] + "+00:00"
        dt = datetime.fromisoformat(s)
        if dt.tzinfo is None:  # Dataverse treats an offset-less value as UTC
            dt = dt.replace(tzinfo=timezone.utc)
    return format_datetime(dt)


def dumps(body: Any) -> str:
    """JSON text in which a Decimal is written as the exact number it is (Dataverse keeps decimals exact;
    json.dumps would have to go through float)."""
    if isinstance(body, Decimal):
        return format(body, "f")
    if isinstance(body, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {dumps(v)}" for k, v in body.items()) + "}"
    if isinstance(body, list | tuple):
        return "[" + ", ".join(dumps(v) for v in body) + "]"
    return json.dumps(body)


def loads(text: str | bytes) -> Any:
    """JSON with its numbers with a fraction read as Decimal, so no digit is lost on the way in."""
    return json.loads(text, parse_float=Decimal)


def to_column(attr_type: str, value: Any) -> Any:
    """A JSON payload value (already type-checked) to its SQLite column value."""
    if value is None:
        return None
    if attr_type == "bool":
        return 1 if value else 0
    if attr_type == "decimal":
        return format(Decimal(str(value)), "f")  # stored as exact text (see store._SQL_TYPES)
    if attr_type == "datetime":
        return parse_datetime(value)
    if attr_type in ("lookup", "guid"):
        return norm_guid(value)
    return value


def from_column(attr_type: str, value: Any) -> Any:
    """A SQLite column value to its JSON wire value."""
    if value is None:
        return None
    if attr_type == "bool":
        return bool(value)
    if attr_type == "decimal":
        return Decimal(str(value))
    return value


def check_payload_type(attr_type: str, value: Any) -> bool:
    """Whether a JSON value is acceptable for an attribute type (None is checked by the caller)."""
    if attr_type == "string":
        return isinstance(value, str)
    if attr_type in ("int", "optionset"):
        return isinstance(value, int) and not isinstance(value, bool)
    if attr_type == "decimal":
        # NaN and Infinity are not JSON numbers: Dataverse refuses them.
        return isinstance(value, (int, float, Decimal)) and not isinstance(value, bool) and math.isfinite(value)
    if attr_type == "bool":
        return isinstance(value, bool)
    if attr_type == "datetime":
        try:
            parse_datetime(value)
            return True
        except (ValueError, TypeError):
            return False
    if attr_type in ("guid", "lookup"):
        return is_guid(value)
    return False
