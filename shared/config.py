"""The flows file (`flows.yaml`): pydantic models, loading, and error reporting with paths.

Every model forbids unknown keys, so a typo is an error rather than a silently ignored setting.
Secrets are only ever references (`env:NAME`); `resolve_secret` reads them at the last moment.
"""

from __future__ import annotations

import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shared.errors import ConfigError

SECRET_REF = re.compile(r"^env:[A-Za-z_][A-Za-z0-9_]*$")
_URL_PASSWORD = re.compile(r"^[a-z0-9+]+://[^/:@]*:[^/@]+@", re.IGNORECASE)
# A password in the query string (`?password=`, `sslpassword=`, ODBC `PWD=` inside `odbc_connect`), URL-encoded
# or not.
_QUERY_SECRET = re.compile(r"(pass(word)?|pwd|secret|token|access_?key|sslkey)\s*(=|%3d)", re.IGNORECASE)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _secret_ref(value: str | None) -> str | None:
    if value is not None and not SECRET_REF.match(value):
        raise ValueError("secrets must be references of the form env:NAME, never literal values")
    return value


def resolve_secret(ref: str) -> str:
    """`env:NAME` -> the variable's value; a plain string is returned as it is (non-secret values)."""
    if not ref.startswith("env:"):
        return ref
    name = ref[4:]
    value = os.environ.get(name)
    if not value:
        raise ConfigError([f"environment variable {name} (referenced as {ref}) is not set"])
    return value


class DataverseAuth(Strict):
    tenant_id: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    certificate_path: str | None = None
    # The same PEM (private key, then the certificate) as text from an env:NAME reference: on Azure a Key Vault
    # reference to the certificate's secret (…/secrets/<certificate name>), so no file has to be deployed.
    certificate_pem: str | None = None
    certificate_thumbprint: str | None = None
    certificate_password: str | None = None
    managed_identity: bool = False
    # A federated identity credential: the app registration (client_id) trusts this user-assigned managed
    # identity (its client id, or env:AZURE_CLIENT_ID), whose token for `token_exchange_audience` is the client
    # assertion. No secret or certificate exists to expire or leak.
    federated_identity_client_id: str | None = None
    token_exchange_audience: str = "api://AzureADTokenExchange"  # ...USGov / ...China in those clouds
    authority_host: str = "https://login.microsoftonline.com"
    # For simulators and tests only: send this static bearer token instead of asking MSAL.
    static_token: str | None = None

    _secrets = field_validator("client_secret", "certificate_pem", "certificate_password", "static_token")(_secret_ref)

    @model_validator(mode="after")
    def _one_method(self) -> DataverseAuth:
        methods = [bool(self.client_secret), bool(self.certificate_path), bool(self.certificate_pem),
                   self.managed_identity, bool(self.federated_identity_client_id), bool(self.static_token)]
        if sum(methods) != 1:
            raise ValueError("choose exactly one of client_secret, certificate_path, certificate_pem, "
                             "managed_identity, federated_identity_client_id, static_token")
        confidential = (self.client_secret or self.certificate_path or self.certificate_pem
                        or self.federated_identity_client_id)
        if confidential and not (self.tenant_id and self.client_id):
            raise ValueError("tenant_id and client_id are required with a client secret, certificate or "
                             "federated identity")
        return self


class DataverseSystem(Strict):
    kind: Literal["dataverse"]
    url: str
    auth: DataverseAuth
    api_version: str = "v9.2"
    page_size: int = Field(default=5000, ge=1, le=5000)
    # The most operations per $batch; a table's batches start at initial_batch_size (Microsoft advises about
    # 10) and grow while they answer fast, shrink on slow answers, timeouts, throttling and 413.
    batch_size: int = Field(default=1000, ge=1, le=1000)
    initial_batch_size: int = Field(default=10, ge=1, le=1000)
    max_concurrency: int = Field(default=4, ge=1, le=52)
    # A 429 pauses the whole connector for its Retry-After; a write or read waits out at most this much in
    # all before it gives up with a transient error (the engine then retries the record later).
    max_throttle_wait_seconds: float = Field(default=30, ge=0)
    timeout_seconds: float = Field(default=60, gt=0)
    # One pull reads at most this many pages (5,000 rows each by default); the next run resumes from the link.
    max_pages_per_run: int = Field(default=2000, ge=1)
    # An answer larger than this is refused while it streams in (a 5,000-row page is a few MB).
    max_response_mb: int = Field(default=128, ge=1, le=1024)
    # Sent as the `tag` query parameter on every write; plug-ins see it as the shared variable "tag".
    tag: str | None = Field(default="dualsync", min_length=1, max_length=100)


