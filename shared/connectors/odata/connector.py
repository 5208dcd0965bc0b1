"""The OData v4 implementation of the Connector port (``kind: odata``): Finance & Operations data entities,
Business Central's API, SAP Gateway and CAP services.

Reading (`SourceSpec.changes`; `reads` explains the keyset):

- ``watermark``: a DateTimeOffset property (``source.watermark``) with the key as tie-break, in pages of
  ``odata.maxpagesize`` / ``$top``; the position is ``{"watermark", "last_key", "read_at"}``. A full read (no
  position) yields snapshot pages; rows whose watermark is null cannot be placed and are left out with a note
  (counted with ``$count``). ``version`` is the watermark as a sortable UTC moment. Look-back as the SQL
  connector's (``lookback_seconds``): each read starts at ``min(position, read_at - lookback)``, ``read_at``
  being the previous read's start by the service's clock (its ``Date``), so a row stamped when its transaction
  began and committed within the look-back is read; rows read again keep their version and are skipped.
- ``change_tracking``: ``Prefer: odata.track-changes``; the first read is a full read (snapshot) ending with an
  ``@odata.deltaLink``, which is the cursor; ``{"next_link"}`` while pages follow. A service that does not
  track changes ends without a delta link: ConfigError (use watermark). A stored link the service refuses
  with a client error (an expired token) starts a full read again, with a note. Deletes come in both forms;
  a delete's version is the answer's ``Date`` + ``~deleted`` (after every version read before it).

Keys are typed from ``$metadata`` (``Edm.String`` quoted with quotes doubled, numbers, GUIDs, date-times
bare) and percent-encoded (`literals`); composite keys (``dataAreaId`` + the entity key) are named
predicates. ``query_options`` (``cross-company=true``) go on every request.

Writing (`write_batch`): no upsert is assumed. For each round, one read of the ops' keys (``$filter`` in
chunks) says which rows exist and their ETags; then a new key is POSTed (the key in the body) and an existing
row PATCHed (the key in the URL) with ``If-Match``: the op's ETag when the engine read the row, else the
ETag just read (``*`` when the service has no ETags: ``etags: false``). Every op of a round goes out in
``$batch`` requests of ``batch_size`` (JSON format, or multipart where configured), and each answer is mapped
back to its op by id. Then:

- a 412 on the ETag just read (someone wrote in between), a 404 on a PATCH (the row went away), a failed POST
  (a create that collided with a row created in between: CAP answers 500, others 409 or 400) and an op with
  no answer are decided again from a fresh read, up to ``ROUNDS`` times; a create that collided becomes an
  update, never a dead letter and never a 500 loop; a POST that fails while the key is still absent is the
  service's refusal;
- a 412 or 404 on the engine's ETag, an ``if_values`` guard whose values differ from the row read, and a
  ``create_only`` op whose row exists fail with TargetChanged (the engine decides again);
- ``update`` of a missing row fails as not found; ``delete`` of a missing row is done;
- a value the property cannot hold (``$metadata``: type, nullability, MaxLength) fails that op before
  anything is sent, naming the field; a ``$batch`` refused as too large (413) goes again in halves; throttling
  and faults are the client's (`client`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from shared.config import SourceSpec, TargetSpec
from shared.config_base import resolve_secret
from shared.connectors.odata.auth import token_provider_for
from shared.connectors.odata.batch import (
    BatchPart,
    BatchRequest,
    json_batch,
    multipart_batch,
    parse_batch_response,
    parse_json_batch,
    parts_by_request,
)
from shared.connectors.odata.client import (
    BasicCredentials,
    BearerCredentials,
    Credentials,
    NoAnswer,
    NoCredentials,
    ODataClient,
    Trail,
)
from shared.connectors.odata.faults import ODataError, error_of, sync_error
from shared.connectors.odata.literals import iso_moment, json_body, key_predicate, moment
from shared.connectors.odata.metadata import EntitySet, Unwritable, convert, parse_metadata
from shared.connectors.odata.reads import DELETED_SUFFIX, after, deleted_key, is_deleted, key_filters, values_of
from shared.connectors.odata_settings import OdataSystem
from shared.errors import ConfigError, PermanentError, Reason, SyncError, TargetChanged, TransientError
from shared.keys import format_key
from shared.ports.connector import (
    Capabilities,
    ChangePage,
    ColumnInfo,
    EntitySchema,
    SourceRecord,
    ValuePrecision,
    WriteOp,
    WriteResult,
)
from shared.versions import sortable_version

ROUNDS = 4  # decisions per op inside one write_batch (read, write; again after a lost race)
REBASELINE_NOTE = "stored link refused: re-baselined with a full read"


@dataclass
class _Item:
    index: int
    op: WriteOp
    key_text: str
    key: dict[str, Any]  # converted to the properties' types
    values: dict[str, Any]  # converted, without the key
    method: str = ""  # of the request last sent for it
    post_failed: SyncError | None = None  # a POST refused while the key was absent: stands if still absent
    last_error: SyncError | None = None


@dataclass
class _Round:
    requests: list[BatchRequest] = field(default_factory=list)
    items: list[_Item] = field(default_factory=list)


class OdataConnector:
    """Connector over one OData v4 service root."""

    # change_tracking where the service tracks changes: only its answer tells (a read without a delta link is
    # refused then), so both modes are declared and a service without tracking fails its first read.
    capabilities = Capabilities(
        change_modes=frozenset({"watermark", "change_tracking"}),
        conditional_writes="etag",
        snapshot_reads=frozenset({"watermark", "change_tracking"}),
        delete_changes=frozenset({"change_tracking"}),
        describes_schema=True,
    )

    @classmethod
    def capabilities_for(cls, system: OdataSystem) -> Capabilities:
        return cls.for_etags(system.etags)

    @classmethod
    def for_etags(cls, etags: bool) -> Capabilities:
        """Without ETags (`etags: false`) every update goes with If-Match: *: no write can be conditional."""
        return cls.capabilities if etags else replace(cls.capabilities, conditional_writes=None)

    def __init__(
        self,
        url: str,
        credentials: Credentials | None = None,
        *,
        name: str = "odata",
        query_options: dict[str, str] | None = None,
        batch_format: str = "json",
        batch_size: int = 100,
        page_size: int = 1000,
        etags: bool = True,
        datetime_digits: int = 3,
        max_pages_per_run: int = 2000,
        timeout_seconds: float = 60,
        max_concurrency: int = 4,
        max_throttle_wait_seconds: float = 30,
        max_response_bytes: int = 128 * 1024 * 1024,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.name = name
        self._http = ODataClient(
            url, credentials or NoCredentials(), name=name, timeout_seconds=timeout_seconds,
            max_concurrency=max_concurrency, max_throttle_wait_seconds=max_throttle_wait_seconds,
            max_response_bytes=max_response_bytes, transport=transport,
        )
        self.root = self._http.root
        self.query_options = list((query_options or {}).items())
        self.batch_format = batch_format
        self.batch_size = batch_size
        self.page_size = page_size
        self.etags = etags
        self.capabilities = self.for_etags(etags)
        self.datetime_digits = datetime_digits
        self.max_pages_per_run = max_pages_per_run
        self._metadata: dict[str, EntitySet] | None = None
        self._metadata_lock = threading.Lock()

    @classmethod
    def from_config(cls, name: str, system: OdataSystem, *, transport: httpx.BaseTransport | None = None,
                    msal_http_client: Any = None, instance_discovery: bool | None = None) -> OdataConnector:
        url = resolve_secret(system.url)
        auth = system.auth
        credentials: Credentials
        if auth.method == "basic":
            password_ref = auth.password or ""
            credentials = BasicCredentials(resolve_secret(auth.username or ""), lambda: resolve_secret(password_ref))
        elif auth.method == "bearer":
            parts = urlsplit(url)
            credentials = BearerCredentials(token_provider_for(
                auth, f"{parts.scheme}://{parts.netloc}", http_client=msal_http_client,
                instance_discovery=instance_discovery, scope=auth.scope, label=f"{name} auth"))
        else:
            credentials = NoCredentials()
        return cls(
            url, credentials, name=name, query_options=system.query_options, batch_format=system.batch_format,
            batch_size=system.batch_size, page_size=system.page_size, etags=system.etags,
            datetime_digits=system.datetime_digits, max_pages_per_run=system.max_pages_per_run,
            timeout_seconds=system.timeout_seconds, max_concurrency=system.max_concurrency,
            max_throttle_wait_seconds=system.max_throttle_wait_seconds,
            max_response_bytes=system.max_response_mb * 1024 * 1024, transport=transport,
        )

    def __repr__(self) -> str:
        return f"OdataConnector(name={self.name!r}, url={self.root!r})"

    # -- plumbing ---------------------------------------------------------------------------------

    def _url(self, path: str, options: list[tuple[str, str]] | None = None) -> str:
        return self._http.url(path, [*(options or []), *self.query_options])

    def _entity(self, name: str) -> EntitySet:
        """The entity set as ``$metadata`` describes it (read once); ConfigError for an unknown set."""
        found = self._entity_sets().get(name)
        if found is None:
            raise ConfigError([f"{self.name}: the service has no entity set {name!r} (see its $metadata)"])
        return found

    def _entity_sets(self) -> dict[str, EntitySet]:
        if self._metadata is None:
            with self._metadata_lock:
                if self._metadata is None:
                    what = f"{self.name}: reading $metadata"
                    response = self._http.send("GET", self._http.url("$metadata"), what,
                                               {"Accept": "application/xml"})
                    if response.status_code >= 400:
                        raise sync_error(error_of(response.status_code, response.headers, response.content), what)
                    try:
                        self._metadata = parse_metadata(response.content)
                    except Exception as exc:  # noqa: BLE001 - any XML error: the document is unusable
                        raise TransientError(f"{what}: unreadable: {type(exc).__name__}") from None
        return self._metadata

    def _get(self, url: str, what: str, prefer: str | None = None) -> tuple[dict[str, Any], httpx.Response]:
        try:
            return self._http.get_json(url, what, prefer)
        except ODataError as err:
            raise sync_error(err, what) from None

    def _select(self, source: SourceSpec, *extra: str) -> list[tuple[str, str]]:
        if source.select is None:
            return []
        return [("$select", ",".join(dict.fromkeys([*source.select, *source.key, *extra])))]

    def _record(self, source: SourceSpec, row: dict[str, Any], version: str | None = None) -> SourceRecord:
        values = values_of(row)
        try:
            key = format_key([values[k] for k in source.key])
        except KeyError as exc:
            raise ConfigError([(f"{source.entity}: key property {exc.args[0]!r} is not in the rows the service "
                               "returns")]) from None
        changed = moment(values.get(source.watermark))
        if version is None:
            if changed is None:
                raise ConfigError([f"{source.entity}: rows carry no {source.watermark} to version them by"])
            version = sortable_version(changed)
        return SourceRecord(key, values, version, changed or datetime.now(UTC), etag=row.get("@odata.etag"))

    def _cap_note(self) -> str:
        return f"page cap of {self.max_pages_per_run} pages per run reached: the next run continues from here"

    # -- reading changes --------------------------------------------------------------------------

    def read_changes(self, source: SourceSpec, position: dict[str, Any] | None,
                     page_size: int) -> Iterator[ChangePage]:
        size = max(1, min(page_size, self.page_size))
        if source.changes == "watermark":
            return self._read_watermark(source, position or {}, size)
        if source.changes == "change_tracking":
            return self._read_delta(source, position or {}, size)
        raise ConfigError([(f"{source.entity}: changes {source.changes!r} is not supported by OData "
                           "(use watermark, or change_tracking where the service tracks changes)")])

    def _read_watermark(self, source: SourceSpec, position: dict[str, Any], size: int) -> Iterator[ChangePage]:
        entity = self._entity(source.entity)
        column = source.watermark
        if column not in entity.properties:
            raise ConfigError([f"{source.entity}: no property {column!r} to use as the watermark"])
        watermark, last_key = position.get("watermark"), position.get("last_key")
        snapshot = watermark is None
        notes = self._null_watermarks(source, column) if snapshot else []
        what = f"{source.entity}: reading changes since {watermark}" if watermark else f"{source.entity}: full read"
        order = ",".join(f"{c} asc" for c in dict.fromkeys([column, *source.key]))
        looks_back = source.lookback_seconds > 0 and entity.properties[column].type == "Edm.DateTimeOffset"
        floor = _lookback_floor(watermark, position.get("read_at"), source.lookback_seconds) if (
            looks_back and not snapshot) else None
        read_at: str | None = None  # when this read began, by the service's clock (its first answer's Date)
        pages = 0
        yielded = False
        while True:
            if watermark is None:
                condition = f"{column} ne null"
            elif last_key is not None and len(last_key) == len(source.key):
                condition = after([column, *source.key], [watermark, *last_key], entity.literal)
            else:
                condition = after([column], [watermark], entity.literal)
            if floor is not None:  # the first query re-reads the look-back; later ones go on from its last row
                condition = f"{column} gt {entity.literal(column, floor)} or {condition}"
                floor = None
            options = [*self._select(source, column), ("$filter", condition), ("$orderby", order),
                       ("$top", str(size))]
            data, response = self._get(self._url(source.entity, options), what, f"odata.maxpagesize={size}")
            read_at = read_at or iso_moment(_answered_at(response))
            pages += 1
            rows = data.get("value", [])
            if not rows:
                break
            records = [self._record(source, row) for row in rows]
            last = rows[-1]
            watermark, last_key = last.get(column), [last.get(k) for k in source.key]
            more = len(rows) >= size or bool(data.get("@odata.nextLink"))
            capped = more and pages >= self.max_pages_per_run
            here = {"watermark": watermark, "last_key": last_key} | ({"read_at": read_at} if looks_back else {})
            yield ChangePage(records, here, snapshot=snapshot,
                             notes=notes + ([self._cap_note()] if capped else []), stopped_early=capped)
            notes, yielded = [], True
            if capped or not more:
                return
        if snapshot and not yielded:
            yield ChangePage([], {"watermark": None, "last_key": None}, snapshot=True, notes=notes)

    def _null_watermarks(self, source: SourceSpec, column: str) -> list[str]:
        """A note for rows a watermark read cannot place (``$count`` of those with a null watermark)."""
        what = f"{source.entity}: counting rows without {column}"
        response = self._http.send("GET", self._url(f"{source.entity}/$count", [("$filter", f"{column} eq null")]),
                                   what, {"Accept": "text/plain"})
        text = response.content.decode("utf-8", "replace").strip()
        if response.status_code >= 400 or not text.isdigit():
            return []  # a service without $count: the read goes on, unable to say how many it leaves out
        count = int(text)
        return [f"{count} rows have no {column}: not read (a watermark cannot place them)"] if count else []

    def _read_delta(self, source: SourceSpec, position: dict[str, Any], size: int) -> Iterator[ChangePage]:
        prefer = f"odata.track-changes,odata.maxpagesize={size}"
        link = position.get("next_link") or position.get("delta_link")
        if not link:
            yield from self._baseline(source, prefer, [])
            return
        try:
            yield from self._follow(source, link, prefer, snapshot=False, notes=[])
        except ODataError as err:
            if not 400 <= err.status < 500 or err.status in (401, 403, 408, 413, 429):
                raise sync_error(err, f"{source.entity}: reading changes") from None
            yield from self._baseline(source, prefer, [f"{REBASELINE_NOTE} ({err.text()[:200]})"])

    def _baseline(self, source: SourceSpec, prefer: str, notes: list[str]) -> Iterator[ChangePage]:
        url = self._url(source.entity, self._select(source, source.watermark))
        try:
            yield from self._follow(source, url, prefer, snapshot=True, notes=notes)
        except ODataError as err:
            raise sync_error(err, f"{source.entity}: full change-tracking read") from None

    def _follow(self, source: SourceSpec, url: str, prefer: str, snapshot: bool,
                notes: list[str]) -> Iterator[ChangePage]:
        what = f"{source.entity}: reading changes"
        trail = Trail(what)
        first = True
        while url:
            trail.visit(url)
            data, response = self._http.get_json(url, what, prefer)
            next_link, delta_link = data.get("@odata.nextLink"), data.get("@odata.deltaLink")
            if not next_link and not delta_link:
                raise ConfigError([(f"{source.entity}: the service does not track changes for this entity set "
                                   "(its last page has no delta link); use changes: watermark")])
            read_at = _answered_at(response)
            records: list[SourceRecord] = []
            skipped = 0
            for row in data.get("value", []):
                if not is_deleted(row):
                    records.append(self._record(source, row, None if source.watermark in row
                                                else sortable_version(read_at)))
                elif (key := deleted_key(row, source.key)) is None:
                    skipped += 1
                else:
                    records.append(SourceRecord(key, {}, sortable_version(read_at) + DELETED_SUFFIX, read_at,
                                                deleted=True))
            page_notes = list(notes) if first else []
            if skipped:
                page_notes.append(f"{skipped} removed rows skipped: not deleted (reason changed) or without a key")
            capped = bool(next_link) and len(trail.seen) >= self.max_pages_per_run
            if capped:
                page_notes.append(self._cap_note())
            if next_link:
                position = {"next_link": self._http.resolve(next_link), "delta_link": None}
            else:
                position = {"next_link": None, "delta_link": self._http.resolve(delta_link)}
            yield ChangePage(records, position, snapshot=snapshot, notes=page_notes, stopped_early=capped)
            if capped:
                return
            first = False
            url = self._http.resolve(next_link) if next_link else ""

    def change_time_column(self, source: SourceSpec) -> str | None:
        return source.watermark

    def precision(self, entity: str, field: str) -> ValuePrecision:
        return ValuePrecision(datetime_digits=self.datetime_digits)

    def describe(self, entity: str) -> EntitySchema:
        """The entity set's properties from ``$metadata`` (the document reads and writes are typed by)."""
        sets = self._entity_sets()
        found = sets.get(entity)
        if found is None:
            return EntitySchema(entity, exists=False, known_entities=tuple(sorted(sets)))
        return EntitySchema(entity, exists=True, columns=tuple(
            ColumnInfo(p.name, p.type, nullable=p.nullable, max_length=p.max_length)
            for p in found.properties.values()))

    # -- reading records --------------------------------------------------------------------------

    def read_record(self, source: SourceSpec, key: str) -> SourceRecord | None:
        return self._fetch(source.entity, source.key, [key], self._select(source, source.watermark),
                           source.watermark).get(key)

    def read_records(self, entity: str, key_fields: Sequence[str], keys: Sequence[str]) -> dict[str, SourceRecord]:
        return self._fetch(entity, key_fields, keys, [], None)

    def _fetch(self, entity_name: str, key_fields: Sequence[str], keys: Sequence[str],
               select: list[tuple[str, str]], watermark: str | None) -> dict[str, SourceRecord]:
        if not keys:
            return {}
        # Services that compare text case-insensitively (F&O, Business Central on SQL Server) answer "abc" with
        # the row "ABC": each row goes back to every key that asked for it.
        wanted: dict[str, list[str]] = {}
        for asked in dict.fromkeys(keys):
            wanted.setdefault(asked.casefold(), []).append(asked)
        entity = self._entity(entity_name)
        source = SourceSpec(system=self.name, entity=entity_name, key=list(key_fields),
                            watermark=watermark or _first_moment(entity))
        found: dict[str, SourceRecord] = {}
        what = f"{entity_name}: reading {len(wanted)} records by key"
        for chunk in key_filters(key_fields, list(dict.fromkeys(keys)), entity.literal):
            url: str | None = self._url(entity_name, [*select, ("$filter", chunk)])
            try:
                for page in self._http.pages(url, what):
                    for row in page.get("value", []):
                        record = self._record(source, row, version=_row_version(row, source.watermark))
                        for asked in wanted.get(record.key.casefold(), ()):
                            found[asked] = replace(record, key=asked)
            except ODataError as err:
                raise sync_error(err, what) from None
        return found

    def iter_keys(self, source: SourceSpec) -> Iterator[str]:
        """Every key, read as a keyset over the key properties (like `_read_watermark`), sorted by
        `shared.connectors.keysort.sorted_keys` into code point order (services sort by their collation)."""
        from shared.connectors.keysort import sorted_keys

        return sorted_keys(self._all_keys(source))

    def _all_keys(self, source: SourceSpec) -> Iterator[str]:
        entity = self._entity(source.entity)
        what = f"{source.entity}: listing keys"
        last: list[Any] | None = None
        size = self.page_size
        while True:
            condition = (" and ".join(f"{k} ne null" for k in source.key) if last is None
                         else after(source.key, last, entity.literal))
            options = [("$select", ",".join(source.key)), ("$filter", condition),
                       ("$orderby", ",".join(f"{k} asc" for k in source.key)), ("$top", str(size))]
            data, _ = self._get(self._url(source.entity, options), what, f"odata.maxpagesize={size}")
            rows = data.get("value", [])
            for row in rows:
                yield format_key([row.get(k) for k in source.key])
            if not rows or (len(rows) < size and not data.get("@odata.nextLink")):
                return
            last = [rows[-1].get(k) for k in source.key]

    # -- writing ----------------------------------------------------------------------------------

    def write_batch(self, target: TargetSpec, ops: Sequence[WriteOp]) -> list[WriteResult]:
        ops = list(ops)
        results: list[WriteResult | None] = [None] * len(ops)
        try:
            entity = self._entity(target.entity)
        except SyncError as exc:
            return [WriteResult(op, ok=False, key=_key_text(target, op), error=_as_op_error(exc)) for op in ops]
        waves: list[list[_Item]] = []  # ops on one key keep their order: the n-th op on a key goes in wave n
        seen: dict[str, int] = {}
        for index, op in enumerate(ops):
            key_text = _key_text(target, op)
            try:
                item = self._prepare(entity, target, index, op, key_text)
            except (Unwritable, ValueError) as exc:
                results[index] = WriteResult(op, ok=False, key=key_text, error=PermanentError(
                    Reason.TARGET_REJECTED, f"{target.entity} key {key_text}: {exc}"))
                continue
            wave = seen.get(key_text, 0)
            seen[key_text] = wave + 1
            if wave == len(waves):
                waves.append([])
            waves[wave].append(item)
        for wave in waves:
            todo = wave
            for _ in range(ROUNDS):
                if not todo:
                    break
                todo = self._round(entity, target, todo, results)
            for item in todo:
                error = item.last_error or TransientError(f"{target.entity} key {item.key_text}: not settled")
                results[item.index] = WriteResult(item.op, ok=False, key=item.key_text, error=error)
        return [r for r in results if r is not None]

    def _prepare(self, entity: EntitySet, target: TargetSpec, index: int, op: WriteOp, key_text: str) -> _Item:
        if op.kind not in ("upsert", "update", "delete"):
            raise ValueError(f"unknown write kind {op.kind!r}")
        absent = [k for k in target.key if op.key.get(k) in (None, "")]
        if absent:
            raise ValueError(f"key field(s) {absent} missing")
        key = {k: self._convert(entity, k, op.key[k]) for k in target.key}
        values = {k: self._convert(entity, k, v) for k, v in op.values.items() if k not in target.key}
        if op.kind != "delete":
            json_body(values)  # refuses NaN and what JSON cannot carry before anything is sent
        return _Item(index, op, key_text, key, values)

    @staticmethod
    def _convert(entity: EntitySet, name: str, value: Any) -> Any:
        if "@" in name:
            return value  # an annotation such as Customer@odata.bind: the service reads it, not a property
        prop = entity.properties.get(name)
        if prop is None:
            raise Unwritable(f"{name}: no such property in {entity.name}")
        return convert(prop, value)

    def _round(self, entity: EntitySet, target: TargetSpec, todo: list[_Item],
               results: list[WriteResult | None]) -> list[_Item]:
        """Decide every op from one read of its row, send them, and return the ops to decide again."""
        def done(item: _Item, result: WriteResult) -> None:
            results[item.index] = result

        def failed(item: _Item, error: SyncError) -> None:
            done(item, WriteResult(item.op, ok=False, key=item.key_text, error=error))

        looked_up = [i.key_text for i in todo if i.op.kind != "delete"]
        try:
            existing = self.read_records(target.entity, target.key, looked_up) if looked_up else {}
        except SyncError as exc:
            for item in todo:
                failed(item, _as_op_error(exc))
            return []
        batch = _Round()
        for item in todo:
            request = self._decide(entity, target, item, existing.get(item.key_text), failed)
            if request is not None:
                item.method = request.method
                batch.requests.append(request)
                batch.items.append(item)
        again: list[_Item] = []
        for start in range(0, len(batch.requests), self.batch_size):
            requests = batch.requests[start:start + self.batch_size]
            items = batch.items[start:start + self.batch_size]
            for item, answer in zip(items, self._send_all(target, requests, items), strict=True):
                if isinstance(answer, SyncError):
                    if isinstance(answer, NoAnswer):  # it may have run: the next read says
                        item.last_error = answer
                        again.append(item)
                    else:
                        failed(item, answer)
                    continue
                outcome = self._settle(target, item, answer)
                if isinstance(outcome, WriteResult):
                    done(item, outcome)
                else:
                    again.append(item)
        return again

    def _decide(self, entity: EntitySet, target: TargetSpec, item: _Item, found: SourceRecord | None,
                failed: Any) -> BatchRequest | None:
        op = item.op
        where = f"{target.entity} key {item.key_text}"
        path = key_predicate(target.entity, [(k, entity.literal(k, v)) for k, v in item.key.items()])
        if op.kind == "delete":
            return BatchRequest("DELETE", path, {"If-Match": op.if_match or "*"})
        if found is None:
            if op.if_match or op.if_values is not None:
                failed(item, TargetChanged(Reason.CONFLICT, f"{where}: gone since it was read"))
            elif item.post_failed is not None:
                failed(item, item.post_failed)
            elif op.kind == "update":
                failed(item, PermanentError(Reason.TARGET_REJECTED, f"{where}: not found"))
            else:
                body = json_body({**item.key, **item.values}).encode()
                return BatchRequest("POST", target.entity, {"Content-Type": "application/json"}, body)
            return None
        if op.create_only and not op.if_match:
            failed(item, TargetChanged(Reason.TARGET_REJECTED, f"{where}: already exists"))
            return None
        if op.if_values is not None:
            changed = sorted(k for k, v in op.if_values.items() if found.values.get(k) != v)
            if changed:
                failed(item, TargetChanged(Reason.CONFLICT, f"{where}: changed since it was read ({', '.join(changed)})"))
                return None
        etag = op.if_match or (found.etag if self.etags and found.etag else "*")
        body = json_body(item.values).encode()
        return BatchRequest("PATCH", path, {"Content-Type": "application/json", "If-Match": etag}, body)

    def _send_all(self, target: TargetSpec, requests: list[BatchRequest],
                  items: list[_Item]) -> list[BatchPart | SyncError]:
        """Each request's answer (a part), or the error that kept it from one."""
        with_options = [BatchRequest(r.method, self._url(r.url)[len(self.root):], r.headers, r.body)
                        for r in requests]
        what = f"{target.entity}: $batch of {len(requests)}"
        if len(requests) == 1:
            request = with_options[0]
            what = f"{target.entity} key {items[0].key_text}"
            try:
                response = self._http.send(request.method, self.root + request.url, what, request.headers,
                                           request.body)
            except SyncError as exc:
                return [exc]
            return [BatchPart(response.status_code, {k.lower(): v for k, v in response.headers.items()},
                              response.content, "1")]
        if self.batch_format == "multipart":  # request lines relative to the service root, as CAP needs
            body, content_type = multipart_batch(with_options)
        else:
            body, content_type = json_batch(with_options)
        headers = {"Content-Type": content_type, "Prefer": "odata.continue-on-error",
                   "Accept": "multipart/mixed" if self.batch_format == "multipart" else "application/json"}
        try:
            response = self._http.send("POST", self._url("$batch"), what, headers, body)
        except SyncError as exc:
            return [exc] * len(requests)
        if response.status_code == 413:  # too large as one request: halves, never a refusal of the records
            half = len(requests) // 2
            return (self._send_all(target, requests[:half], items[:half])
                    + self._send_all(target, requests[half:], items[half:]))
        if response.status_code >= 400:
            error = sync_error(error_of(response.status_code, response.headers, response.content), f"{what} refused")
            return [error] * len(requests)
        try:
            answer_type = response.headers.get("content-type", "")
            parts = (parse_batch_response(response.content, answer_type) if "multipart" in answer_type
                     else parse_json_batch(response.content))
        except ValueError as exc:
            return [TransientError(f"{what}: unreadable answer: {exc}")] * len(requests)
        mapped = parts_by_request(parts, len(requests))
        return [part if part is not None else TransientError(f"{what}: no answer for this operation")
                for part in mapped]

    def _settle(self, target: TargetSpec, item: _Item, part: BatchPart) -> WriteResult | None:
        """The op's result, or None to decide it again from a fresh read."""
        op = item.op
        where = f"{target.entity} key {item.key_text}"
        status = part.status
        if 200 <= status < 300:
            return WriteResult(op, ok=True, key=item.key_text, etag=part.headers.get("etag"))
        err = error_of(status, part.headers, part.body)
        if op.kind == "delete":
            if status == 404:
                return WriteResult(op, ok=True, key=item.key_text)  # already gone
            if status == 412 and op.if_match:
                return WriteResult(op, ok=False, key=item.key_text, error=TargetChanged(
                    Reason.CONFLICT, f"{where}: changed since it was read: {err.text()}"))
        elif status in (412, 404) and op.if_match:
            return WriteResult(op, ok=False, key=item.key_text, error=TargetChanged(
                Reason.CONFLICT, f"{where}: changed since it was read: {err.text()}"))
        elif status in (412, 404):
            item.last_error = sync_error(err, where)
            return None  # written or deleted since our read: decide again
        if status == 429:
            self._http.pacer.pause(err.retry_after if err.retry_after is not None else 1.0)
            item.last_error = sync_error(err, where)
            return None
        if item.method == "POST" and item.post_failed is None and status not in (401, 403, 413):
            # A create that failed: perhaps its key was created meanwhile (CAP answers 500, others 409 or 400).
            # The next read says; if the key is still absent this refusal stands.
            item.post_failed = item.last_error = sync_error(err, where)
            return None
        return WriteResult(op, ok=False, key=item.key_text, error=sync_error(err, where))

    # -- the rest ---------------------------------------------------------------------------------

    def acknowledge(self, source: SourceSpec, sent: Sequence[SourceRecord],
                    failed: Sequence[tuple[SourceRecord, str]]) -> None:
        return None

    def close(self) -> None:
        self._http.close()


