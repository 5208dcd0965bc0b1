"""The flows file (`flows.yaml`): pydantic models, loading, and error reporting with paths.

Every model forbids unknown keys, so a typo is an error rather than a silently ignored setting.
Secrets are only ever references (`env:NAME`); `resolve_secret` reads them at the last moment.
"""

from __future__ import annotations

import re
import types
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from croniter import croniter
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from shared.config_base import FieldType, Strict, resolve_secret
from shared.connectors import registry

# The settings of the two kinds that predate the registry, still importable from here.
from shared.connectors.dataverse_settings import DataverseAuth, DataverseSystem
from shared.connectors.sql_settings import SqlSystem
from shared.errors import ConfigError
from shared.names import nearest

if TYPE_CHECKING:
    from shared.ports.connector import Capabilities

__all__ = [
    "ChangeMode",
    "Config",
    "DataverseAuth",
    "DataverseSystem",
    "FieldMap",
    "Flow",
    "SourceSpec",
    "SqlSystem",
    "System",
    "TargetSpec",
    "load_config",
    "parse_config",
    "resolve_secret",
]


_PYDANTIC_PREFIXES = ("Value error, ", "Assertion failed, ")


# Every registered kind's settings, told apart by `kind` (an unknown kind names the known ones).
System = Annotated[Union[tuple(registry.settings_models())], Field(discriminator="kind")]  # noqa: UP007

