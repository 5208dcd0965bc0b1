"""Record keys as one string: a single-field key is its value; a composite key is a JSON list."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any


def format_key(values: Sequence[Any]) -> str:
    if len(values) == 1:
        return str(values[0])
    return json.dumps([None if v is None else str(v) for v in values], separators=(",", ":"))


def parse_key(fields: Sequence[str], key: str) -> dict[str, Any]:
    if len(fields) == 1:
        return {fields[0]: key}
    values = json.loads(key)
    if not isinstance(values, list) or len(values) != len(fields):
        raise ValueError(f"key {key!r} does not have {len(fields)} parts for {list(fields)}")
    return dict(zip(fields, values, strict=True))


def key_of(fields: Sequence[str], row: dict[str, Any]) -> str:
    return format_key([row[f] for f in fields])
