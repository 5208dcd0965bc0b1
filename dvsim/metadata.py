"""Table definitions (`EntityDefinitions`), as the Web API serves them ("Query table definitions using the Web
API"): an entity's attributes and its many-to-one relationships, from the same schema the tables follow.

Supported: `EntityDefinitions`, `EntityDefinitions(LogicalName='x')`, `$filter` with one `eq` on
LogicalName or EntitySetName, `$select`, and `$expand` of `Attributes` and `ManyToOneRelationships`, each
with its own `$select`. Anything else is a 400, so a client never relies on what the simulator guesses.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from . import errors
from .schema import Attribute, Entity, Schema

_KEY = re.compile(r"^EntityDefinitions\(LogicalName='([^']*)'\)$")
_FILTER = re.compile(r"^\s*(LogicalName|EntitySetName)\s+eq\s+'([^']*)'\s*$")
_EXPAND_ITEM = re.compile(r"^(Attributes|ManyToOneRelationships)(?:\(\$select=([A-Za-z0-9_,]+)\))?$")
_OPTIONS = {"$select", "$filter", "$expand"}
_NAMESPACE = uuid.UUID("6f1c7c2e-3d39-4b8e-9a44-1a6d0f1d3e55")  # stable MetadataIds across runs


def is_definitions_path(path: str) -> bool:
    return path == "EntityDefinitions" or path.startswith("EntityDefinitions(")


def entity_definitions(schema: Schema, path: str, query: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """(status, body) for a GET of the definitions path; raises ODataError for what it does not support."""
    unsupported = sorted(k for k in query if k.startswith("$") and k not in _OPTIONS)
    if unsupported:
        raise errors.bad_request(f"The query option '{unsupported[0]}' is not supported on EntityDefinitions.")
    select = _names(query.get("$select"))
    expand = _expand(query.get("$expand"))
    keyed = _KEY.match(path)
    if keyed:
        entity = schema.by_logical(keyed.group(1))
        if entity is None:
            raise errors.ODataError(404, "0x80040217", f"Could not find an entity with name {keyed.group(1)}")
        return 200, _definition(schema, entity, select, expand)
    if path != "EntityDefinitions":
        raise errors.segment_not_found(path)
    entities = schema.entities
    if "$filter" in query:
        m = _FILTER.match(query["$filter"])
        if m is None:
            raise errors.bad_request("The simulator filters EntityDefinitions by LogicalName or EntitySetName eq "
                                     "'<name>' only.")
        prop = "logical_name" if m.group(1) == "LogicalName" else "set_name"
        entities = [e for e in entities if getattr(e, prop) == m.group(2)]
    return 200, {"value": [_definition(schema, e, select, expand) for e in entities]}


def _names(text: str | None) -> list[str] | None:
    return [n.strip() for n in text.split(",") if n.strip()] if text else None


def _expand(text: str | None) -> dict[str, list[str] | None]:
    """`Attributes($select=a,b),ManyToOneRelationships` -> {name: its $select or None}; commas inside
    parentheses belong to the item."""
    items: dict[str, list[str] | None] = {}
    text = text or ""
    depth, start = 0, 0
    parts = []
    for i, ch in enumerate(text):
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if text:
        parts.append(text[start:])
    for part in parts:
        m = _EXPAND_ITEM.match(part.strip())
        if m is None:
            raise errors.bad_request(f"Could not expand '{part.strip()}' on EntityMetadata.")
        items[m.group(1)] = _names(m.group(2))
    return items


def _pick(item: dict[str, Any], select: list[str] | None) -> dict[str, Any]:
    if select is None:
        return item
    return {k: v for k, v in item.items() if k in select or k == "MetadataId" or k.startswith("@")}


def _id(*parts: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, "/".join(parts)))


def _definition(schema: Schema, entity: Entity, select: list[str] | None,
                expand: dict[str, list[str] | None]) -> dict[str, Any]:
    body = _pick({
        "MetadataId": _id(entity.logical_name),
        "LogicalName": entity.logical_name,
        "EntitySetName": entity.set_name,
        "PrimaryIdAttribute": entity.id_attr,
        "ChangeTrackingEnabled": entity.change_tracking,
    }, select)
    if "Attributes" in expand:
        body["Attributes"] = [_pick(_attribute(schema, entity, a), expand["Attributes"]) for a in entity.readable]
    if "ManyToOneRelationships" in expand:
        body["ManyToOneRelationships"] = [
            _pick(rel, expand["ManyToOneRelationships"]) for rel in _relationships(schema, entity)]
    return body


def _attribute_type(entity: Entity, attr: Attribute) -> str:
    if attr.name == entity.id_attr:
        return "Uniqueidentifier"
    if attr.name == "versionnumber":
        return "BigInt"
    if attr.type == "optionset":
        return {"statecode": "State", "statuscode": "Status"}.get(attr.name, "Picklist")
    if attr.type == "lookup":
        return "Customer" if {t for t, _ in attr.targets} == {"accounts", "contacts"} else "Lookup"
    return {"string": "String", "int": "Integer", "decimal": "Decimal", "bool": "Boolean",
            "datetime": "DateTime", "guid": "Uniqueidentifier"}[attr.type]


def _attribute(schema: Schema, entity: Entity, attr: Attribute) -> dict[str, Any]:
    kind = _attribute_type(entity, attr)
    required = "SystemRequired" if attr.name == entity.id_attr else (
        "ApplicationRequired" if attr.required else "None")
    item: dict[str, Any] = {
        "@odata.type": f"#Microsoft.Dynamics.CRM.{'String' if kind == 'String' else kind}AttributeMetadata",
        "MetadataId": _id(entity.logical_name, attr.name),
        "LogicalName": attr.name,
        "AttributeType": kind,
        "AttributeOf": None,
        "RequiredLevel": {"Value": required, "CanBeChanged": attr.name != entity.id_attr},
        "IsValidForRead": True,
        "IsValidForCreate": not attr.readonly or attr.name == entity.id_attr,
        "IsValidForUpdate": not attr.readonly,
    }
    if attr.type == "string":
        item["MaxLength"] = attr.max_length or 4000
    if attr.type == "lookup":
        item["Targets"] = [_logical(schema, t) for t, _ in attr.targets]
    return item


def _logical(schema: Schema, set_name: str) -> str:
    return schema.entity(set_name).logical_name


def _relationships(schema: Schema, entity: Entity) -> list[dict[str, Any]]:
    rels = []
    for attr in entity.attributes.values():
        for target, nav in attr.targets:
            rels.append({
                "MetadataId": _id(entity.logical_name, attr.name, target),
                "SchemaName": f"{entity.logical_name}_{attr.name}_{target}",
                "ReferencingEntity": entity.logical_name,
                "ReferencingAttribute": attr.name,
                "ReferencedEntity": _logical(schema, target),
                "ReferencingEntityNavigationPropertyName": nav,
            })
    return rels