class SqlSystem(Strict):
    kind: Literal["sql"]
    url: str

    @field_validator("url")
    @classmethod
    def _no_literal_password(cls, value: str) -> str:
        if value.startswith("env:"):
            return value
        if _URL_PASSWORD.match(value):
            raise ValueError("a database URL with a password must be given as env:NAME")
        _, _, query = value.partition("?")
        if _QUERY_SECRET.search(query):
            raise ValueError("a database URL with a secret in its query string must be given as env:NAME")
        return value


FieldType = Literal["string", "int", "decimal", "bool", "datetime", "date"]


class CsvFormat(Strict):
    """How one entity's CSV files are written (by the ERP into the inbox, by us into the outbox)."""

    delimiter: str = Field(default=",", min_length=1, max_length=1)
    quotechar: str = Field(default='"', min_length=1, max_length=1)
    # minimal: quote only what needs it; all: every field; none: never (a delimiter in a value is then escaped
    # with escapechar)
    quoting: Literal["minimal", "all", "none"] = "minimal"
    escapechar: str | None = Field(default=None, min_length=1, max_length=1)
    encoding: str = "utf-8"  # utf-8-sig for files from Excel, cp1252 / latin-1 for older ERPs
    decimal_separator: Literal[".", ","] = "."
    # CSV header -> field name; headers not named here keep their own name
    columns: dict[str, str] = Field(default_factory=dict)
    # field name -> type its text is parsed as on reading (a decimal with decimal_separator); untyped fields
    # are text, an empty cell is null
    types: dict[str, FieldType] = Field(default_factory=dict)
    operation_column: str = "operation"  # outbox: upsert | update | delete
    # A field set to null. In the outbox an empty cell is a field the row does not write (its value at the ERP
    # stays as it is); on reading, both an empty cell and this are null.
    null_marker: str = "\\N"

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        import codecs

        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown encoding {value!r}") from None
        return value


_CONTAINER = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")


class FilesSystem(Strict):
    """CSV file exchange: an ERP that exports files into an inbox and imports the files of an outbox. Each entity
    is a sub-folder (a name prefix in a container): `<inbox>/<entity>/*.csv`."""

    kind: Literal["files"]
    # Embedded: a folder holding the inbox, archive and outbox folders (it must exist: a missing one is an
    # unreachable exchange, never an empty one).
    folder: str | None = None
    # Azure Blob Storage: the account's blob endpoint (identity-based access: the app's managed identity, or
    # AZURE_CLIENT_ID's), or env:NAME of a connection string (Azurite); inbox, archive and outbox are containers.
    blob_endpoint: str | None = None
    blob_connection: str | None = None
    inbox: str = "inbox"
    archive: str = "archive"
    outbox: str = "outbox"
    csv: CsvFormat = CsvFormat()
    formats: dict[str, CsvFormat] = Field(default_factory=dict)  # entity -> its format, instead of `csv`

    _secrets = field_validator("blob_connection")(_secret_ref)

    @model_validator(mode="after")
    def _one_store(self) -> FilesSystem:
        if sum(bool(s) for s in (self.folder, self.blob_endpoint, self.blob_connection)) != 1:
            raise ValueError("choose exactly one of folder, blob_endpoint, blob_connection")
        areas = (self.inbox, self.archive, self.outbox)
        if len(set(areas)) != 3:  # an archive that is the inbox would read every file again, an outbox our own
            raise ValueError("inbox, archive and outbox must be three different folders or containers")
        if not self.folder:
            bad = [a for a in areas if not _CONTAINER.match(a) or "--" in a]
            if bad:
                raise ValueError(f"not a Blob container name (3-63 lower-case letters, digits, single '-'): {bad}")
        elif any(a in ("", ".", "..") or "/" in a or a.startswith(".") for a in areas):
            raise ValueError("inbox, archive and outbox are folder names inside `folder`")
        return self

    def format_of(self, entity: str) -> CsvFormat:
        return self.formats.get(entity, self.csv)


