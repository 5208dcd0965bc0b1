"""Preflight: check a flows file against the systems it names, before anything is read or written.

Validation (`shared.config`) checks the file on its own; this checks it against the world: every `env:`
reference is set, every system answers, every entity exists, and every column a flow reads (key, change
columns, `select`, each field's `from`) and writes (each field's `to`, the target key, `deactivate_field`) is
one the entity really has, as its connector describes it (`Connector.describe`). Without it a typo in `from:`
writes NULL into every target row and a wrong `to:` dead-letters every record.

Each problem is one `Finding` naming flow, field and the name that was not found, with the names that do
exist and the nearest of them. A system that cannot be reached is one finding naming the system, never a
traceback, and never the secret: every resolved `env:` value of that system is scrubbed from the text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from shared.config import Config, FieldMap, Flow
from shared.config_base import SECRET_REF, resolve_secret
from shared.errors import ConfigError, SyncError
from shared.names import nearest
from shared.ports.connector import Connector, EntitySchema

if TYPE_CHECKING:
    from shared.app import SyncApp

Severity = Literal["error", "warning"]
# What a finding is about: an unset env: reference, a system that did not answer (or refused the connector's
# settings), a missing entity, a missing column or navigation property, a max_length beyond the column.
Kind = Literal["reference", "connection", "entity", "column", "length"]
SHOWN_NAMES = 12  # names listed in a finding's line; JSON carries them all


@dataclass(frozen=True)
class Finding:
    problem: str
    kind: Kind
    severity: Severity = "error"
    flow: str | None = None  # None: about a system
    system: str | None = None
    field: str | None = None  # where in the flow (fields[3].from) or the file (systems.erp.url)
    name: str | None = None  # the name that was not found
    existing: tuple[str, ...] = ()
    nearest: str | None = None

    @property
    def path(self) -> str:
        if self.flow is not None:
            return f"flows.{self.flow}" + (f".{self.field}" if self.field else "")
        return self.field or f"systems.{self.system}"

    def line(self) -> str:
        text = f"{self.path}: {self.problem}"
        if self.nearest:
            text += f"; did you mean {self.nearest!r}?"
        if self.existing:
            shown = ", ".join(self.existing[:SHOWN_NAMES])
            more = len(self.existing) - SHOWN_NAMES
            text += f" (has: {shown}{f' and {more} more' if more > 0 else ''})"
        return text


def has_errors(findings: Iterable[Finding]) -> bool:
    return any(f.severity == "error" for f in findings)


class PreflightError(SyncError):
    """A flow's file does not match its systems: the flow is not pulled until it does."""


def require_ready(app: SyncApp, flow: str) -> None:
    """The Functions host's check (`pull_due_flows(check=True)`): before a flow's first pull in this process,
    and before every pull while it fails, raise PreflightError with each error the preflight finds for it.

    A system that does not answer is left to the pull itself, which fails (or, refused with 401/403, pauses
    the flow) as it always has; the flow is checked again before its next pull."""
    if flow in app.checked_flows:
        return
    errors = [f for f in preflight(app.config, app.connector, [flow]) if f.severity == "error"]
    if any(f.kind == "connection" for f in errors):
        return
    if errors:
        raise PreflightError("; ".join(f.line() for f in errors))
    app.checked_flows.add(flow)


def preflight(config: Config, connector_for: Callable[[str], Connector],
              flows: Iterable[str] | None = None) -> list[Finding]:
    """Every problem found with the given flows (default: all of them) and the systems they use (all systems
    when no flow is named). `connector_for(system)` builds or returns the system's connector."""
    names = list(config.flows) if flows is None else list(flows)
    used = {s for n in names for s in (config.flows[n].source.system, config.flows[n].target.system)}
    systems = list(config.systems) if flows is None else [s for s in config.systems if s in used]
    findings: list[Finding] = []
    reachable: dict[str, _System] = {}
    for system in systems:
        unset = list(_unset_references(system, config.systems[system].model_dump()))
        findings += unset
        if unset:
            continue
        checked = _System(system, _secrets_of(config.systems[system].model_dump()))
        problem = checked.connect(connector_for, _entities_of(config, names, system))
        if problem:
            findings.append(problem)
        else:
            reachable[system] = checked
    for name in names:
        flow = config.flows[name]
        source, target = reachable.get(flow.source.system), reachable.get(flow.target.system)
        if source is not None:
            findings += _check_source(name, flow, source)
        if target is not None:
            findings += _check_target(name, flow, target)
    return findings


def _unset_references(system: str, data: Any, path: str = "") -> Iterator[Finding]:
    base = path or f"systems.{system}"
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _unset_references(system, value, f"{base}.{key}")
    elif isinstance(data, str) and SECRET_REF.match(data) and _resolved(data) is None:
        yield Finding(f"environment variable {data[4:]} is not set (referenced as {data})", "reference",
                      system=system, field=base)


def _resolved(ref: str) -> str | None:
    try:
        return resolve_secret(ref)
    except ConfigError:
        return None


def _secrets_of(data: Any) -> list[str]:
    if isinstance(data, dict):
        return [s for value in data.values() for s in _secrets_of(value)]
    if isinstance(data, str) and SECRET_REF.match(data):
        value = _resolved(data) or ""
        return [value] if len(value) >= 4 else []  # too short to scrub without mangling the text
    return []


def _entities_of(config: Config, flows: list[str], system: str) -> list[str]:
    entities = [config.flows[n].source.entity for n in flows if config.flows[n].source.system == system]
    entities += [config.flows[n].target.entity for n in flows if config.flows[n].target.system == system]
    return list(dict.fromkeys(entities))


