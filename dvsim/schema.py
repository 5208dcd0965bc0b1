"""Entity metadata: what tables exist, their attributes and alternate keys.

Loaded generically from a small YAML file (``schema.yaml`` next to this module by default)
so tests and the demo can add an entity without touching code.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

DEFAULT_SCHEMA_PATH = Path(__file__).with_name("schema.yaml")

ATTRIBUTE_TYPES = frozenset({"string", "int", "decimal", "bool", "datetime", "optionset", "lookup", "guid"})

# The Edm type names Dataverse reports in its error messages.
EDM_TYPES = {
    "string": "Edm.String",
    "int": "Edm.Int32",
    "decimal": "Edm.Decimal",
    "bool": "Edm.Boolean",
    "datetime": "Edm.DateTimeOffset",
    "optionset": "Edm.Int32",
    "lookup": "Edm.Guid",
    "guid": "Edm.Guid",
    "bigint": "Edm.Int64",
}

# System columns every entity has; the client may read and filter on them but never write them.
SYSTEM_ATTRIBUTES = ("createdon", "modifiedon", "versionnumber")


class SchemaError(ValueError):
    """The schema file is malformed."""


@dataclass(frozen=True)
class Attribute:
    name: str  # logical name, also the SQL column name
    type: str
    max_length: int | None = None
    required: bool = False
    options: tuple[int, ...] = ()
    default: Any = None
    target: str | None = None  # lookups: entity set name of the referenced table (the first, if several)
    nav: str | None = None  # lookups: single-valued navigation property used with @odata.bind
    readonly: bool = False  # system attributes
    # Lookups: every (entity set, navigation property) it may point to; more than one for a polymorphic
    # lookup such as contact.parentcustomerid (account or contact) or an activity's regardingobjectid.
    targets: tuple[tuple[str, str], ...] = ()

    @property
    def wire_name(self) -> str:
        """The property name in Web API JSON: lookups are exposed as ``_<name>_value``."""
        return f"_{self.name}_value" if self.type == "lookup" else self.name

    @property
    def table_column(self) -> str:
        """Lookups: the column holding the entity set the value points to (never served as a property)."""
        return f"{self.name}__set"

    @property
    def edm_type(self) -> str:
        return EDM_TYPES["bigint" if self.name == "versionnumber" else self.type]


@dataclass(frozen=True)
class Entity:
    logical_name: str  # account
    set_name: str  # accounts
    id_attr: str  # accountid
    attributes: Mapping[str, Attribute]  # writable attributes, by logical name
    alternate_keys: Mapping[str, tuple[str, ...]]  # key name -> attribute names
    change_tracking: bool = True  # the table's "Track changes" setting
    # Initial state of a new record, whatever the create asks for (orders and invoices start active).
    created_state: Mapping[str, int] | None = None
    # statecode -> the statuscode values valid with it; the first is the default ("Status reasons").
    status_reasons: Mapping[int, tuple[int, ...]] | None = None
    # Derived lookups, filled in __post_init__.
    by_wire: dict[str, Attribute] = field(default_factory=dict, compare=False, repr=False)
    by_nav: dict[str, Attribute] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        readable = [Attribute(self.id_attr, "guid", readonly=True)]
        readable += list(self.attributes.values())
        readable += [
            Attribute("createdon", "datetime", readonly=True),
            Attribute("modifiedon", "datetime", readonly=True),
            Attribute("versionnumber", "int", readonly=True),
        ]
        for attr in readable:
            self.by_wire[attr.wire_name] = attr
            for _, nav in attr.targets:
                self.by_nav[nav] = attr

    @property
    def readable(self) -> list[Attribute]:
        """All attributes in the order Dataverse-like responses list them."""
        return list(self.by_wire.values())

    @property
    def type_name(self) -> str:
        return f"Microsoft.Dynamics.CRM.{self.logical_name}"

    def key_for(self, attribute_names: set[str]) -> tuple[str, ...] | None:
        """The alternate key made of exactly these attributes, if one is defined."""
        for key in self.alternate_keys.values():
            if set(key) == attribute_names:
                return key
        return None


class Schema:
    def __init__(self, entities: list[Entity]):
        self.entities = entities
        self._by_set = {e.set_name: e for e in entities}
        self._by_logical = {e.logical_name: e for e in entities}

    def by_set(self, set_name: str) -> Entity | None:
        return self._by_set.get(set_name)

    def by_logical(self, logical_name: str) -> Entity | None:
        return self._by_logical.get(logical_name)

    def entity(self, set_name: str) -> Entity:
        """The entity for a set name; KeyError for helpers called with a typo."""
        try:
            return self._by_set[set_name]
        except KeyError:
            raise KeyError(f"unknown entity set {set_name!r}; known: {sorted(self._by_set)}") from None


def load_schema(path: str | Path | None = None) -> Schema:
    path = Path(path) if path else DEFAULT_SCHEMA_PATH
    return _load_cached(str(path.resolve()), path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _load_cached(path: str, mtime_ns: int) -> Schema:
    # Schemas are immutable, so tests starting many simulators share one parse (keyed by mtime for edits).
    with open(path, encoding="utf-8") as f:
        doc = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return parse_schema(doc, source=path)


def parse_schema(doc: Mapping[str, Any], source: str = "<schema>") -> Schema:
    if not isinstance(doc, Mapping) or not isinstance(doc.get("entities"), Mapping):
        raise SchemaError(f"{source}: expected a mapping with an 'entities' mapping")
    entities = [_parse_entity(name, spec, source) for name, spec in doc["entities"].items()]
    schema = Schema(entities)
    for entity in entities:
        for attr in entity.attributes.values():
            for target, _ in attr.targets:
                if schema.by_set(target) is None:
                    raise SchemaError(f"{source}: {entity.logical_name}.{attr.name}: unknown lookup target {target!r}")
    return schema


def _parse_entity(logical_name: str, spec: Mapping[str, Any], source: str) -> Entity:
    where = f"{source}: entity {logical_name}"
    for required in ("set", "id", "attributes"):
        if required not in spec:
            raise SchemaError(f"{where}: missing {required!r}")
    attributes: dict[str, Attribute] = {}
    for attr_name, attr_spec in spec["attributes"].items():
        attr_spec = attr_spec or {}
        attr_type = attr_spec.get("type")
        if attr_type not in ATTRIBUTE_TYPES:
            raise SchemaError(f"{where}.{attr_name}: type must be one of {sorted(ATTRIBUTE_TYPES)}")
        if attr_name in SYSTEM_ATTRIBUTES or attr_name == spec["id"]:
            raise SchemaError(f"{where}.{attr_name}: reserved attribute name")
        targets: tuple[tuple[str, str], ...] = ()
        if attr_type == "lookup":
            if isinstance(attr_spec.get("targets"), Mapping) and attr_spec["targets"]:
                targets = tuple((str(t), str(n)) for t, n in attr_spec["targets"].items())
            elif attr_spec.get("target") and attr_spec.get("nav"):
                targets = ((attr_spec["target"], attr_spec["nav"]),)
            else:
                raise SchemaError(f"{where}.{attr_name}: a lookup needs 'target' and 'nav', or 'targets'")
        attributes[attr_name] = Attribute(
            name=attr_name,
            type=attr_type,
            max_length=attr_spec.get("max_length"),
            required=bool(attr_spec.get("required", False)),
            options=tuple(attr_spec.get("options", ())),
            default=attr_spec.get("default"),
            target=targets[0][0] if targets else None,
            nav=targets[0][1] if targets else None,
            targets=targets,
        )
    keys: dict[str, tuple[str, ...]] = {}
    for key_name, key_attrs in (spec.get("keys") or {}).items():
        key_attrs = tuple(key_attrs)
        for a in key_attrs:
            if a not in attributes or attributes[a].type in ("decimal", "bool", "datetime"):
                raise SchemaError(f"{where}: key {key_name}: {a!r} must be a string, int, option set or lookup "
                                  "attribute")
        keys[key_name] = key_attrs
    return Entity(
        logical_name=logical_name,
        set_name=spec["set"],
        id_attr=spec["id"],
        attributes=attributes,
        alternate_keys=keys,
        change_tracking=bool(spec.get("change_tracking", True)),
        created_state={str(k): int(v) for k, v in spec["created_state"].items()} if spec.get("created_state") else None,
        status_reasons={int(k): tuple(int(x) for x in v) for k, v in spec["status_reasons"].items()}
        if spec.get("status_reasons") else None,
    )