System = Annotated[DataverseSystem | SqlSystem | FilesSystem, Field(discriminator="kind")]

Keys = Annotated[list[str], Field(min_length=1)]


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class SourceSpec(Strict):
    system: str
    entity: str
    key: Keys
    # snapshot: no change marker at all (files); every read is the whole source, and only rows that differ
    # from what is known of them are sent (shared.engine.snapshot)
    changes: Literal["change_tracking", "watermark", "status_flag", "xact_id", "snapshot"] = "watermark"
    watermark: str = "modified_at"
    version: str | None = None  # a rowversion-like column; the watermark is the version when absent
    # watermark on a date-time column: also re-read rows stamped up to this long before the previous read
    # began, so a row whose transaction commits within this time of its stamp is never missed (README:
    # change modes). 0 turns the overlap off. Re-read rows keep their version, so they are dropped as
    # duplicates or skipped as already applied, never written twice.
    lookback_seconds: float = Field(default=60, ge=0, le=86400)
    # xact_id (PostgreSQL 13+): the xid8 or bigint column a trigger fills with pg_current_xact_id().
    xact_column: str = "sync_xact"
    status_field: str = "sync_status"
    reason_field: str = "sync_error"
    # Dataverse: the columns to read ($select); the key, modifiedon and versionnumber are always added.
    # None reads every column.
    select: list[str] | None = None

    _key_list = field_validator("key", mode="before")(_as_list)


class TargetSpec(Strict):
    system: str
    entity: str
    key: Keys
    deactivate_field: str = "status"
    deactivate_value: Any = "inactive"

    _key_list = field_validator("key", mode="before")(_as_list)


LOOKUP_LOGICAL_NAME = "Microsoft.Dynamics.CRM.lookuplogicalname"  # the table a Dataverse lookup points to
_BIND = r"^[A-Za-z_][A-Za-z0-9_]*(\([A-Za-z_][A-Za-z0-9_]*(,[A-Za-z_][A-Za-z0-9_]*)*\))?$"


class FieldMap(Strict):
    from_: str = Field(alias="from")
    to: str
    type: FieldType | None = None
    max_length: int | None = Field(default=None, ge=1)
    required: bool = False
    map: dict[str, Any] | None = None
    default: Any = None
    # The flow whose key map translates this value; for a polymorphic lookup (a Dataverse customer or regarding
    # column), one flow per table: {account: accounts-to-customers, contact: contacts-to-persons}.
    lookup: str | dict[str, str] | None = None
    owner: str | None = None
    # Dataverse lookups written as `to: <nav>@odata.bind`: "accounts" (the value is the primary id GUID) or
    # "accounts(accountnumber)" (an alternate key); the value becomes /accounts(<guid>) or
    # /accounts(accountnumber='<value>'). A polymorphic lookup takes one per table, {contact:
    # "contacts(dualsync_externalid)", ...}, and a `to` naming the navigation property with {table} in it
    # (`parentcustomerid_{table}@odata.bind`): the table is the value of `table_from`.
    bind: str | dict[str, Annotated[str, Field(pattern=_BIND)]] | None = None
    # The payload field that names the table a polymorphic lookup points to (a logical name such as
    # "contact"). Default: Dataverse's annotation of the `from` column, read with the row.
    table_from: str | None = None

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
    source: SourceSpec
    target: TargetSpec
    schedule: str = "0 */5 * * * *"
    master: str | None = None
    deletes: Literal["delete", "deactivate", "ignore"] = "ignore"
    fields: list[FieldMap] = Field(min_length=1)
    pair: str | None = None  # two flows with one pair name (crm->erp, erp->crm) share key map and record state
    conflicts: Literal["master_wins", "last_writer_wins", "manual"] = "master_wins"
    review: bool = False  # incoming changes become change requests an operator approves or rejects
    match_on: list[str] = Field(default_factory=list)  # target fields that identify one record at initial sync
    reconcile: str | None = None  # NCRONTAB: a key-set comparison that finds deletes (no change tracking)
    fetch_missing_parents: bool = False  # pull a missing lookup parent on demand instead of waiting
    max_attempts: int | None = Field(default=None, ge=1, le=100)  # None: the MAX_ATTEMPTS app setting
    missing_reference_attempts: int = Field(default=5, ge=1, le=100)
    # How long a change may keep being throttled (429 / Retry-After), from its first throttle, before it is
    # dead-lettered; throttling never uses max_attempts. ISO 8601 (PT6H) or seconds.
    throttle_budget: timedelta = Field(default=timedelta(hours=6), gt=timedelta(0))
    page_size: int = Field(default=1000, ge=1, le=10000)
    enabled: bool = True

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
    systems: dict[str, System]
    flows: dict[str, Flow]

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
        elif part in ("dataverse", "sql", "files") and path.startswith("systems."):
            continue  # the discriminator's branch name is noise for the reader
        else:
            path += f".{part}" if path else str(part)
    return path


