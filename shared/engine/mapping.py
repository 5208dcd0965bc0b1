"""Field mapping and target-side validation: source payload -> target values, or a precise error.

Every error names the flow, the record, the field and the rule it broke, because that one line is
what an operator reads in the dead-letter queue.
"""

from __future__ import annotations

import re
from typing import Any

from shared.config import Flow
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
            needed.append((field.lookup, str(payload[field.from_])))
    return needed


def map_record(flow_name: str, flow: Flow, key: str, payload: dict[str, Any], lookups: Lookups) -> dict[str, Any]:
    where = f"flow {flow_name} record {key}"
    values: dict[str, Any] = {}
    for field in flow.fields:
        name = f"field {field.to} (from {field.from_})"
        value = payload.get(field.from_)
        if value in (None, "") and field.default is not None:
            value = field.default
        if field.map is not None and value is not None:
            if str(value) not in field.map:
                known = ", ".join(sorted(field.map))
                raise PermanentError(
                    Reason.MAPPING_FAILED, f"{where}: {name}: value {value!r} has no entry in its map (known: {known})"
                )
            value = field.map[str(value)]
        if field.lookup is not None and value not in (None, ""):
            target_key = lookups.get((field.lookup, str(value)))
            if target_key is None:
                raise MissingReferenceError(
                    f"{where}: {name}: parent {value!r} has not been synced by flow {field.lookup} yet",
                    flow=field.lookup,
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
        if field.bind is not None and value not in (None, ""):
            try:
                value = bind_reference(field.bind, value)
            except ValueError as exc:
                raise PermanentError(Reason.MAPPING_FAILED, f"{where}: {name}: {exc}") from None
        values[field.to] = value
    return values


_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def bind_reference(bind: str, value: Any) -> str:
    """An `@odata.bind` value: bind "accounts" + a GUID -> "/accounts(<guid>)"; bind "accounts(accountnumber)"
    + "A-1" -> "/accounts(accountnumber='A-1')" (quotes doubled); a multi-part key takes a composite key."""
    entity_set, _, names = bind.partition("(")
    if not names:
        text = str(value)
        if not _GUID.match(text):
            raise ValueError(f"value {text!r} is not a GUID, so it cannot bind to /{entity_set}(<id>)")
        return f"/{entity_set}({text.lower()})"
    fields = names.rstrip(")").split(",")
    parts = parse_key(fields, str(value))
    predicate = ",".join(f"{name}={_literal(parts[name])}" for name in fields)
    return f"/{entity_set}({predicate})"


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"
