"""Field mapping and target-side validation: source payload -> target values, or a precise error.

Every error names the flow, the record, the field and the rule it broke, because that one line is
what an operator reads in the dead-letter queue.
"""

from __future__ import annotations

import re
from typing import Any

from shared.config import FieldMap, Flow
from shared.engine.values import CoercionError, check_finite, coerce
from shared.errors import MissingReferenceError, PermanentError, Reason
from shared.keys import parse_key

# (lookup flow name, source key) -> target key; filled in one batch before mapping
Lookups = dict[tuple[str, str], str]


def lookup_requests(flow: Flow, payload: dict[str, Any]) -> list[tuple[str, str]]:
    """The (lookup flow, parent key) pairs this payload needs translated."""
    needed = []
    for field in flow.fields:
        if field.lookup is not None and payload.get(field.from_) not in (None, ""):
            lookup = field.lookup if isinstance(field.lookup, str) else field.lookup.get(_table(field, payload) or "")
            if lookup is not None:  # an unknown table is map_record's to report
                needed.append((lookup, str(payload[field.from_])))
    return needed


def _table(field: FieldMap, payload: dict[str, Any]) -> str | None:
    """The table a polymorphic lookup points to (a logical name: account, contact), from the payload."""
    value = payload.get(field.table_field)
    return str(value).lower() if value not in (None, "") else None


def _for_table(where: str, name: str, field: FieldMap, payload: dict[str, Any], choices: dict[str, str]) -> str:
    table = _table(field, payload)
    if table is None:
        raise PermanentError(Reason.MAPPING_FAILED, f"{where}: {name}: the lookup may point to "
                                                    f"{' or '.join(sorted(choices))} but {field.table_field} is empty")
    if table not in choices:
        raise PermanentError(Reason.MAPPING_FAILED, f"{where}: {name}: the lookup points to a {table}, which the "
                                                    f"field does not map (it maps {', '.join(sorted(choices))})")
    return table


def map_record(flow_name: str, flow: Flow, key: str, payload: dict[str, Any], lookups: Lookups) -> dict[str, Any]:
    where = f"flow {flow_name} record {key}"
    values: dict[str, Any] = {}
    for field in flow.fields:
        name = f"field {field.to} (from {field.from_})"
        value = payload.get(field.from_)
        lookup, bind, to = field.lookup, field.bind, field.to
        if field.polymorphic and value not in (None, ""):
            table = _for_table(where, name, field, payload, dict(lookup if isinstance(lookup, dict) else bind or {}))
            lookup = lookup.get(table) if isinstance(lookup, dict) else lookup
            bind = bind.get(table) if isinstance(bind, dict) else bind
            to = to.replace("{table}", table)
        elif "{table}" in to:
            # An empty polymorphic lookup: clear every table's navigation property it may point to.
            if field.required:
                raise PermanentError(Reason.VALIDATION_FAILED, f"{where}: {name}: is required but empty")
            for table in sorted(bind if isinstance(bind, dict) else {}):
                values[to.replace("{table}", table)] = None
            continue
        if value in (None, "") and field.default is not None:
            value = field.default
        if field.map is not None and value is not None:
            if str(value) not in field.map:
                known = ", ".join(sorted(field.map))
                raise PermanentError(
                    Reason.MAPPING_FAILED, f"{where}: {name}: value {value!r} has no entry in its map (known: {known})"
                )
            value = field.map[str(value)]
        if isinstance(lookup, str) and value not in (None, ""):
            target_key = lookups.get((lookup, str(value)))
            if target_key is None:
                raise MissingReferenceError(
                    f"{where}: {name}: parent {value!r} has not been synced by flow {lookup} yet",
                    flow=lookup,
                    key=str(value),
                )
            value = target_key
        try:
            value = coerce(value, field.type)
            check_finite(value)  # NaN and Infinity would arrive as NULL (SQL) or not at all (JSON)
        except CoercionError as exc:
            raise PermanentError(Reason.VALIDATION_FAILED, f"{where}: {name}: {exc}") from None
        if field.required and value in (None, ""):
            raise PermanentError(Reason.VALIDATION_FAILED, f"{where}: {name}: is required but empty")
        if field.max_length is not None and isinstance(value, str) and len(value) > field.max_length:
            raise PermanentError(
                Reason.VALIDATION_FAILED,
                f"{where}: {name}: is {len(value)} characters, longer than max_length {field.max_length}",
            )
        if isinstance(bind, str) and value not in (None, ""):
            try:
                value = bind_reference(bind, value)
            except ValueError as exc:
                raise PermanentError(Reason.MAPPING_FAILED, f"{where}: {name}: {exc}") from None
        values[to] = value
    return values


_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def bind_reference(bind: str, value: Any) -> str:
    """An `@odata.bind` value: bind "accounts" + a GUID -> "/accounts(<guid>)"; bind "accounts(accountnumber)"
    + "A-1" -> "/accounts(accountnumber='A-1')" (quotes doubled); a multi-part key takes a composite key. A
    lookup column in a key (``_parentcustomerid_value``) takes a bare GUID, as Dataverse wants it."""
    entity_set, _, names = bind.partition("(")
    if not names:
        text = str(value)
        if not _GUID.match(text):
            raise ValueError(f"value {text!r} is not a GUID, so it cannot bind to /{entity_set}(<id>)")
        return f"/{entity_set}({text.lower()})"
    fields = names.rstrip(")").split(",")
    parts = parse_key(fields, str(value))
    predicate = ",".join(f"{name}={_literal(parts[name], lookup=_is_lookup_column(name))}" for name in fields)
    return f"/{entity_set}({predicate})"


def _is_lookup_column(name: str) -> bool:
    return name.startswith("_") and name.endswith("_value")


def _literal(value: Any, lookup: bool = False) -> str:
    if lookup:
        text = str(value)
        if not _GUID.match(text):
            raise ValueError(f"value {text!r} is not a GUID, so it cannot be a lookup column's part of a key")
        return text.lower()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"