def _cross_check(config: Config) -> list[str]:
    problems = []
    for name, flow in config.flows.items():
        base = f"flows.{name}"
        for side in ("source", "target"):
            system = getattr(flow, side).system
            if system not in config.systems:
                problems.append(f"{base}.{side}.system: unknown system {system!r}")
        if flow.master is not None and flow.master not in (flow.source.system, flow.target.system):
            problems.append(f"{base}.master: must be {flow.source.system!r} or {flow.target.system!r}")
        for i, field in enumerate(flow.fields):
            for lookup in field.lookup_flows():
                if lookup not in config.flows:
                    problems.append(f"{base}.fields[{i}].lookup: unknown flow {lookup!r}")
            if field.owner is not None and field.owner not in (flow.source.system, flow.target.system):
                problems.append(f"{base}.fields[{i}].owner: must be one of the flow's systems")
        mapped = {f.to for f in flow.fields}
        for key in flow.target.key:
            if key not in mapped:
                problems.append(f"{base}.target.key: {key!r} is not the 'to' of any field")
        for i, field_name in enumerate(flow.match_on):
            if field_name not in mapped:
                problems.append(f"{base}.match_on[{i}]: {field_name!r} is not the 'to' of any field")
    problems += _check_pairs(config)
    problems += _check_inboxes(config)
    return problems


def _check_inboxes(config: Config) -> list[str]:
    """A files inbox is read by one flow: the first to read a file archives it, so a second would never see it."""
    readers: dict[tuple[str, str], str] = {}
    problems = []
    for name, flow in config.flows.items():
        if isinstance(config.systems.get(flow.source.system), FilesSystem):
            first = readers.setdefault((flow.source.system, flow.source.entity), name)
            if first != name:
                problems.append(f"flows.{name}.source: flow {first} reads {flow.source.system} "
                                f"{flow.source.entity} already; one flow per inbox entity (it archives each file)")
    return problems


def _check_pairs(config: Config) -> list[str]:
    problems = []
    pairs: dict[str, list[str]] = {}
    for name, flow in config.flows.items():
        if flow.pair is not None:
            pairs.setdefault(flow.pair, []).append(name)
    for pair, names in pairs.items():
        if len(names) > 2:
            problems.append(f"flows: pair {pair!r} has {len(names)} flows; a pair is two flows, one each way")
            continue
        if len(names) == 1:
            continue
        a, b = (config.flows[n] for n in names)
        if (a.source.system, a.source.entity) != (b.target.system, b.target.entity) or (
            a.target.system, a.target.entity) != (b.source.system, b.source.entity):
            problems.append(f"flows.{names[1]}.pair: {pair!r} must run the reverse way of flow {names[0]}")
        if a.master != b.master:
            problems.append(f"flows.{names[1]}.master: both flows of pair {pair!r} must name the same master "
                            "(otherwise each side would keep its own value forever)")
    return problems


def parse_config(data: Any) -> Config:
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        problems = [f"{_loc_path(err['loc']) or '(root)'}: {err['msg']}" for err in exc.errors()]
        raise ConfigError(problems) from None
    problems = _cross_check(config)
    if problems:
        raise ConfigError(problems)
    return config


def load_config(path: str | Path) -> Config:
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"(file): not valid YAML: {exc}"]) from None
    return parse_config(data)