class _System:
    """One system's connector and the entities it described; its failure is one finding."""

    def __init__(self, name: str, secrets: list[str]) -> None:
        self.name = name
        self.secrets = sorted(secrets, key=len, reverse=True)
        self.connector: Connector | None = None
        self.schemas: dict[str, EntitySchema | None] = {}

    def connect(self, connector_for: Callable[[str], Connector], entities: list[str]) -> Finding | None:
        try:
            self.connector = connector_for(self.name)
            describe = getattr(self.connector, "describe", None)
            for entity in entities:
                self.schemas[entity] = describe(entity) if describe else None
        except ConfigError as exc:
            return Finding(self._scrub("; ".join(exc.problems)), "connection", system=self.name)
        except Exception as exc:  # noqa: BLE001 - whatever stops us reaching it is this system's one finding
            return Finding(f"cannot connect: {self._scrub(_first_line(exc))}", "connection", system=self.name)
        return None

    def _scrub(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def change_column(self, flow: Flow) -> str:
        try:
            return self.connector.change_time_column(flow.source) or flow.source.watermark  # type: ignore[union-attr]
        except Exception:  # noqa: BLE001 - the column itself is checked next
            return flow.source.watermark


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _missing_entity(flow: str, side: str, schema: EntitySchema, system: str) -> Finding:
    return Finding(f"no entity {schema.entity!r} in {system}", "entity", flow=flow, system=system, field=f"{side}.entity",
                   name=schema.entity, existing=tuple(sorted(schema.known_entities)),
                   nearest=nearest(schema.entity, schema.known_entities))


def _missing(flow: str, system: _System, entity: str, field: str, name: str, existing: list[str],
             what: str = "column") -> Finding:
    return Finding(f"{name!r} is not a {what} of {entity} in {system.name}", "column", flow=flow, system=system.name,
                   field=field, name=name, existing=tuple(existing), nearest=nearest(name, existing))


def _source_names(flow: Flow, system: _System) -> list[tuple[str, str]]:
    """(where in the flow, column) for every column pull reads."""
    source = flow.source
    names = [(f"source.key[{i}]", k) for i, k in enumerate(source.key)]
    if source.changes == "watermark":
        names.append(("source.watermark", system.change_column(flow)))
    elif source.changes == "status_flag":
        names += [("source.status_field", source.status_field), ("source.reason_field", source.reason_field)]
    elif source.changes == "xact_id":
        names.append(("source.xact_column", source.xact_column))
    if source.version:
        names.append(("source.version", source.version))
    names += [(f"source.select[{i}]", s) for i, s in enumerate(source.select or [])]
    for i, field in enumerate(flow.fields):
        names.append((f"fields[{i}].from", field.from_.split("@")[0]))  # an annotation rides on its column
        if field.table_from:
            names.append((f"fields[{i}].table_from", field.table_from.split("@")[0]))
    return names


def _described(name: str, side: str, entity: str, system: _System) -> tuple[EntitySchema | None, list[Finding]]:
    """The entity's schema to check columns against; None (with the finding) when it is missing, or None
    alone when the system cannot describe it."""
    schema = system.schemas.get(entity)
    if schema is not None and not schema.exists:
        return None, [_missing_entity(name, side, schema, system.name)]
    return schema, []


def _check_source(name: str, flow: Flow, system: _System) -> list[Finding]:
    schema, missing = _described(name, "source", flow.source.entity, system)
    if schema is None:
        return missing
    readable = schema.readable()
    return [_missing(name, system, schema.entity, where, column, readable)
            for where, column in _source_names(flow, system) if column not in readable]


def _check_target(name: str, flow: Flow, system: _System) -> list[Finding]:
    schema, missing = _described(name, "target", flow.target.entity, system)
    if schema is None:
        return missing
    writable = schema.writable()
    every = list(dict.fromkeys([*writable, *schema.readable()]))
    findings = [_missing(name, system, schema.entity, f"target.key[{i}]", k, every)
                for i, k in enumerate(flow.target.key) if k not in every]
    if flow.deletes == "deactivate" and flow.target.deactivate_field not in writable:
        findings.append(_missing(name, system, schema.entity, "target.deactivate_field",
                                 flow.target.deactivate_field, writable))
    for i, field in enumerate(flow.fields):
        findings += _check_to(name, i, field, schema, system)
    return findings


def _check_to(name: str, i: int, field: FieldMap, schema: EntitySchema, system: _System) -> list[Finding]:
    """A field's `to`: a writable column, or (`<nav>@odata.bind`) a navigation property for every table it may
    bind; and a max_length the column can hold."""
    where = f"fields[{i}].to"
    if "@odata.bind" in field.to:
        nav = field.to.split("@")[0]
        tables = sorted(field.bind) if isinstance(field.bind, dict) and "{table}" in nav else [""]
        return [_missing(name, system, schema.entity, where, bound, list(schema.bindings), what="navigation property")
                for bound in (nav.replace("{table}", t) for t in tables) if bound not in schema.bindings]
    if field.to not in schema.writable():
        return [_missing(name, system, schema.entity, where, field.to, schema.writable())]
    holds = next((c.max_length for c in schema.columns if c.name == field.to), None)
    if field.max_length and holds and field.max_length > holds:
        return [Finding(f"max_length {field.max_length} is longer than {field.to} holds ({holds}): longer values "
                        "will be rejected by the target rather than dead-lettered by this rule", "length",
                        severity="warning", flow=name, system=system.name, field=f"fields[{i}].max_length")]
    return []
