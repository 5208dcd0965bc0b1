"""What a service says about its entity sets (``$metadata``, CSDL XML): each set's key, and each property's
Edm type, nullability and maximum length. The connector reads it once per client and uses it to type
literals (a key typed ``Edm.Int32`` is ``5``, never ``'5'``), to convert values before writing them, and to
refuse a value the service would refuse, naming the field, before anything is sent."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from shared.connectors.odata.literals import ISO_MOMENT, is_guid, iso_moment, moment, odata_literal

INTEGERS = {"Edm.Byte", "Edm.SByte", "Edm.Int16", "Edm.Int32", "Edm.Int64"}
NUMBERS = INTEGERS | {"Edm.Decimal", "Edm.Double", "Edm.Single"}


@dataclass(frozen=True)
class Property:
    name: str
    type: str  # Edm.String, Edm.Int32, ... (other types are sent as given)
    nullable: bool = True
    max_length: int | None = None


@dataclass
class EntitySet:
    name: str
    key: list[str]
    properties: dict[str, Property] = field(default_factory=dict)

    def literal(self, name: str, value: Any) -> str:
        """``value`` as a literal of property ``name``'s type (keys and ``$filter``)."""
        prop = self.properties.get(name)
        kind = prop.type if prop else None
        if value is None:
            return "null"
        if kind in NUMBERS:
            return str(convert(prop, value)) if prop else str(value)
        if kind == "Edm.Guid" and is_guid(str(value)):
            return str(value).lower()
        if kind == "Edm.DateTimeOffset":
            if isinstance(value, str) and ISO_MOMENT.match(value):
                return value  # as the service wrote it: every digit it keeps (7 on F&O), so `eq` still matches
            when = moment(value)
            return iso_moment(when) if when else odata_literal(value)
        if kind == "Edm.Date" and isinstance(value, date | str):
            return value.isoformat() if isinstance(value, date) else value
        if kind == "Edm.Boolean":
            return odata_literal(convert(prop, value)) if prop else odata_literal(value)
        return odata_literal(value if kind != "Edm.String" else str(value))


class Unwritable(ValueError):
    """A value the property cannot hold (its message names the field and why)."""


def convert(prop: Property, value: Any) -> Any:
    """``value`` in the JSON form the property's type takes; Unwritable if it cannot be."""
    if value is None:
        if not prop.nullable:
            raise Unwritable(f"{prop.name}: null is not allowed (the property is not nullable)")
        return None
    kind = prop.type
    try:
        if kind in INTEGERS:
            if isinstance(value, bool) or (isinstance(value, float | Decimal) and value != int(value)):
                raise ValueError
            return int(value)
        if kind == "Edm.Decimal":
            number = value if isinstance(value, Decimal) else Decimal(str(value))
            if not number.is_finite():
                raise ValueError
            return number
        if kind in ("Edm.Double", "Edm.Single"):
            return float(value)
        if kind == "Edm.Boolean":
            if isinstance(value, str):
                lowered = value.strip().lower()
                if lowered not in ("true", "false", "1", "0"):
                    raise ValueError
                return lowered in ("true", "1")
            return bool(value)
        if kind == "Edm.DateTimeOffset":
            when = moment(value)
            if when is None:
                raise ValueError
            return iso_moment(when)
        if kind == "Edm.Date":
            if isinstance(value, datetime):
                return value.date().isoformat()
            return (value if isinstance(value, date) else date.fromisoformat(str(value))).isoformat()
        if kind == "Edm.String":
            text = value if isinstance(value, str) else str(value)
            if prop.max_length is not None and len(text) > prop.max_length:
                raise Unwritable(f"{prop.name}: {len(text)} characters, the property allows {prop.max_length}")
            return text
    except Unwritable:
        raise
    except (ValueError, TypeError, InvalidOperation):
        raise Unwritable(f"{prop.name}: {str(value)[:40]!r} is not a valid {kind}") from None
    return value


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_metadata(xml: bytes) -> dict[str, EntitySet]:
    """Entity sets by name from a CSDL XML document (every schema; types resolved by qualified name)."""
    root = ET.fromstring(xml)  # the service's own metadata; expat refuses external entities
    types: dict[str, tuple[list[str], dict[str, Property]]] = {}
    sets: list[tuple[str, str]] = []
    for schema in root.iter():
        if _local(schema.tag) != "Schema":
            continue
        namespace = schema.get("Namespace", "")
        alias = schema.get("Alias")
        for element in schema:
            kind = _local(element.tag)
            if kind == "EntityType":
                key = [ref.get("Name", "") for ref in element.iter() if _local(ref.tag) == "PropertyRef"]
                props = {}
                for prop in element:
                    if _local(prop.tag) == "Property":
                        length = prop.get("MaxLength", "")
                        props[prop.get("Name", "")] = Property(
                            prop.get("Name", ""), prop.get("Type", ""), prop.get("Nullable", "true") != "false",
                            int(length) if length.isdigit() else None)
                for prefix in filter(None, (namespace, alias)):
                    types[f"{prefix}.{element.get('Name')}"] = (key, props)
            elif kind == "EntityContainer":
                sets += [(s.get("Name", ""), s.get("EntityType", "")) for s in element if _local(s.tag) == "EntitySet"]
    found = {}
    for name, type_name in sets:
        if type_name in types:
            key, props = types[type_name]
            found[name] = EntitySet(name, key, props)
    return found
