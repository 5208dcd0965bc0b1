"""Typed field values: coercion to a field's declared type, and the one equivalence every comparison uses.

Two sides rarely agree on representation: Dataverse answers `2024-05-01T10:00:00Z` at whole seconds where a
SQL DATETIME reads back `2024-05-01 10:00:00.250000`; `Decimal('100.00')` is another side's `100`; a flag is
`True` here and `1` there. The echo check, the no-op check and conflict detection therefore compare through
`FieldRule.same`, never raw values: both sides are reduced to a normal form of the field's declared type (or,
without one, the type the value looks like), at the coarser precision of the two systems, which their
connectors declare (`ValuePrecision`). Record state keeps a JSON-friendly canonical form (`FieldRule.stored`);
a long value is kept as a digest of its normal form, compared by digest under the same rule.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, Protocol

from shared.config import Flow
from shared.numbers import bounded_decimal
from shared.ports.connector import ValuePrecision


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
            number = _bounded(value, type_name)
            if number != number.to_integral_value():
                raise CoercionError(f"{value!r} is not a whole number")
            return int(number)
        if type_name == "decimal":
            return _bounded(value, type_name)
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


def _bounded(value: Any, type_name: str) -> Decimal:
    try:
        return bounded_decimal(value)
    except ValueError as exc:
        if str(exc).endswith("is not a number"):
            raise CoercionError(f"{value!r} is not a valid {type_name}") from None
        raise CoercionError(str(exc)) from None


def canonical(value: Any) -> Any:
    """A JSON-friendly form under which equal business values compare equal."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int | float | Decimal):
        try:
            number = bounded_decimal(value).normalize()
        except (ValueError, ArithmeticError):
            return str(value)  # NaN, Infinity or beyond any column: its short form, never its digits
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
    """Does a value equal a stored canonical one, for a field with no declared rule? (See FieldRule.)"""
    return EXACT.same(incoming, stored_canonical)


def check_finite(value: Any) -> None:
    """NaN and Infinity have no JSON form and become NULL in SQL: no target can hold them."""
    if isinstance(value, float) and not math.isfinite(value):
        raise CoercionError(f"{value!r} is not a finite number")
    if isinstance(value, Decimal) and not value.is_finite():
        raise CoercionError(f"{str(value)!r} is not a finite number")


# -- equivalence ----------------------------------------------------------------------------------

