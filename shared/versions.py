"""Record versions as strings that sort like the values they came from.

The engine compares versions as plain strings (`new > last_applied`), so every connector must turn its
native change marker (a timestamp, a rowversion counter, a Dataverse versionnumber) into a string whose
lexical order is the value's order. `sortable_version` is that one conversion, shared by all of them.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

_ISO_MOMENT = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}.*)?$")

_INT_WIDTH = 20  # 2**64 has 20 digits: every BIGINT / rowversion / Dataverse versionnumber fits
_MOMENT_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}$")
_INT_VERSION = re.compile(r"^-?\d{20}$")
_DECIMAL_VERSION = re.compile(r"^\d{20}\.\d{1,30}$")
_HEX_VERSION = re.compile(r"^(?:[0-9A-F]{2}){1,32}$")
DELETED = "~deleted"  # the suffix of a delete's version (after the version it was seen after)
FUTURE_TOLERANCE = timedelta(days=1)  # clock skew between a source and us


def _format_moment(value: datetime) -> str:
    moment = value.astimezone(UTC) if value.tzinfo else value  # naive timestamps are taken as UTC
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T"
        f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}.{moment.microsecond:06d}"
    )


def _format_int(value: int) -> str:
    if value >= 0:
        if value >= 10**_INT_WIDTH:
            raise ValueError(f"version {value} has more than {_INT_WIDTH} digits")
        return f"{value:0{_INT_WIDTH}d}"
    # '-' sorts before every digit; the complement makes -2 sort before -1.
    if value <= -(10**_INT_WIDTH):
        raise ValueError(f"version {value} has more than {_INT_WIDTH} digits")
    return f"-{10**_INT_WIDTH - 1 + value:0{_INT_WIDTH}d}"


def sortable_version(value: Any) -> str:
    """A string whose lexical order is `value`'s order, for values of one kind.

    - datetime -> fixed-width UTC `YYYY-MM-DDTHH:MM:SS.ffffff` (naive taken as UTC, aware converted);
      a date is its midnight; an ISO date-time string is parsed and formatted the same way.
    - int (rowversion counters, version numbers) -> zero-padded to 20 digits; negatives sort below zero.
    - Decimal / float (e.g. epoch seconds in a REAL column) -> integer part as above, then the fraction
      without trailing zeros; negative fractional values are refused.
    - bytes (SQL Server rowversion) -> upper-case hex (fixed width for a fixed-width column).
    - any other string -> itself (it is assumed to sort already).
    Values of different kinds do not compare meaningfully; a source uses one kind for its version.
    """
    if value is None:
        raise ValueError("a version cannot be None")
    if isinstance(value, datetime):
        return _format_moment(value)
    if isinstance(value, date):
        return _format_moment(datetime(value.year, value.month, value.day))
    if isinstance(value, bool):
        return _format_int(int(value))
    if isinstance(value, int):
        return _format_int(value)
    if isinstance(value, float | Decimal):
        number = Decimal(str(value)) if isinstance(value, float) else value
        if not number.is_finite():
            raise ValueError(f"version {value!r} is not a finite number")
        whole = int(number)
        if number == whole:
            return _format_int(whole)
        if number < 0:
            raise ValueError(f"negative fractional version {value!r} cannot be made sortable")
        fraction = format(number - whole, "f").split(".")[1].rstrip("0")
        return f"{_format_int(whole)}.{fraction}"
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex().upper()
    if isinstance(value, str):
        if _ISO_MOMENT.match(value):
            try:
                return _format_moment(datetime.fromisoformat(value))
            except ValueError:
                pass
        return value
    raise TypeError(f"cannot make a sortable version from {type(value).__name__}")


def version_problem(version: str, op: str, now: datetime) -> str | None:
    """Why `version` cannot have come from any source, or None. Versions are compared as strings, so one
    that sorts above every real version (``~``, a date in 9999, a counter past 2**63) would freeze its
    record: every real change after it would look old. Only what `sortable_version` produces passes, plus
    the delete suffix; a moment may not lie beyond now plus a day of clock skew."""
    base = version[: -len(DELETED)] if version.endswith(DELETED) else version
    if base == "":
        return None if op == "delete" and version == DELETED else "empty"
    if _MOMENT_VERSION.match(base):
        try:
            moment = datetime.fromisoformat(base).replace(tzinfo=UTC)
        except ValueError:
            return f"{base!r} is not a valid date-time"
        if moment > now + FUTURE_TOLERANCE:
            return f"{base} lies in the future (now {now.astimezone(UTC):%Y-%m-%dT%H:%M:%S}Z)"
        return None
    if _INT_VERSION.match(base):
        return None if abs(int(base)) < 2**63 else f"{base} is beyond any 64-bit change counter"
    if _DECIMAL_VERSION.match(base) or _HEX_VERSION.match(base):
        return None
    return f"{base[:40]!r} is not in a version format any source produces (date-time, counter, number or hex)"
