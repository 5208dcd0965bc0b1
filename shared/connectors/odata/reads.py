"""Reading an OData v4 entity set: keyset conditions, rows as records, and the two deleted-entity forms.

A watermark read is a keyset read: ``$filter=w gt W or (w eq W and k gt K)`` (composite keys extend the
tuple), ``$orderby=w asc,k asc``. After each page the next request is built again from the page's last row
rather than by following ``@odata.nextLink``: a skiptoken may be opaque, key-based or an offset (CAP and SAP
Gateway page by ``$skiptoken=<rows so far>``), and an offset shifts when a row read earlier is changed while
the read runs (it moves to the end, and the row after the boundary is never seen). Restarting from the last
(watermark, key) reads every row once whatever the service's paging, and rows that share one timestamp
across a page boundary are neither lost nor read twice.

A delta read (``Prefer: odata.track-changes``) follows the service's links as given. Deleted entities come as
``{"@removed": {"reason": "deleted"}, "@odata.id": "Products('A-1')"}`` (OData 4.0 JSON format: also
``@odata.removed`` / ``@id``) or Dataverse's ``$deletedEntity`` rows (``{"id": ..., "reason": "deleted"}``);
``reason: changed`` means the row left the tracked set but still exists, which is not a delete.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from shared.connectors.odata.literals import parse_key_predicate
from shared.keys import format_key, parse_key

DELETED_SUFFIX = "~deleted"
FILTER_CHARS = 6000  # keep $filter URLs far below common 8 KB URL limits
FILTER_KEYS = 100


def after(columns: Sequence[str], values: Sequence[Any], literal: Callable[[str, Any], str]) -> str:
    """(c1, c2, ...) > (v1, v2, ...) in OData: ``c1 gt v1 or (c1 eq v1 and c2 gt v2) or ...``."""
    literals = [literal(c, v) for c, v in zip(columns, values, strict=True)]
    terms = []
    for i in range(len(columns)):
        equal = [f"{columns[j]} eq {literals[j]}" for j in range(i)]
        terms.append(" and ".join([*equal, f"{columns[i]} gt {literals[i]}"]))
    return " or ".join(f"({t})" if " and " in t else t for t in terms)


def key_filters(key_fields: Sequence[str], keys: Sequence[str], literal: Callable[[str, Any], str]) -> Iterator[str]:
    """``$filter`` conditions matching `keys` (formatted keys), at most FILTER_KEYS and FILTER_CHARS each:
    ``k eq v or ...``, ``(a eq x and b eq y) or ...``. A key that cannot be parsed, has a null part, or that
    `literal` refuses (ValueError: text for a number) matches no row and is left out."""
    terms: list[str] = []
    length = 0
    for key in keys:
        try:
            parts = parse_key(key_fields, key)
            if any(parts[f] is None for f in key_fields):
                continue
            pieces = [f"{f} eq {literal(f, parts[f])}" for f in key_fields]
        except ValueError:
            continue
        term = pieces[0] if len(pieces) == 1 else "(" + " and ".join(pieces) + ")"
        if terms and (length + len(term) > FILTER_CHARS or len(terms) >= FILTER_KEYS):
            yield " or ".join(terms)
            terms, length = [], 0
        terms.append(term)
        length += len(term) + 4
    if terms:
        yield " or ".join(terms)


def values_of(row: dict[str, Any]) -> dict[str, Any]:
    """A row's values without its annotations (``@odata.etag``, ``@odata.id``, ``x@odata.type`` ...)."""
    return {k: v for k, v in row.items() if "@" not in k}


def is_deleted(row: dict[str, Any]) -> bool:
    context = str(row.get("@odata.context", ""))
    return (context.endswith("$deletedEntity") or ("reason" in row and "id" in row and len(row) <= 3)
            or "@removed" in row or "@odata.removed" in row)


def deleted_key(row: dict[str, Any], key_fields: Sequence[str]) -> str | None:
    """The formatted key of a deleted entity; None for one removed for another reason (``changed``) or
    whose id does not name every key field."""
    removed = row.get("@removed", row.get("@odata.removed"))
    if isinstance(removed, dict) and removed.get("reason", "deleted") != "deleted":
        return None
    if row.get("id") and "@odata.id" not in row and "@id" not in row:
        found: dict[str, str] | str | None = str(row["id"])
    else:
        found = parse_key_predicate(str(row.get("@odata.id") or row.get("@id") or ""))
    if found is None:
        return None
    if isinstance(found, str):
        return found if len(key_fields) == 1 else None
    if len(key_fields) == 1 and len(found) == 1 and key_fields[0] not in found:
        return next(iter(found.values()))  # Dataverse: accounts(accountid=<guid>) for a flow keyed by it
    if any(k not in found for k in key_fields):
        return None
    return format_key([found[k] for k in key_fields])