DIGEST_OVER = 256  # characters: a longer canonical value is remembered as a digest of its normal form
_DIGEST = "#"  # a digest is stored as {"#": hex}; canonical() never makes a dict, so it cannot be mistaken
_ISO_MOMENT = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:?\d{2})?$")
_NUMBER = re.compile(r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$")
_BOOL_WORDS = {"true": True, "false": False}

Normal = tuple[str, Any]  # (kind, value): equal normals are the same business value


def is_digest(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {_DIGEST}


def digest_of(normal: Normal) -> dict[str, str]:
    text = f"{normal[0]}:{normal[1]}"
    return {_DIGEST: hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()}


@dataclass(frozen=True)
class FieldRule:
    """How the values of one field compare: declared type, the coarser precision of the two systems, and
    (source side of a mapped field) the labels its values map to, so a value and its label are one value."""

    type: str | None = None
    datetime_digits: int = 6
    decimal_scale: int | None = None
    trims: bool = False
    labels: Mapping[str, Any] | None = None

    def same(self, a: Any, b: Any) -> bool:
        if type(a) is type(b) and a == b and not isinstance(a, float):  # the common case: nothing to normalise
            return True
        if is_digest(a) or is_digest(b):
            return self.digest(a) == self.digest(b)
        return _equal(self.normal(a), self.normal(b))

    def stored(self, value: Any) -> Any:
        """The form record state keeps: canonical, typed when the field declares a type, digested when long."""
        if self.type is not None:
            try:
                value = coerce(value, self.type)
            except CoercionError:
                pass
        text = canonical(value)
        if isinstance(text, str) and len(text) > DIGEST_OVER:
            return digest_of(self.normal(value))
        return text

    def digest(self, value: Any) -> dict[str, str]:
        return value if is_digest(value) else digest_of(self.normal(value))

    def normal(self, value: Any) -> Normal:
        if self.labels is not None and value is not None and str(value) in self.labels:
            value = self.labels[str(value)]
        if value is None:
            return ("none", None)
        if self.type is not None:
            try:
                return self._typed(value, self.type)
            except (CoercionError, ArithmeticError, ValueError, TypeError):
                pass  # a value its type cannot read compares by what it looks like
        return self._inferred(value)

    def _typed(self, value: Any, type_name: str) -> Normal:
        if type_name == "string":
            text = value if isinstance(value, str) else str(canonical(value))
            return ("str", text.rstrip(" ") if self.trims else text)
        if type_name in ("int", "decimal"):
            return ("num", self._number(Decimal(str(coerce(value, "decimal")))))
        if type_name == "datetime":
            return ("dt", self._moment(coerce(value, "datetime")))
        return (type_name, canonical(coerce(value, type_name)))

    def _inferred(self, value: Any) -> Normal:
        if isinstance(value, bool):
            return ("bool", value)
        if isinstance(value, int | float | Decimal):
            try:
                return ("num", self._number(bounded_decimal(value)))
            except (ValueError, ArithmeticError):
                return ("str", str(value))
        if isinstance(value, datetime):
            return ("dt", self._moment(value))
        if isinstance(value, date):
            return ("date", value.isoformat())
        if not isinstance(value, str):
            return ("str", str(canonical(value)))
        text = value.rstrip(" ") if self.trims else value
        word = _BOOL_WORDS.get(text.strip().lower())
        if word is not None:
            return ("bool", word)
        if _NUMBER.match(text):
            try:
                return ("num", self._number(bounded_decimal(text)))
            except (ValueError, ArithmeticError):
                return ("str", text)  # a number no column holds compares as the text it is
        if _ISO_MOMENT.match(text.strip()):
            try:
                return ("dt", self._moment(_to_datetime(text.strip().replace(" ", "T", 1))))
            except (ValueError, CoercionError):
                pass
        return ("str", text)

    def _number(self, number: Decimal) -> Decimal:
        if self.decimal_scale is not None:
            try:
                number = number.quantize(Decimal(1).scaleb(-self.decimal_scale), rounding=ROUND_HALF_UP)
            except InvalidOperation:
                pass
        return Decimal(0) if number.is_zero() else number.normalize()

    def _moment(self, moment: datetime) -> datetime:
        utc = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)
        unit = 10 ** (6 - max(0, min(6, self.datetime_digits)))
        return utc.replace(microsecond=utc.microsecond // unit * unit)


def _equal(a: Normal, b: Normal) -> bool:
    if a == b:
        return True
    kinds = {a[0], b[0]}
    if kinds == {"bool", "num"}:  # a flag is True on one side and 1 on the other
        flag, number = (a[1], b[1]) if a[0] == "bool" else (b[1], a[1])
        return Decimal(int(flag)) == number
    return False


EXACT = FieldRule()


@dataclass(frozen=True)
class Equivalence:
    """The rules of one flow's fields, by source-side and by target-side name; unknown names compare by
    what their values look like."""

    by_source: Mapping[str, FieldRule] = field(default_factory=dict)
    by_target: Mapping[str, FieldRule] = field(default_factory=dict)

    def source(self, name: str) -> FieldRule:
        return self.by_source.get(name, EXACT)

    def target(self, name: str) -> FieldRule:
        return self.by_target.get(name, EXACT)


class DeclaresPrecision(Protocol):
    """The part of the connector port value comparison needs."""

    def precision(self, entity: str, field: str) -> ValuePrecision: ...


def equivalence(flow: Flow, source: DeclaresPrecision, target: DeclaresPrecision) -> Equivalence:
    """One rule per mapped field, shared by both names: the coarser precision of the two systems."""
    by_source: dict[str, FieldRule] = {}
    by_target: dict[str, FieldRule] = {}
    for fm in flow.fields:
        a = source.precision(flow.source.entity, fm.from_)
        b = target.precision(flow.target.entity, fm.to)
        scales = [s for s in (a.decimal_scale, b.decimal_scale) if s is not None]
        rule = FieldRule(fm.type, min(a.datetime_digits, b.datetime_digits), min(scales) if scales else None,
                         a.trims_trailing_spaces or b.trims_trailing_spaces)
        by_target[fm.to] = rule
        by_source[fm.from_] = FieldRule(rule.type, rule.datetime_digits, rule.decimal_scale, rule.trims, fm.map)
    return Equivalence(by_source, by_target)


def unchanged(rules: Equivalence, fields: list[str], payload: dict[str, Any], known: dict[str, Any] | None) -> bool:
    """Every field this flow reads equals what both sides last agreed on. A field with nothing agreed (a record
    the other side created, where only what was written there is known) is not "unchanged": it goes on to the
    no-op check against the target, which writes nothing when the target already holds it."""
    # Write-only names (Dataverse's `x@odata.bind`) never come back in a read; the read-side name of the same
    # lookup (`_x_value`) is remembered from the rows we saw, and compared instead.
    if not known or any(name not in known for name in fields if "@" not in name):
        return False
    return all(rules.source(name).same(payload.get(name), value) for name, value in known.items() if "@" not in name)
