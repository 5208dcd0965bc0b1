"""Typed field values: coercion to a field's declared type and a canonical form for comparison.

Two sides rarely agree on representation (Decimal('100.00') vs 100, '2024-01-01T00:00:00Z' vs a
datetime), so echo detection and conflict checks compare canonical forms, never raw values.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any


class CoercionError(ValueError):
    pass


def _to_datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    else:
        raise CoercionError(f"{value!r} is not a date-time")
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def coerce(value: Any, type_name: str | None) -> Any:
    """Convert `value` to `type_name`; raises CoercionError with the rule it broke."""
    if value is None or type_name is None:
        return value
    try:
        if type_name == "string":
            return value if isinstance(value, str) else str(value)
        if type_name == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise CoercionError(f"{value!r} is not a whole number")
            return int(Decimal(str(value)))
        if type_name == "decimal":
            if isinstance(value, bool):
                raise CoercionError(f"{value!r} is not a number")
            return Decimal(str(value))
        if type_name == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("true", "1", "yes", "y"):
                return True
            if text in ("false", "0", "no", "n"):
                return False
            raise CoercionError(f"{value!r} is not a boolean")
        if type_name == "datetime":
            return _to_datetime(value)
        if type_name == "date":
            return value if isinstance(value, date) and not isinstance(value, datetime) else date.fromisoformat(
                str(value)[:10]
            )
    except (InvalidOperation, ValueError, TypeError) as exc:
        if isinstance(exc, CoercionError):
            raise
        raise CoercionError(f"{value!r} is not a valid {type_name}") from None
    raise CoercionError(f"unknown type {type_name!r}")


def canonical(value: Any) -> Any:
    """A JSON-friendly form under which equal business values compare equal."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int | float | Decimal):
        number = Decimal(str(value)).normalize()
        return "0" if number.is_zero() else format(number, "f")
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        return moment.astimezone(UTC).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):
        return value
    return str(value)


def canonical_row(values: dict[str, Any]) -> dict[str, Any]:
    return {k: canonical(v) for k, v in values.items()}


def same_value(incoming: Any, stored_canonical: Any) -> bool:
    """Does a raw incoming value equal a stored canonical one? Numbers compare by value, since one
    side's '10.00' is another side's 10."""
    mine = canonical(incoming)
    if mine == stored_canonical:
        return True
    if isinstance(mine, str) and isinstance(stored_canonical, str):
        try:
            return Decimal(mine) == Decimal(stored_canonical)
        except InvalidOperation:
            return False
    return False
