"""Numbers from outside, bounded before anything expands them.

A decimal written with an exponent is short text and a huge value: `Decimal("1e999999999")` is eleven
characters, but formatting it as digits (a text column, a canonical form) builds a gigabyte string, and
`int()` of it a gigabyte integer. No column of any system holds such a value, so it is refused while it
is still short, with the rule it broke, and the record is dead-lettered for it.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

MAX_DIGITS = 76  # significant digits: twice SQL Server's and Dataverse's 38, PostgreSQL's numeric aside
MAX_EXPONENT = 308  # |adjusted exponent|: IEEE doubles (1e308) are the widest of any column type


def bounded_decimal(value: Any) -> Decimal:
    """`value` as a Decimal; ValueError naming the rule when it is not a finite number within the bounds."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number")
    try:
        number = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise ValueError(f"{str(value)[:40]!r} is not a number") from None
    if not number.is_finite():
        raise ValueError(f"{str(value)[:40]!r} is not a finite number")
    if number.is_zero():
        return number
    digits = len(number.as_tuple().digits)
    if digits > MAX_DIGITS or abs(number.adjusted()) > MAX_EXPONENT:
        raise ValueError(f"{str(value)[:40]!r} has {digits} digits and exponent {number.adjusted()}: beyond any "
                         f"numeric column (at most {MAX_DIGITS} digits and exponent ±{MAX_EXPONENT})")
    return number