def _key_text(target: TargetSpec, op: WriteOp) -> str:
    return format_key([op.key.get(k) for k in target.key])


def _as_op_error(exc: SyncError) -> SyncError:
    """A failure of the whole entity set, given to each op: a missing set is the target's refusal."""
    if isinstance(exc, ConfigError):
        return PermanentError(Reason.TARGET_REJECTED, str(exc))
    return exc


def _first_moment(entity: EntitySet) -> str:
    """A DateTimeOffset property to date records read by key (the engine compares change times)."""
    for name in ("modifiedAt", "modified_at", "ModifiedDateTime", "lastModifiedDateTime", "SystemModifiedAt"):
        if name in entity.properties:
            return name
    return next((p.name for p in entity.properties.values() if p.type == "Edm.DateTimeOffset"), "")


def _row_version(row: dict[str, Any], watermark: str) -> str:
    """A row read by key: versioned by its watermark, else its ETag (it sorts only against itself)."""
    when = moment(row.get(watermark)) if watermark else None
    if when is not None:
        return sortable_version(when)
    return str(row.get("@odata.etag") or "")


def _lookback_floor(watermark: Any, read_at: Any, lookback: float) -> datetime | None:
    """Where a read's look-back begins: ``min(position, read_at - lookback)``. A row stamped when its
    transaction began (CAP's ``managed``, F&O's ModifiedDateTime) can commit after newer rows were read, under
    the position; one that committed within the look-back of its stamp is above this floor, and is read.
    Once a read begins more than the look-back after the newest stamp, the floor is the position itself."""
    position = moment(watermark)
    if position is None:
        return None
    began = moment(read_at)
    since = (began if began is not None else position) - timedelta(seconds=lookback)
    return min(position, since)


def _answered_at(response: httpx.Response) -> datetime:
    try:
        when = parsedate_to_datetime(response.headers.get("date", ""))
    except (TypeError, ValueError):
        when = None
    if when is None:
        return datetime.now(UTC)
    return when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)