# One column name, or a list for a compound key (the schema says so too, so editors accept `key: id`).
Keys = Annotated[list[str], Field(min_length=1), WithJsonSchema({"anyOf": [
    {"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}]})]


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


# How a source's changes are read (README: change modes); which ones a system serves is its connector's
# capability. `snapshot`: every read is whole, and each row is compared with what was last sent.
ChangeMode = Literal["change_tracking", "watermark", "status_flag", "xact_id", "snapshot"]


class SourceSpec(Strict):
    """Where a flow reads its changes."""

    system: str = Field(description="The system to read, a name under systems:.")
    entity: str = Field(description="The table (SQL) or entity set (Dataverse, e.g. accounts) to read.")
    key: Keys = Field(description="The column(s) identifying a record at the source: a name or a list.")
    changes: ChangeMode = Field(
        default="watermark", description=(
            "How changes are found: change_tracking (Dataverse), watermark (a modified-time or counter column), "
            "status_flag (rows flagged N/U, marked P or E once read), xact_id (PostgreSQL 13+ transaction "
            "ids) or snapshot (files: every read is whole; only rows that differ from what was sent are sent)."))
    watermark: str = Field(default="modified_at", description=(
        "The column ordering changes in watermark mode (Dataverse default: modifiedon)."))
    version: str | None = Field(default=None, description=(
        "A rowversion-like column; without it the watermark is the record's version."))
    lookback_seconds: float = Field(default=60, ge=0, le=86400, description=(
        "Watermark on a date-time column: also re-read rows stamped up to this long before the previous read "
        "began, so a row whose transaction commits within this time of its stamp is never missed. 0 turns it "
        "off. Re-read rows are never written twice."))
    xact_column: str = Field(default="sync_xact", description=(
        "xact_id mode: the xid8 or bigint column a trigger fills with pg_current_xact_id()."))
    status_field: str = Field(default="sync_status", description=(
        "status_flag mode: the column holding N (new), U (updated), P (processed) or E (error)."))
    reason_field: str = Field(default="sync_error", description=(
        "status_flag mode: the column that receives why a row failed (flag E)."))
    select: list[str] | None = Field(default=None, description=(
        "Dataverse: the columns to read ($select); the key, modifiedon and versionnumber are always added. "
        "Absent: every column."))

    _key_list = field_validator("key", mode="before")(_as_list)


class TargetSpec(Strict):
    """Where a flow writes."""

    system: str = Field(description="The system to write, a name under systems:.")
    entity: str = Field(description="The table (SQL) or entity set (Dataverse) to write.")
    key: Keys = Field(description=(
        "The column(s) a target row is found by (upsert key): each must be the 'to' of a field."))
    deactivate_field: str = Field(default="status", description=(
        "deletes: deactivate writes deactivate_value into this column instead of deleting the row."))
    deactivate_value: Any = Field(default="inactive", description="The value deletes: deactivate writes.")

    _key_list = field_validator("key", mode="before")(_as_list)


LOOKUP_LOGICAL_NAME = "Microsoft.Dynamics.CRM.lookuplogicalname"  # the table a Dataverse lookup points to
_BIND = r"^[A-Za-z_][A-Za-z0-9_]*(\([A-Za-z_][A-Za-z0-9_]*(,[A-Za-z_][A-Za-z0-9_]*)*\))?$"


class FieldMap(Strict):
    """One field: read `from` at the source, check and convert it, write it to `to` at the target."""

    from_: str = Field(alias="from", description=(
        "The source column (a Dataverse lookup reads as _<name>_value)."))
    to: str = Field(description=(
        "The target column; a Dataverse lookup is written as <navigation property>@odata.bind with bind:."))
    type: FieldType | None = Field(default=None, description=(
        "How values are compared and converted: string, int, decimal, bool, datetime or date (default: as "
        "the value looks)."))
    max_length: int | None = Field(default=None, ge=1, description=(
        "Longer text is dead-lettered as ValidationFailed, naming record and field."))
    required: bool = Field(default=False, description="An empty value is dead-lettered as ValidationFailed.")
    map: dict[str, Any] | None = Field(default=None, description=(
        "Value translation, source value -> target value ({0: active, 1: inactive}); an unmapped value is "
        "dead-lettered as MappingFailed."))
    default: Any = Field(default=None, description="Written when the source value is empty.")
    lookup: str | dict[str, str] | None = Field(default=None, description=(
        "The flow whose key map translates this value (a reference to another record); for a polymorphic "
        "lookup one flow per table: {account: accounts-to-customers, contact: contacts-to-persons}."))
    owner: str | None = Field(default=None, description=(
        "In a pair with conflicts: master_wins, the system whose value wins for this field."))
    bind: str | dict[str, Annotated[str, Field(pattern=_BIND)]] | None = Field(default=None, description=(
        "Dataverse lookups written as to: <nav>@odata.bind: \"accounts\" (the value is the GUID) or "
        "\"accounts(accountnumber)\" (an alternate key). A polymorphic lookup takes one per table and a 'to' "
        "with {table} in it (parentcustomerid_{table}@odata.bind)."))
    table_from: str | None = Field(default=None, description=(
        "The source field naming the table a polymorphic lookup points to (a logical name such as contact). "
        "Default: Dataverse's lookuplogicalname annotation of the from column."))

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _bind_target(self) -> FieldMap:
        if self.bind is not None and not self.to.endswith("@odata.bind"):
            raise ValueError("bind needs a 'to' of the form <navigation property>@odata.bind")
        if isinstance(self.bind, str) and not re.match(_BIND, self.bind):
            raise ValueError(f"bind {self.bind!r} must be <entity set> or <entity set>(<key column>,...)")
        if isinstance(self.bind, dict) and "{table}" not in self.to:
            raise ValueError("a bind per table needs a 'to' with {table} in it, e.g. parentcustomerid_{table}@odata.bind")
        if "{table}" in self.to and not isinstance(self.bind, dict):
            raise ValueError("a 'to' with {table} in it needs a bind per table")
        if isinstance(self.bind, dict) and isinstance(self.lookup, dict) and set(self.bind) != set(self.lookup):
            raise ValueError(f"lookup and bind name different tables: {sorted(self.lookup)} vs {sorted(self.bind)}")
        return self

    @property
    def polymorphic(self) -> bool:
        """A lookup that may point to more than one table: which one is in `table_field`."""
        return isinstance(self.lookup, dict) or isinstance(self.bind, dict)

    @property
    def table_field(self) -> str:
        return self.table_from or f"{self.from_}@{LOOKUP_LOGICAL_NAME}"

    def lookup_flows(self) -> list[str]:
        if self.lookup is None:
            return []
        return list(self.lookup.values()) if isinstance(self.lookup, dict) else [self.lookup]

    @field_validator("map", mode="before")
    @classmethod
    def _map_keys_as_strings(cls, value: Any) -> Any:
        # YAML reads `{0: active}` with an int key; source values are compared as strings.
        if isinstance(value, dict):
            return {str(k): v for k, v in value.items()}
        return value


class Flow(Strict):
    """One entity moving one way, from source to target."""

    source: SourceSpec = Field(description="Where changes are read.")
    target: TargetSpec = Field(description="Where they are written.")
    schedule: str = Field(default="0 */5 * * * *", description=(
        "When to pull: a 6-field NCRONTAB expression, seconds first (every 5 minutes: 0 */5 * * * *)."))
    master: str | None = Field(default=None, description=(
        "The system whose value wins a conflict (one of the flow's two systems; both flows of a pair name "
        "the same)."))
    deletes: Literal["delete", "deactivate", "ignore"] = Field(default="ignore", description=(
        "What a delete at the source does at the target: delete the row, deactivate it (deactivate_field), "
        "or ignore it."))
    fields: list[FieldMap] = Field(min_length=1, description="The fields to copy, each from -> to.")
    pair: str | None = Field(default=None, description=(
        "Two flows with one pair name (crm->erp and erp->crm) share key map and record state: echoes are "
        "skipped and conflicts settled."))
    conflicts: Literal["master_wins", "last_writer_wins", "manual"] = Field(default="master_wins", description=(
        "In a pair, a field changed on both sides: master_wins (with master and per-field owner), "
        "last_writer_wins, or manual (dualsync conflicts resolve)."))
    review: bool = Field(default=False, description=(
        "Incoming changes become change requests an operator approves or rejects (dualsync requests)."))
    match_on: list[str] = Field(default_factory=list, description=(
        "Target fields ('to' names) that identify one record at initial sync, to link existing records."))
    reconcile: str | None = Field(default=None, description=(
        "NCRONTAB of a key-set comparison that finds deletes in sources without change tracking."))
    fetch_missing_parents: bool = Field(default=False, description=(
        "Pull a missing lookup parent on demand instead of waiting for its own flow."))
    max_attempts: int | None = Field(default=None, ge=1, le=100, description=(
        "Attempts before an error is dead-lettered as RetriesExhausted (default: the MAX_ATTEMPTS app "
        "setting)."))
    missing_reference_attempts: int = Field(default=5, ge=1, le=100, description=(
        "Attempts to wait for a lookup's parent before dead-lettering as MissingReference."))
    throttle_budget: timedelta = Field(default=timedelta(hours=6), gt=timedelta(0), description=(
        "How long a change may keep being throttled (429 / Retry-After) from its first throttle before it is "
        "dead-lettered; throttling never uses max_attempts. ISO 8601 (PT6H) or seconds."))
    page_size: int = Field(default=1000, ge=1, le=10000, description="Records per page read and sent at once.")
    enabled: bool = Field(default=True, description=(
        "false: not pulled (nor checked when dualsync run starts); its queued messages wait."))

    @field_validator("schedule", "reconcile")
    @classmethod
    def _ncrontab(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = value.split()
        if len(parts) != 6:
            raise ValueError("schedule must be a 6-field NCRONTAB expression: sec min hour day month weekday")
        if not croniter.is_valid(" ".join(parts[1:] + parts[:1])):
            raise ValueError(f"schedule {value!r} is not a valid NCRONTAB expression")
        return value


class Config(Strict):
    """A flows file: the systems, and the flows between them."""

    systems: dict[str, System] = Field(description=(
        "The systems, by the name flows use (crm, erp): kind dataverse or sql, URL and sign-in."))
    flows: dict[str, Flow] = Field(description="The flows, by name: each moves one entity one way.")

    @field_validator("flows")
    @classmethod
    def _some_flows(cls, value: dict[str, Flow]) -> dict[str, Flow]:
        if not value:
            raise ValueError("no flows: a flows file needs at least one (`dualsync init` writes an example)")
        return value

    def flow(self, name: str) -> Flow:
        return self.flows[name]

    def pair_of(self, name: str) -> str:
        return self.flows[name].pair or name

    def reverse_of(self, name: str) -> str | None:
        """The other flow of a bidirectional pair, if any."""
        pair = self.flows[name].pair
        if pair is None:
            return None
        return next((other for other, f in self.flows.items() if other != name and f.pair == pair), None)

    def anchor_of(self, name: str) -> str:
        """The system whose keys identify a pair's records in the record state (stable for both flows)."""
        flow = self.flows[name]
        if self.reverse_of(name) is None:
            return flow.source.system
        return min(flow.source.system, flow.target.system)


def _loc_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in registry.KINDS and path.startswith("systems."):
            continue  # the discriminator's branch name is noise for the reader
        else:
            path += f".{part}" if path else str(part)
    return path


Loc = tuple[Any, ...]  # where in the file: ("flows", "a", "fields", 0, "to"), as pydantic locates errors
Problem = tuple[Loc, str]


def _cross_check(config: Config) -> list[Problem]:
    problems: list[Problem] = []
    for name, flow in config.flows.items():
        base = ("flows", name)
        for side in ("source", "target"):
            system = getattr(flow, side).system
            if system not in config.systems:
                problems.append(((*base, side, "system"), f"unknown system {system!r}"))
        if flow.master is not None and flow.master not in (flow.source.system, flow.target.system):
            problems.append(((*base, "master"), f"must be {flow.source.system!r} or {flow.target.system!r}"))
        for i, field in enumerate(flow.fields):
            for lookup in field.lookup_flows():
                if lookup not in config.flows:
                    problems.append(((*base, "fields", i, "lookup"), f"unknown flow {lookup!r}"))
            if field.owner is not None and field.owner not in (flow.source.system, flow.target.system):
                problems.append(((*base, "fields", i, "owner"), "must be one of the flow's systems"))
        mapped = {f.to for f in flow.fields}
        for key in flow.target.key:
            if key not in mapped:
                problems.append(((*base, "target", "key"), f"{key!r} is not the 'to' of any field"))
        for i, field_name in enumerate(flow.match_on):
            if field_name not in mapped:
                problems.append(((*base, "match_on", i), f"{field_name!r} is not the 'to' of any field"))
    problems += _check_pairs(config)
    problems += _check_capabilities(config)
    problems += _check_single_readers(config)
    return problems


def _check_single_readers(config: Config) -> list[Problem]:
    """A read that consumes its source (a files inbox archives each file it reads) leaves nothing for a second
    flow reading the same entity, so only one may."""
    readers: dict[tuple[str, str], str] = {}
    problems: list[Problem] = []
    for name, flow in config.flows.items():
        source, settings = flow.source, config.systems.get(flow.source.system)
        if settings is None or source.changes not in registry.capabilities_of(settings).consuming_reads:
            continue
        first = readers.setdefault((source.system, source.entity), name)
        if first != name:
            problems.append((("flows", name, "source"), (
                f"flow {first} reads {source.system} {source.entity} already; one flow per entity, since a read "
                "consumes what it read (an inbox file is archived)")))
    return problems


def _check_capabilities(config: Config) -> list[Problem]:
    """A flow may ask only for what its connectors declare they can do: found here, before anything connects,
    rather than at the first read or write."""
    problems: list[Problem] = []
    for name, flow in config.flows.items():
        source, target = config.systems.get(flow.source.system), config.systems.get(flow.target.system)
        if source is not None:
            problems += _source_needs(("flows", name), flow, source, registry.capabilities_of(source))
        if target is not None:
            problems += _target_needs(config, name, flow, target, registry.capabilities_of(target))
    return problems


def _named(system: str, settings: Any) -> str:
    return f"system {system!r} (kind {settings.kind})"


def _listed(items: frozenset[str]) -> str:
    return ", ".join(sorted(items)) or "none"


def _source_needs(base: Loc, flow: Flow, settings: Any, can: Capabilities) -> list[Problem]:
    source, problems = flow.source, []
    who = _named(source.system, settings)
    if source.changes not in can.change_modes:
        problems.append(((*base, "source", "changes"), (f"{who} cannot read changes as {source.changes!r}; it "
                                                       f"supports: {_listed(can.change_modes)}")))
        return problems
    for setting in sorted({"status_field", "reason_field"} & source.model_fields_set):
        if not can.acknowledges(source):
            problems.append(((*base, "source", setting), (f"only a source whose reads are acknowledged uses it; "
                                                         f"{who} acknowledges reads as: {_listed(can.acknowledge)}")))
    if flow.deletes != "ignore" and flow.reconcile is None and not can.finds_deletes(source):
        problems.append(((*base, "deletes"), (f"{who} reports no deletes when read as {source.changes!r} (it does "
                                             f"as: {_listed(can.delete_changes | can.snapshot_reads)}); add "
                                             "reconcile: to find them by comparing keys, or set deletes: ignore")))
    return problems


def _target_needs(config: Config, name: str, flow: Flow, settings: Any, can: Capabilities) -> list[Problem]:
    problems: list[Problem] = []
    who = _named(flow.target.system, settings)
    for i, field in enumerate(flow.fields):
        if field.bind is not None and not can.reference_binds:
            problems.append((("flows", name, "fields", i, "bind"), (f"{who} cannot write lookups as references "
                                                                   "(reference_binds); map the lookup to its key "
                                                                   "column instead")))
    if config.reverse_of(name) is not None and can.conditional_writes is None:
        problems.append((("flows", name, "pair"), (f"a pair writes a row only if it is still as read, and {who} has "
                                                  "no conditional writes (it supports: none); make this flow one-way")))
    return problems


def _check_pairs(config: Config) -> list[Problem]:
    problems: list[Problem] = []
    pairs: dict[str, list[str]] = {}
    for name, flow in config.flows.items():
        if flow.pair is not None:
            pairs.setdefault(flow.pair, []).append(name)
    for pair, names in pairs.items():
        if len(names) > 2:
            problems.append((("flows",), f"pair {pair!r} has {len(names)} flows; a pair is two flows, one each way"))
            continue
        if len(names) == 1:
            continue
        a, b = (config.flows[n] for n in names)
        if (a.source.system, a.source.entity) != (b.target.system, b.target.entity) or (
            a.target.system, a.target.entity) != (b.source.system, b.source.entity):
            problems.append((("flows", names[1], "pair"), f"{pair!r} must run the reverse way of flow {names[0]}"))
        if a.master != b.master:
            same = f"both flows of pair {pair!r} must name the same master (otherwise each side would keep its " \
                   "own value forever)"
            problems.append((("flows", names[1], "master"), same))
    return problems


def _message(err: Any) -> str:
    """pydantic's message without its prefixes, and for an unknown key the keys allowed there."""
    loc = err["loc"]
    if err["type"] == "extra_forbidden" and loc:
        allowed = _allowed_keys(loc[:-1])
        if allowed:
            guess = nearest(str(loc[-1]), allowed)
            return (f"unknown key {loc[-1]!r}" + (f" (did you mean {guess!r}?)" if guess else "")
                    + f"; allowed: {', '.join(allowed)}")
        return f"unknown key {loc[-1]!r}"
    message = err["msg"]
    for prefix in _PYDANTIC_PREFIXES:
        message = message.removeprefix(prefix)
    return message


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys the model at `loc` (a pydantic error location) takes, by their names in the file."""
    current: Any = Config
    for part in loc:
        current = _inner(current, part)
        if current is None:
            return []
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [f.alias or name for name, f in current.model_fields.items()]
    return []


def _inner(annotation: Any, part: Any) -> Any:
    """One step into a type along an error location: a model's field, a dict's value, a list's item, or the
    member of a discriminated union its tag names."""
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    origin = get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field = next((f for n, f in annotation.model_fields.items() if part in (n, f.alias)), None)
        return field.annotation if field else None
    if origin is dict:
        return get_args(annotation)[1]
    if origin is list:
        return get_args(annotation)[0]
    if origin in (Union, types.UnionType):
        members = [m for m in get_args(annotation) if m is not type(None)]
        for member in members:
            kind = getattr(member, "model_fields", {}).get("kind")
            if kind is not None and part in get_args(kind.annotation):
                return member
        models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
        return _inner(models[0], part) if len(models) == 1 else None
    return None


_EMPTY = "empty; a flows file has systems: and flows: (`dualsync init` writes an example)"


def _validated(data: Any) -> tuple[Config | None, list[Problem]]:
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        return None, [(err["loc"], _message(err)) for err in exc.errors()]
    return config, _cross_check(config)


def _path_line(loc: Loc, message: str) -> str:
    return f"{_loc_path(loc) or '(root)'}: {message}"


def parse_config(data: Any) -> Config:
    if data is None:
        raise ConfigError([f"(file): {_EMPTY}"])
    config, problems = _validated(data)
    if problems or config is None:
        raise ConfigError([_path_line(loc, message) for loc, message in problems])
    return config


def load_config(path: str | Path) -> Config:
    """The flows file at `path`, validated; every problem names the file and the line it is about."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        what = " ".join(str(p) for p in (getattr(exc, "context", None), getattr(exc, "problem", None)) if p)
        raise ConfigError([f"{where}: not valid YAML: {what or exc}"]) from None
    if data is None:
        raise ConfigError([f"{path}: {_EMPTY}"])
    config, problems = _validated(data)
    if problems or config is None:
        raise ConfigError([f"{path}:{_line_of(root, loc)}: {_path_line(loc, message)}" for loc, message in problems])
    return config


def _line_of(node: Any, loc: Loc) -> int:
    """The line (1-based) of the deepest node of the YAML document `loc` reaches: a key's own line for the
    last step into a mapping (an unknown key is reported where it is written)."""
    line = node.start_mark.line + 1 if node is not None else 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            hit = next(((k, v) for k, v in node.value if getattr(k, "value", None) == str(part)), None)
            if hit is None:
                continue  # a discriminator's branch name (dataverse, sql) is not in the document
            line, node = hit[0].start_mark.line + 1, hit[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
    return line
