"""The Dataverse implementation of the Connector port: the Web API (OData v4, ``/api/data/v9.2/``) over httpx.

Formats follow Microsoft's Dataverse documentation: *Use change tracking to synchronize data with external
systems*, *Execute batch operations using the Web API*, *Use Upsert to Create or Update a record*, *Perform
conditional operations using the Web API*, *Use an alternate key to reference a record*, *Work with
alternate keys*, *Service protection API limits*, *Compose HTTP requests and handle errors* (the ``tag``
shared variable) and *Use optional parameters*.

Reading changes (`SourceSpec.changes`):

- ``change_tracking``: ``GET <set>?$select=...`` with ``Prefer: odata.track-changes,odata.maxpagesize=N,
  odata.include-annotations="Microsoft.Dynamics.CRM.lookuplogicalname"`` (only that annotation: formatted values
  were reported to cost the delta link on the last page, powerapps-docs#439).
  ``@odata.nextLink`` is followed as given, but only inside the organization's Web API (same scheme, host,
  port and ``/api/data/vX/`` path; anything else, from a response or from the cursors table, raises
  UnsafeLinkError before the bearer token is attached); a link that repeats an earlier page is a loop and
  raises too. A run reads at most ``max_pages_per_run`` pages and says so in its notes; the next run
  resumes from the stored link. The ``@odata.deltaLink`` (last page only) is the cursor.
  The position after a page is ``{"next_link": <link>, "delta_link": None}`` while more pages follow and
  ``{"next_link": None, "delta_link": <link>}`` after the last one, so a crash resumes where it stopped.
  A read from no position is a full read: its pages are ``snapshot=True``. A read that resumes from a stored
  next link is not, even if that link belongs to a full read: the engine infers deletes from a snapshot's
  key set, and a resumed read holds only part of it. A delta read with nothing new still yields one empty
  page, so the cursor moves to the fresh delta link (a token left unused ages towards its expiry).
  A full read ends with a catch-up: the delta token comes with the last page, and nothing documented says
  changes made while a long full read ran are in the next delta, so the rows modified since the read began
  (``modifiedon ge`` the first answer's ``Date`` less ``CATCH_UP_MARGIN``) are read again and emitted with the
  last page, less those the read returned at the same version. Until then the position stays on the last page
  (``catch_up_since`` in it), so a crash repeats the catch-up; a read resumed in a later run emits again the
  rows its earlier run saw, which the engine skips by version. A row deleted during the full read after it
  was read is not caught up (``modifiedon`` cannot show a delete): the next full read or reconcile finds it.
  ``$deletedEntity`` rows (``reason: deleted``), and OData's ``{"@odata.id": "accounts(<id>)", "@removed":
  {"reason": "deleted"}}`` form (``@odata.removed`` / ``@id`` too), become ``SourceRecord(deleted=True)``. They
  name the row by its primary id only: a flow keyed by the primary id gets that as the key; a flow keyed by
  an alternate (or composite) key gets key ``""`` and ``source_id`` = the id, and every record it reads carries
  its ``source_id`` too, so the engine can name the delete (``shared.engine.aliases``). A row removed for
  another reason (``reason: changed``) is skipped with a note. A delete's version is the version number of the
  delta token it was read from plus ``~deleted`` (the delete happened after the token, and a record later
  re-created under the same id gets a higher version). An expired delta token (``0x80044352`` "Version stamp
  associated with the client has expired"), or any other client error to a stored link (a token the service
  cannot read; not 401/403/408/413/429), starts a fresh full read at once: its pages are snapshots, with
  the note "delta token expired: re-baselined with a full read" (or "stored link refused: ..." and the error),
  so a flow never stalls on its cursor, and the engine emits every current row
  (unchanged ones are skipped by the version check) and infers the deletes from the key map (each confirmed
  by a re-read, see ``shared.engine.deletes``). A table without change tracking enabled answers a plain
  query: its last page has no delta link, a ConfigError (``Preference-Applied`` is not relied on: Dataverse
  need not echo ``odata.track-changes``).
- ``watermark``: ``$filter=modifiedon gt X or (modifiedon eq X and key gt K)``, ``$orderby=modifiedon
  asc,key asc``, pages by ``@odata.nextLink``; the position is ``{"watermark": ..., "last_key": [...]}``.
  Literals are typed: strings quoted with ``''`` doubling, the primary id as a bare GUID, numbers bare,
  date-times bare ISO 8601. The watermark column is ``source.watermark`` when the flow sets it, else
  ``modifiedon``. Same snapshot rules as the SQL connector (a read from no position is a full read).

Every record: ``key`` = ``shared.keys.key_of(source.key, row)``, ``version`` = ``sortable_version(versionnumber)``
(or the number in ``@odata.etag``), ``changed_at`` = ``modifiedon``; values are the row minus ``@``
annotations (lookups stay ``_x_value`` fields), except ``_x_value@Microsoft.Dynamics.CRM.lookuplogicalname``, the
table a lookup points to (a customer lookup is an account or a contact). Activity tables are keyed by
``activityid`` (``primary_id_of``). ``SourceSpec.select`` sets ``$select`` (key, ``modifiedon``
and ``versionnumber`` are always added); without it every column is read.

Writing (`write_batch`): upsert by key (``PATCH /accounts(accountnumber='A-1')``, the key left out of the
body as *Use Upsert* advises; by ``/accounts(<guid>)`` when the key is the primary id; a lookup column in a key
as a bare GUID, ``(_primarycontactid_value=<guid>)``), ``create_only`` ->
``If-None-Match: *`` (412 -> ``TargetChanged``, reason TargetRejected), kind ``update`` -> ``If-Match: *``
(404 = not found), ``op.if_match`` -> ``If-Match: <etag>`` (412, or 404: the row is gone, -> ``TargetChanged``,
reason Conflict; `Capabilities.conditional_writes = "etag"`: rows read carry their ``@odata.etag`` in
``SourceRecord.etag``), ``delete`` -> ``DELETE`` (404 = already gone = done).
Ops go out in ``$batch`` requests (no change sets: the records do not depend on each other) with ``Prefer:
odata.continue-on-error``; each response part is mapped back to its op by position, so one bad record never
fails its neighbours. A single op is sent as a plain request. Every write carries ``?tag=<tag>`` (the plug-in
shared variable), inside a batch too. Alternate key values containing ``/ < > * % & : \\ ? +`` cannot be
addressed (*Work with alternate keys*): such an op is rejected on its own with that reason.

How much goes at once (``shared.connectors.odata.throttle``; *Service protection API limits*, *Send
parallel requests*): a table's batches start at ``initial_batch_size`` (10, as Microsoft advises) and grow
while they answer in under a twelfth of ``timeout_seconds`` (fourfold under a 96th), up to ``batch_size``
(<= 1000); an answer slower than a sixth of it, a timeout or an execution-time 429 (``0x80072321``) halves
them. Once a table's first batch has answered, batches of one ``write_batch`` go out in parallel (in order
when two ops share a key), as many as the concurrency limit
allows: ``max_concurrency``, lowered to ``x-ms-dop-hint`` and to the requests left in the window
(``x-ms-ratelimit-burst-remaining-xrm-requests``), halved on a 429. No cookie is kept, so the
``ARRAffinity`` cookie is never sent back.

Settling every op inside one ``write_batch`` (at most WRITE_ROUNDS sends each):

- a 429 pauses the whole connector until Retry-After; every request waits for the pause, then one goes
  first and the rest follow once it is answered; the 429'd request is sent again. After
  ``max_throttle_wait_seconds`` of waiting the op fails with TransientError(retry_after).
- no answer (timeout, connection lost after sending): the outcome is unknown, and Dataverse may still be
  running the request. The rows are read back before anything is sent again: a create-only op whose row
  now exists, created since the first unanswered attempt began (createdon, one second of slack), is done,
  not "already exists" (and is not run again); an older row is "already exists". A delete whose row is
  gone is done. Upserts and updates are sent again (same values). A create-only op that meets 412 after an
  unanswered attempt is read back the same way.
- a plain upsert answered 412 lost a race with a concurrent create of its key: sent again as an update
  (``If-Match: *``).
- 413 for a whole batch: the ops go again in batches of half the size (the table's size stays below the
  refused one); a single op that is 413 on its own is rejected (PermanentError).

Errors: 429 after the wait allowed -> TransientError(retry_after=Retry-After seconds); 5xx, timeouts, lost
connections -> TransientError; 400 and other refusals -> ``PermanentError(Reason.TARGET_REJECTED, "<set> key
<k>: <code> <message>")``; 401 -> one token refresh and one retry, then AuthError; 403 -> AuthError. Reads
raise; writes return one result per op (a whole ``$batch`` that fails gives every op that error).

``timeout_seconds`` bounds each request (``shared.connectors.odata.client``). Tokens come from a `TokenProvider`
(``odata.auth``); neither the token nor a secret is ever logged or put in an error message.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import httpx

from shared.config import DataverseSystem, SourceSpec, TargetSpec, resolve_secret
from shared.connectors.odata.auth import TokenProvider, token_provider_for
from shared.connectors.odata.batch import (
    BatchRequest,
    boundary_of,
    multipart_batch,
    parse_batch_response,
    parts_by_request,
)
from shared.connectors.odata.client import BearerCredentials, NoAnswer, ODataClient, Trail
from shared.connectors.odata.faults import ODataError, error_of, sync_error
from shared.connectors.odata.literals import ISO_MOMENT, is_guid, json_body, odata_literal
from shared.connectors.odata.literals import moment as _moment
from shared.connectors.odata.reads import after, is_deleted, key_filters
from shared.connectors.odata.throttle import INITIAL_BATCH, AdaptiveBatchSize
from shared.errors import (
    ConfigError,
    PermanentError,
    Reason,
    SyncError,
    TargetChanged,
    TransientError,
)
from shared.keys import format_key, key_of
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

# Importable from here as before (tests and other modules name them by this module).
__all__ = ["REBASELINE_NOTE", "UNUSABLE_LINK_NOTE", "DataverseConnector", "is_guid", "json_body", "odata_literal",
           "parse_batch_response", "primary_id_of"]

log = logging.getLogger(__name__)

MAX_PAGE_SIZE = 5000  # Dataverse ignores odata.maxpagesize above 5,000
MAX_BATCH = 1000  # operations per $batch
EXPIRED_VERSION_STAMP = "0x80044352"
EXECUTION_TIME_LIMIT = "0x80072321"  # "Service protection API limits": combined execution time exceeded
WRITE_ROUNDS = 12  # attempts per op inside one write_batch (413 halving from 1,000 needs 10)
# createdon has whole seconds and two clocks may differ a little: a row created this long before an attempt
# with an unknown outcome began still counts as that attempt's (an assumption; the docs give no figure).
_CLOCK_SLACK = timedelta(seconds=1)
_EXPIRED_TEXT = "version stamp associated with the client has expired"
REBASELINE_NOTE = "delta token expired: re-baselined with a full read"
UNUSABLE_LINK_NOTE = "stored link refused: re-baselined with a full read"
LOOKUP_LOGICAL_NAME = "Microsoft.Dynamics.CRM.lookuplogicalname"
# Every read asks for the table each lookup points to (a customer is an account or a contact). Only this one
# annotation: formatted values were reported to cost the delta link on the last page (powerapps-docs#439).
_ANNOTATIONS = f'odata.include-annotations="{LOOKUP_LOGICAL_NAME}"'
CATCH_UP_MARGIN = timedelta(seconds=60)  # a full read's start, less this, is where its catch-up begins
# Activity tables (task, email, ...) share activitypointer's primary id: activityid, not <table>id.
ACTIVITY_SETS = frozenset({
    "activitypointers", "appointments", "emails", "faxes", "letters", "phonecalls", "tasks",
    "recurringappointmentmasters", "serviceappointments", "socialactivities", "campaignactivities",
    "campaignresponses", "bulkoperations", "incidentresolutions", "opportunitycloses", "ordercloses", "quotecloses",
    "chats",
})
DELETED_SUFFIX = "~deleted"
UNADDRESSABLE = set("/<>*%&:\\?+")  # "Work with alternate keys": GET/PATCH by such a key value does not work
_ETAG_NUMBER = re.compile(r'^(?:W/)?"(\d+)"$')
_ENTITY_ID = re.compile(r"\(([^()]*)\)\s*$")  # the key in an entity id: accounts(<guid>)
_KEY_SAFE = "(),='"
_READ_HEADERS = {"If-None-Match": "null"}  # never a cached answer
# Lookups are read as `_<name>_value` and written by binding a navigation property, never by their own name.
_LOOKUP_TYPES = {"Lookup", "Customer", "Owner"}
_DEFINITION = [
    ("$select", "LogicalName,EntitySetName"),
    ("$expand", ("Attributes($select=LogicalName,AttributeType,AttributeOf,RequiredLevel,IsValidForRead,"
                 "IsValidForCreate,IsValidForUpdate),"
                 "ManyToOneRelationships($select=ReferencingEntityNavigationPropertyName)")),
]


def _expired(err: ODataError) -> bool:
    """The delta token's version stamp expired (Dataverse's 0x80044352)."""
    return err.code.lower() == EXPIRED_VERSION_STAMP or _EXPIRED_TEXT in err.message.lower()


class _Reject(ValueError):
    """An op refused before it is sent."""


@dataclass
class _Prepared:
    index: int
    op: WriteOp
    key_text: str
    method: str
    path: str  # relative to the service root, query included
    headers: dict[str, str]
    body: bytes | None
    # When an earlier attempt of this op had an unknown outcome (no answer): it may have been committed.
    unknown_since: datetime | None = None
    raced: bool = False  # a plain upsert that lost a race with a create of its key: now sent as an update
    last_error: SyncError | None = None


@dataclass
class _Recheck:
    """An op whose outcome must be read back from Dataverse before it may be sent again."""

    item: _Prepared


_Outcome = WriteResult | _Prepared | _Recheck  # done / send again / read back first


# ---------------------------------------------------------------------------------------------- helpers


_NUMBER_TYPES = frozenset({"Integer", "BigInt", "Decimal", "Double", "Money"})  # EntityDefinitions' AttributeType
_NUMBER = re.compile(r"-?\d+(\.\d+)?")


def _number_literal(value: Any) -> str:
    """A key part of a number column as a bare literal; text that is no number matches no row (ValueError)."""
    text = str(value).strip()
    if not _NUMBER.fullmatch(text):
        raise ValueError(f"{value!r} is not a number")
    return text


def primary_id_of(entity_set: str) -> str:
    """The primary id column Dataverse conventionally gives an entity set (accounts -> accountid; an activity
    table such as tasks -> activityid). A custom activity table is configured with ``primary_ids``."""
    if entity_set.lower() in ACTIVITY_SETS:
        return "activityid"
    name = entity_set
    if name.endswith("ies"):
        base = name[:-3] + "y"
    elif name.endswith(("sses", "xes", "ches", "shes", "zes")):
        base = name[:-2]
    elif name.endswith("s"):
        base = name[:-1]
    else:
        base = name
    return base + "id"


# ---------------------------------------------------------------------------------------------- connector


class DataverseConnector:
    """Connector over one Dataverse organization (its URL, e.g. ``https://contoso.crm.dynamics.com``)."""

    capabilities = Capabilities(
        change_modes=frozenset({"change_tracking", "watermark"}),
        conditional_writes="etag",
        reference_binds=True,
        snapshot_reads=frozenset({"change_tracking", "watermark"}),
        delete_changes=frozenset({"change_tracking"}),
        describes_schema=True,
    )

    @classmethod
    def capabilities_for(cls, system: DataverseSystem) -> Capabilities:
        return cls.capabilities  # every organization's Web API serves the same

    def __init__(
        self,
        url: str,
        token_provider: TokenProvider,
        *,
        name: str = "dataverse",
        api_version: str = "v9.2",
        page_size: int = MAX_PAGE_SIZE,
        batch_size: int = MAX_BATCH,
        max_concurrency: int = 4,
        timeout_seconds: float = 60,
        tag: str | None = "dualsync",
        transport: httpx.BaseTransport | None = None,
        primary_ids: dict[str, str] | None = None,
        max_pages_per_run: int = 2000,
        max_response_bytes: int = 128 * 1024 * 1024,
        initial_batch_size: int = INITIAL_BATCH,
        max_throttle_wait_seconds: float = 30,
    ) -> None:
        self.name = name
        self.url = url.rstrip("/")
        self.api = f"{self.url}/api/data/{api_version}/"
        self._api_path = urlsplit(self.api).path
        self.max_pages_per_run = max_pages_per_run
        self.page_size = max(1, min(page_size, MAX_PAGE_SIZE))
        self.batch_size = max(1, min(batch_size, MAX_BATCH))
        self.timeout_seconds = timeout_seconds
        self.tag = tag
        self._tokens = token_provider
        self._primary_ids = dict(primary_ids or {})
        self._number_columns: dict[str, frozenset[str]] = {}  # entity set -> its number columns (see _numbers)
        self.initial_batch_size = max(1, min(initial_batch_size, self.batch_size))
        self._http = ODataClient(
            self.api, BearerCredentials(token_provider), name=name, timeout_seconds=timeout_seconds,
            max_concurrency=max_concurrency, max_throttle_wait_seconds=max_throttle_wait_seconds,
            max_response_bytes=max_response_bytes, transport=transport,
            throttled_text="throttled by Dataverse (service protection limits)",
        )
        self._slots = self._http.slots
        self._pacer = self._http.pacer
        self._sizers: dict[str, AdaptiveBatchSize] = {}
        self._sizers_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    @classmethod
    def from_config(
        cls,
        name: str,
        system: DataverseSystem,
        *,
        transport: httpx.BaseTransport | None = None,
        token_provider: TokenProvider | None = None,
        msal_http_client: Any = None,
        instance_discovery: bool | None = None,
        primary_ids: dict[str, str] | None = None,
    ) -> DataverseConnector:
        url = resolve_secret(system.url).rstrip("/")
        tokens = token_provider or token_provider_for(
            system.auth, url, http_client=msal_http_client, instance_discovery=instance_discovery
        )
        return cls(
            url, tokens, name=name, api_version=system.api_version, page_size=system.page_size,
            batch_size=system.batch_size, max_concurrency=system.max_concurrency,
            timeout_seconds=system.timeout_seconds, tag=system.tag, transport=transport, primary_ids=primary_ids,
            max_pages_per_run=system.max_pages_per_run, max_response_bytes=system.max_response_mb * 1024 * 1024,
            initial_batch_size=system.initial_batch_size, max_throttle_wait_seconds=system.max_throttle_wait_seconds,
        )

    @property
    def max_response_bytes(self) -> int:
        return self._http.max_response_bytes

    @max_response_bytes.setter
    def max_response_bytes(self, value: int) -> None:
        self._http.max_response_bytes = value

    @property
    def max_throttle_wait_seconds(self) -> float:
        return self._http.max_throttle_wait_seconds

    @max_throttle_wait_seconds.setter
    def max_throttle_wait_seconds(self, value: float) -> None:
        self._http.max_throttle_wait_seconds = value

    def __repr__(self) -> str:
        return f"DataverseConnector(name={self.name!r}, url={self.url!r})"

    # -- plumbing ---------------------------------------------------------------------------------

    def primary_id(self, entity_set: str) -> str:
        return self._primary_ids.get(entity_set) or primary_id_of(entity_set)

    def _send(self, method: str, url: str, what: str, headers: dict[str, str] | None = None,
              content: bytes | None = None, on_throttle: Any = None) -> httpx.Response:
        """One request through the shared OData client (`shared.connectors.odata.client`): bearer token only
        inside the organization's Web API, 429 waited out for all requests at once up to
        ``max_throttle_wait_seconds``, ``x-ms-dop-hint`` followed, one token refresh after a 401."""
        return self._http.send(method, url, what, headers, content, on_throttle)

    def _get_json(self, url: str, what: str, prefer: str | None = None) -> tuple[dict[str, Any], httpx.Response]:
        return self._http.get_json(url, what, prefer, _READ_HEADERS)

    def _query(self, entity: str, options: list[tuple[str, str]]) -> str:
        return self._http.url(entity, options)

    def _select(self, source: SourceSpec, extra: Sequence[str] = ()) -> str | None:
        if source.select is None:
            return None
        names = [*source.select, *source.key, "modifiedon", "versionnumber", *extra]
        return ",".join(dict.fromkeys(names))

    def _record(self, source_key: Sequence[str], entity: str, row: dict[str, Any],
                watermark: str = "modifiedon") -> SourceRecord:
        # Lookups stay `_x_value` fields, with the table they point to beside them when Dataverse says
        # (`_x_value@Microsoft.Dynamics.CRM.lookuplogicalname`); other annotations are dropped.
        values = {k: v for k, v in row.items() if "@" not in k or k.endswith("@" + LOOKUP_LOGICAL_NAME)}
        try:
            key = key_of(source_key, values)
        except KeyError as exc:
            raise ConfigError([f"{entity}: key column {exc.args[0]!r} is not in the rows Dataverse returns"]) from None
        return SourceRecord(key, values, self._version(row), _moment(values.get(watermark))
                            or _moment(values.get("modifiedon")) or datetime.now(UTC), etag=row.get("@odata.etag"))

    @staticmethod
    def _version(row: dict[str, Any]) -> str:
        number = row.get("versionnumber")
        if number is None:
            match = _ETAG_NUMBER.match(str(row.get("@odata.etag", "")))
            number = match.group(1) if match else None
        if number is None:
            raise ConfigError(["dataverse rows carry neither versionnumber nor a numeric @odata.etag"])
        return sortable_version(int(number))

    # -- reading changes --------------------------------------------------------------------------

    def read_changes(
        self, source: SourceSpec, position: dict[str, Any] | None, page_size: int
    ) -> Iterator[ChangePage]:
        size = max(1, min(page_size, self.page_size))
        if source.changes == "change_tracking":
            return self._read_tracked(source, position or {}, size)
        if source.changes == "watermark":
            return self._read_watermark(source, position or {}, size)
        raise ConfigError([(f"{source.entity}: changes {source.changes!r} is not supported by Dataverse "
                            "(use change_tracking or watermark)")])

    def _read_tracked(self, source: SourceSpec, position: dict[str, Any], size: int) -> Iterator[ChangePage]:
        prefer = f"odata.track-changes,odata.maxpagesize={size},{_ANNOTATIONS}"
        link = position.get("next_link") or position.get("delta_link")
        if not link:
            yield from self._baseline(source, prefer, [])
            return
        try:
            yield from self._follow(source, link, prefer, snapshot=False, notes=[],
                                    since=position.get("catch_up_since"))
        except ODataError as err:
            if not self._link_unusable(err):
                raise sync_error(err, f"{source.entity}: reading changes") from None
            note = REBASELINE_NOTE if _expired(err) else f"{UNUSABLE_LINK_NOTE} ({err.text()[:200]})"
            log.info("%s: %s", source.entity, note)
            yield from self._baseline(source, prefer, [note])

    @staticmethod
    def _link_unusable(err: ODataError) -> bool:
        """A stored delta (or next) link the service refuses as a client error cannot be cured by retrying:
        the expired version stamp (0x80044352), a token it cannot read, a table whose tracking was switched
        off and on. Throttling, timeouts, auth and server errors are not about the link."""
        return _expired(err) or (400 <= err.status < 500 and err.status not in (401, 403, 408, 413, 429))

    def _baseline(self, source: SourceSpec, prefer: str, notes: list[str]) -> Iterator[ChangePage]:
        select = self._select(source)
        url = self._query(source.entity, [("$select", select)] if select else [])
        try:
            yield from self._follow(source, url, prefer, snapshot=True, notes=notes, since=None)
        except ODataError as err:
            raise sync_error(err, f"{source.entity}: full change-tracking read") from None

    def _follow(self, source: SourceSpec, url: str, prefer: str, snapshot: bool,
                notes: list[str], since: str | None) -> Iterator[ChangePage]:
        """Pages from ``url`` to the delta link. ``since`` (a full read's start, by the server's clock) is set
        on a full read and carried in its positions: after its last page, what changed since then is read
        again (`_catch_up`), because the delta token comes with the last page and nothing documented says
        the next delta holds the changes made while the full read ran."""
        what = f"{source.entity}: reading changes"
        deleted_version = self._deleted_version(url)
        trail = Trail(what)
        primary = self.primary_id(source.entity)
        by_id = list(source.key) != [primary]  # keyed by an alternate key: deletes carry the other id
        full = snapshot or since is not None
        first = True
        recent: set[tuple[str, str]] = set()  # (key, version) of rows this read saw changed since `since`
        while url:
            trail.visit(url)
            data, response = self._get_json(url, what, prefer)
            if since is None and snapshot:
                since = self._read_started(response)
            next_link = data.get("@odata.nextLink")
            delta_link = data.get("@odata.deltaLink")
            if not next_link and not delta_link:
                # Decided on the last page: Preference-Applied may or may not echo odata.track-changes, but a
                # tracked table always ends its read with a delta link.
                raise ConfigError([(f"{source.entity}: change tracking is not enabled for this table (its last "
                                    "page has no delta link); enable Track changes on the table or use changes: "
                                    "watermark")])
            records: list[SourceRecord] = []
            page_notes = list(notes) if first else []
            skipped = 0
            for row in data.get("value", []):
                if not self._is_deleted(row):
                    record = self._record(source.key, source.entity, row)
                    if by_id:
                        record.source_id = self._primary_value(row, primary)
                    if since is not None and (_moment(row.get("modifiedon")) or datetime.now(UTC)) >= _moment(since):
                        recent.add((record.key, record.version))
                    records.append(record)
                elif (record_id := self._deleted_id(row)) is None:
                    skipped += 1
                else:
                    # A delete names the row by its primary id only: the flow's own key is the engine's to
                    # find (it remembers each record's id as it pulls it) unless the flow is keyed by the id.
                    records.append(SourceRecord("" if by_id else record_id, {}, deleted_version, datetime.now(UTC),
                                                deleted=True, source_id=record_id if by_id else None))
            if skipped:
                page_notes.append(f"{skipped} removed rows skipped: not deleted (reason changed) or without an id")
            capped = bool(next_link) and len(trail.seen) >= self.max_pages_per_run
            if capped:
                page_notes.append(self._cap_note())
            if next_link:
                position = {"next_link": next_link, "delta_link": None}
                if full and since is not None:
                    position["catch_up_since"] = since
                yield ChangePage(records, position, snapshot=snapshot, notes=page_notes, stopped_early=capped)
            elif not full:
                yield ChangePage(records, {"next_link": None, "delta_link": delta_link}, snapshot=snapshot,
                                 notes=page_notes)
            else:
                # Until the catch-up is done the position stays on this page: a crash reads it again.
                here = {"next_link": url, "delta_link": None, "catch_up_since": since}
                records += self._catch_up(source, since, recent, by_id, primary)
                chunks = [records[i:i + self.page_size] for i in range(0, len(records), self.page_size)] or [[]]
                for number, chunk in enumerate(chunks, start=1):
                    done = number == len(chunks)
                    yield ChangePage(chunk, {"next_link": None, "delta_link": delta_link} if done else here,
                                     snapshot=snapshot, notes=page_notes if number == 1 else [])
            if capped:
                return
            first = False
            url = next_link

    @staticmethod
    def _read_started(response: httpx.Response) -> str:
        """When a full read began, by the server's clock (its Date header), less a margin for the time the
        request took: rows modified since then are read again after the last page."""
        try:
            moment = parsedate_to_datetime(response.headers.get("date", ""))
        except (TypeError, ValueError):
            moment = None
        if moment is None:
            moment = datetime.now(UTC)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        start = moment.astimezone(UTC) - CATCH_UP_MARGIN
        return start.replace(microsecond=0).isoformat().replace("+00:00", "Z")

    def _catch_up(self, source: SourceSpec, since: str, recent: set[tuple[str, str]], by_id: bool,
                  primary: str) -> list[SourceRecord]:
        """Rows modified since the full read began (``modifiedon ge since``), less those the read already
        returned at the same version, so nothing is emitted twice."""
        options: list[tuple[str, str]] = []
        select = self._select(source)
        if select:
            options.append(("$select", select))
        options.append(("$filter", f"modifiedon ge {since}"))
        found = []
        for row in self._rows(self._query(source.entity, options), f"{source.entity}: catching up since {since}"):
            record = self._record(source.key, source.entity, row)
            if (record.key, record.version) in recent:
                continue
            if by_id:
                record.source_id = self._primary_value(row, primary)
            found.append(record)
        return found

    def _cap_note(self) -> str:
        return f"page cap of {self.max_pages_per_run} pages per run reached: the next run continues from here"

    @staticmethod
    def _is_deleted(row: dict[str, Any]) -> bool:
        """Dataverse's ``$deletedEntity`` row, or OData's ``@removed`` / ``@odata.removed`` annotation."""
        return is_deleted(row)

    @staticmethod
    def _deleted_id(row: dict[str, Any]) -> str | None:
        """The primary id of a deleted row: ``id``, or the key in ``@odata.id`` / ``@id`` (``accounts(<guid>)``,
        also ``accounts(accountid=<guid>)`` or a full URL). None for a row removed for another reason (OData's
        ``reason: changed``: it left the tracked set but still exists) or without a readable id."""
        removed = row.get("@removed", row.get("@odata.removed"))
        if isinstance(removed, dict) and removed.get("reason", "deleted") != "deleted":
            return None
        if row.get("id"):
            value = str(row["id"])
        else:
            match = _ENTITY_ID.search(str(row.get("@odata.id") or row.get("@id") or ""))
            if match is None:
                return None
            value = unquote(match.group(1)).rpartition("=")[2].strip("'")
        return value.lower() if is_guid(value) else value

    @staticmethod
    def _primary_value(row: dict[str, Any], primary: str) -> str | None:
        value = row.get(primary)
        return str(value).lower() if value is not None else None

    @staticmethod
    def _deleted_version(url: str) -> str:
        """The version for deletes read from a delta link: its token's version number + '~deleted'."""
        token = dict(parse_qsl(urlsplit(url).query)).get("$deltatoken", "")
        number = unquote(token).split("!")[0]
        if number.isdigit():
            return sortable_version(int(number)) + DELETED_SUFFIX
        return DELETED_SUFFIX  # an opaque token: a delete sorts after every version

    def _watermark_column(self, source: SourceSpec) -> str:
        return source.watermark if "watermark" in source.model_fields_set else "modifiedon"

    def change_time_column(self, source: SourceSpec) -> str | None:
        return self._watermark_column(source)

    def describe(self, entity: str) -> EntitySchema:
        """The table's attributes from its definition (`EntityDefinitions`, found by entity set name), named as
        rows carry them: a lookup `x` as `_x_value`, bound on writes through its navigation properties. Read
        afresh each time (one request; a check runs once per flow), so a column added in Dataverse is seen."""
        what = f"{self.name}: reading the definition of {entity}"
        options = [("$filter", f"EntitySetName eq {odata_literal(entity)}"), *_DEFINITION]
        try:
            found = self._get_json(self._query("EntityDefinitions", options), what)[0].get("value") or []
            if not found:
                listed = self._get_json(self._query("EntityDefinitions", [("$select", "EntitySetName")]), what)[0]
                names = sorted(d["EntitySetName"] for d in listed.get("value", []) if d.get("EntitySetName"))
                return EntitySchema(entity, exists=False, known_entities=tuple(names))
        except ODataError as err:
            raise sync_error(err, what) from None
        definition = found[0]
        columns = []
        for attr in definition.get("Attributes") or []:
            if attr.get("AttributeOf"):  # a lookup's name or type companion: not a property of its own
                continue
            lookup = attr.get("AttributeType") in _LOOKUP_TYPES
            name = f"_{attr['LogicalName']}_value" if lookup else attr["LogicalName"]
            required = (attr.get("RequiredLevel") or {}).get("Value") == "SystemRequired"
            columns.append(ColumnInfo(
                name, str(attr.get("AttributeType")), nullable=not required, max_length=attr.get("MaxLength"),
                readable=attr.get("IsValidForRead", True) is not False,
                writable=not lookup and bool(attr.get("IsValidForCreate", True) or attr.get("IsValidForUpdate", True))))
        bindings = sorted({r["ReferencingEntityNavigationPropertyName"]
                           for r in definition.get("ManyToOneRelationships") or []
                           if r.get("ReferencingEntityNavigationPropertyName")})
        return EntitySchema(entity, exists=True, columns=tuple(columns), bindings=tuple(bindings))

    def precision(self, entity: str, field: str) -> ValuePrecision:
        return ValuePrecision(datetime_digits=0)  # Dataverse keeps date-times to the second

    def _read_watermark(self, source: SourceSpec, position: dict[str, Any], size: int) -> Iterator[ChangePage]:
        column = self._watermark_column(source)
        watermark, last_key = position.get("watermark"), position.get("last_key")
        snapshot = watermark is None
        options: list[tuple[str, str]] = []
        select = self._select(source, [column])
        if select:
            options.append(("$select", select))
        if not snapshot:
            options.append(("$filter", self._after(source.entity, column, watermark, source.key, last_key or [])))
        options.append(("$orderby", ",".join(f"{c} asc" for c in dict.fromkeys([column, *source.key]))))
        url: str | None = self._query(source.entity, options)
        prefer = f"odata.maxpagesize={size},{_ANNOTATIONS}"
        what = f"{source.entity}: reading changes since {watermark}" if watermark else f"{source.entity}: full read"
        yielded = False
        trail = Trail(what)
        while url:
            trail.visit(url)
            try:
                data, _ = self._get_json(url, what, prefer)
            except ODataError as err:
                raise sync_error(err, what) from None
            rows = data.get("value", [])
            url = data.get("@odata.nextLink")
            if not rows:
                continue
            records = [self._record(source.key, source.entity, row, column) for row in rows]
            last = rows[-1]
            capped = bool(url) and len(trail.seen) >= self.max_pages_per_run
            yield ChangePage(records, {"watermark": last.get(column), "last_key": [last.get(k) for k in source.key]},
                             snapshot=snapshot, notes=[self._cap_note()] if capped else [], stopped_early=capped)
            if capped:
                return
            yielded = True
        if snapshot and not yielded:
            yield ChangePage([], {"watermark": None, "last_key": None}, snapshot=True)

    def _after(self, entity: str, column: str, watermark: Any, key: Sequence[str], last_key: Sequence[Any]) -> str:
        """(column, key...) > (watermark, last_key...) as OData: c > w or (c eq w and k1 gt v1) or ..."""
        values = [watermark, *last_key] if len(last_key) == len(key) else [watermark]
        primary = self.primary_id(entity)
        return after([column, *key][:len(values)], values,
                     lambda c, v: self._filter_literal(c, v, primary, moment=(c == column)))

    @staticmethod
    def _filter_literal(column: str, value: Any, primary: str, moment: bool = False) -> str:
        if isinstance(value, str) and (column == primary or (column.startswith("_") and column.endswith("_value"))):
            return odata_literal(value, guid=True)
        if isinstance(value, str) and moment and ISO_MOMENT.match(value):
            return value  # a date-time (the watermark as Dataverse returned it) is a bare literal
        return odata_literal(value)

    # -- reading records --------------------------------------------------------------------------

    def read_record(self, source: SourceSpec, key: str) -> SourceRecord | None:
        found = self._fetch(source.entity, source.key, [key], self._select(source))
        return found.get(key)

    def read_records(self, entity: str, key_fields: Sequence[str], keys: Sequence[str]) -> dict[str, SourceRecord]:
        return self._fetch(entity, key_fields, keys, None)

    def _fetch(self, entity: str, key_fields: Sequence[str], keys: Sequence[str],
               select: str | None) -> dict[str, SourceRecord]:
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return {}
        primary = self.primary_id(entity)
        by_fold: dict[str, list[str]] = {}
        for k in wanted:
            by_fold.setdefault(k.casefold(), []).append(k)
        found: dict[str, SourceRecord] = {}
        what = f"{entity}: reading {len(wanted)} records by key"
        alternate = any(f != primary and not (f.startswith("_") and f.endswith("_value")) for f in key_fields)
        numbers = self._numbers(entity) if alternate else frozenset()

        def literal(column: str, value: Any) -> str:
            return _number_literal(value) if column in numbers else self._filter_literal(column, value, primary)

        for chunk in key_filters(key_fields, wanted, literal):
            options = [("$filter", chunk)]
            if select:
                options.insert(0, ("$select", select))
            for row in self._rows(self._query(entity, options), what):
                record = self._record(key_fields, entity, row)
                # Dataverse compares text case-insensitively: map a row back to the keys that asked for it.
                for asked in by_fold.get(record.key.casefold(), ()):
                    found[asked] = SourceRecord(asked, record.values, record.version, record.changed_at,
                                                etag=record.etag)
        return found

    def _numbers(self, entity: str) -> frozenset[str]:
        """The entity's number columns, from its definition (read once per entity): a formatted key is text, and
        an alternate key on a whole-number column compared with a quoted literal is refused (0x80060888)."""
        known = self._number_columns.get(entity)
        if known is None:
            known = frozenset(c.name for c in self.describe(entity).columns if c.type in _NUMBER_TYPES)
            self._number_columns[entity] = known
        return known

    def _rows(self, url: str | None, what: str) -> Iterator[dict[str, Any]]:
        """Every row of a query, following @odata.nextLink page by page."""
        try:
            for page in self._http.pages(url, what, f"odata.maxpagesize={MAX_PAGE_SIZE},{_ANNOTATIONS}",
                                         _READ_HEADERS):
                yield from page.get("value", [])
        except ODataError as err:
            raise sync_error(err, what) from None

    def iter_keys(self, source: SourceSpec) -> Iterator[str]:
        """Every key of the entity in Python string order: ``$select`` of the key columns only, rows whose
        key is (partly) null left out (they cannot be addressed by that key), pages of 5,000 streamed into
        `shared.connectors.keysort.sorted_keys` (Dataverse orders GUIDs as SQL Server does, and text by its
        collation, neither of which is code point order, so the sort is always ours)."""
        from shared.connectors.keysort import sorted_keys

        return sorted_keys(self._all_keys(source))

    def _all_keys(self, source: SourceSpec) -> Iterator[str]:
        not_null = " and ".join(f"{k} ne null" for k in source.key)
        url = self._query(source.entity, [("$select", ",".join(source.key)), ("$filter", not_null)])
        for row in self._rows(url, f"{source.entity}: listing keys"):
            values = [row.get(k) for k in source.key]
            if None not in values:
                yield format_key(values)

    # -- writing ----------------------------------------------------------------------------------

    def write_batch(self, target: TargetSpec, ops: Sequence[WriteOp]) -> list[WriteResult]:
        ops = list(ops)
        results: list[WriteResult | None] = [None] * len(ops)
        prepared: list[_Prepared] = []
        for index, op in enumerate(ops):
            try:
                prepared.append(self._prepare(target, index, op))
            except _Reject as exc:
                results[index] = WriteResult(op, ok=False, key=self._op_key(target, op), error=PermanentError(
                    Reason.TARGET_REJECTED, f"{target.entity} key {self._op_key(target, op)}: {exc}"))
        todo = prepared
        for _ in range(WRITE_ROUNDS):
            if not todo:
                break
            todo = self._write_round(target, todo, results)
        for item in todo:
            error = item.last_error or TransientError(f"{target.entity} key {item.key_text}: not written")
            results[item.index] = WriteResult(item.op, ok=False, key=item.key_text, error=error)
        return [r for r in results if r is not None]

    def _sizer(self, entity: str) -> AdaptiveBatchSize:
        with self._sizers_lock:
            if entity not in self._sizers:
                # A batch should answer well inside the timeout (and the execution time limit).
                self._sizers[entity] = AdaptiveBatchSize(self.batch_size, self.initial_batch_size,
                                                         target_seconds=self.timeout_seconds / 6)
            return self._sizers[entity]

    def _write_round(self, target: TargetSpec, todo: list[_Prepared],
                     results: list[WriteResult | None]) -> list[_Prepared]:
        """Send every op once, in batches cut to the table's current size, as many in flight as the
        concurrency limit allows (one at a time when two ops share a key: their order matters). Returns the
        ops to send again."""
        sizer = self._sizer(target.entity)
        pending = deque(todo)
        parallel = len({item.key_text for item in todo}) == len(todo)
        again: list[_Prepared] = []
        recheck: list[_Prepared] = []
        running: set[Future[list[tuple[_Prepared, _Outcome]]]] = set()
        while pending or running:
            while pending and len(running) < (self._slots.limit if parallel and sizer.measured else 1):
                chunk = [pending.popleft() for _ in range(min(sizer.size, len(pending)))]
                running.add(self._executor().submit(self._run, target, chunk))
            finished, running = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                for item, outcome in future.result():
                    if isinstance(outcome, WriteResult):
                        results[item.index] = outcome
                    elif isinstance(outcome, _Recheck):
                        recheck.append(outcome.item)
                    else:
                        again.append(outcome)
        for item, outcome in self._read_back(target, recheck):
            if isinstance(outcome, WriteResult):
                results[item.index] = outcome
            else:
                again.append(outcome if isinstance(outcome, _Prepared) else outcome.item)
        again.sort(key=lambda item: item.index)
        return again

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            with self._sizers_lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self._slots.ceiling, thread_name_prefix=f"{self.name}-write")
        return self._pool

    def _read_back(self, target: TargetSpec, items: list[_Prepared]) -> list[tuple[_Prepared, _Outcome]]:
        """Ops that may have run although no answer said so: look at the rows before sending any again.

        A create-only op whose row now exists, created since the first unanswered attempt began, was ours:
        done (running it again would fail as "already exists", and an update would run the plug-ins twice). A
        row older than that existed before: "already exists" stands. A delete whose row is gone is done. Any
        other op is sent again: an upsert or update writes the same values twice, which is harmless."""
        if not items:
            return []
        try:
            rows = self.read_records(target.entity, target.key, [item.key_text for item in items])
        except SyncError as exc:
            error = TransientError(f"{target.entity}: outcome unknown and the rows could not be read back: {exc}")
            return [(item, WriteResult(item.op, ok=False, key=item.key_text, error=error)) for item in items]
        out: list[tuple[_Prepared, _Outcome]] = []
        for item in items:
            found = rows.get(item.key_text)
            op = item.op
            if op.kind == "delete":
                done = found is None
            elif op.create_only and not op.if_match and found is not None:
                created = _moment(found.values.get("createdon"))
                since = item.unknown_since or datetime.now(UTC)
                if created is not None and created >= since.replace(microsecond=0) - _CLOCK_SLACK:
                    done = True
                else:
                    where = f"{target.entity} key {item.key_text}"
                    out.append((item, WriteResult(op, ok=False, key=item.key_text, error=TargetChanged(
                        Reason.TARGET_REJECTED, f"{where}: already exists (created before this write)"))))
                    continue
            else:
                done = False
            if done:
                out.append((item, WriteResult(op, ok=True, key=item.key_text, etag=found.etag if found else None)))
            else:
                out.append((item, item))
        return out

    @staticmethod
    def _op_key(target: TargetSpec, op: WriteOp) -> str:
        return format_key([op.key.get(k) for k in target.key])

    def _address(self, entity: str, key_fields: Sequence[str], key: dict[str, Any]) -> str:
        """``accounts(<guid>)`` or ``accounts(accountnumber='A-1')``, percent-encoded for a URL path."""
        primary = self.primary_id(entity)
        if list(key_fields) == [primary]:
            value = key[primary]
            if not is_guid(str(value)):
                raise _Reject(f"{primary} {value!r} is not a GUID")
            return f"{entity}({str(value).lower()})"
        parts = []
        for name in key_fields:
            value = key[name]
            if isinstance(value, str):
                bad = sorted(set(value) & UNADDRESSABLE)
                if bad:
                    raise _Reject(f"alternate key value {value!r} contains {' '.join(bad)}, which Dataverse cannot "
                                  "address by key (see 'Work with alternate keys')")
            lookup = name.startswith("_") and name.endswith("_value")
            if lookup and not is_guid(str(value)):
                raise _Reject(f"{name} {value!r} is not a GUID")
            # A lookup column in an alternate key is a bare GUID (_primarycontactid_value=<guid>), never quoted.
            parts.append(f"{name}={odata_literal(value, guid=lookup)}")
        return quote(f"{entity}({','.join(parts)})", safe=_KEY_SAFE)

    def _prepare(self, target: TargetSpec, index: int, op: WriteOp) -> _Prepared:
        if op.kind not in ("upsert", "update", "delete"):
            raise _Reject(f"unknown write kind {op.kind!r}")
        absent = [k for k in target.key if op.key.get(k) in (None, "")]
        if absent:
            raise _Reject(f"key field(s) {absent} missing")
        path = self._address(target.entity, target.key, op.key)
        if self.tag:
            path += f"?tag={quote(self.tag, safe='')}"
        headers: dict[str, str] = {}
        body: bytes | None = None
        if op.kind == "delete":
            method = "DELETE"
            if op.if_match:
                headers["If-Match"] = op.if_match
        else:
            method = "PATCH"
            headers["Content-Type"] = "application/json"
            if op.kind == "update":
                headers["If-Match"] = op.if_match or "*"
            elif op.if_match:
                headers["If-Match"] = op.if_match
            elif op.create_only:
                headers["If-None-Match"] = "*"
            # The key is in the URL; Dataverse advises leaving it out of the body ("Use Upsert").
            payload = {k: v for k, v in op.values.items() if k not in target.key}
            try:
                body = json_body(payload).encode()
            except (TypeError, ValueError) as exc:
                raise _Reject(str(exc)) from None
        return _Prepared(index, op, self._op_key(target, op), method, path, headers, body)

    def _run(self, target: TargetSpec, chunk: Sequence[_Prepared]) -> list[tuple[_Prepared, _Outcome]]:
        if len(chunk) == 1:
            item = chunk[0]
            what = f"{target.entity} key {item.key_text}"
            started = datetime.now(UTC)
            try:
                response = self._send(item.method, self.api + item.path, what, item.headers, item.body)
            except NoAnswer as exc:
                return [(item, self._unknown(item, exc, started))]
            except SyncError as exc:
                return [(item, WriteResult(item.op, ok=False, key=item.key_text, error=exc))]
            if response.status_code == 413:  # too large on its own: no smaller request can carry it
                error = PermanentError(Reason.TARGET_REJECTED, f"{what}: 413 the record is larger than Dataverse "
                                                               "accepts in one request")
                return [(item, WriteResult(item.op, ok=False, key=item.key_text, error=error))]
            return [(item, self._settle(target, item, response.status_code, response.headers, response.content))]
        return self._run_batch(target, chunk)

    @staticmethod
    def _unknown(item: _Prepared, exc: SyncError, started: datetime) -> _Recheck:
        return _Recheck(replace(item, unknown_since=item.unknown_since or started, last_error=exc))

    def _run_batch(self, target: TargetSpec, chunk: Sequence[_Prepared]) -> list[tuple[_Prepared, _Outcome]]:
        boundary = f"batch_{uuid.uuid4()}"
        body = self._batch_body(chunk, boundary)
        what = f"{target.entity}: $batch of {len(chunk)}"
        headers = {
            "Content-Type": f'multipart/mixed; boundary="{boundary}"',
            "Prefer": "odata.continue-on-error",
            "If-None-Match": "null",
        }
        sizer = self._sizer(target.entity)

        def throttled(err: ODataError) -> None:
            if err.code.lower() == EXECUTION_TIME_LIMIT:
                sizer.slow_down(len(chunk))

        def everyone(error: SyncError) -> list[tuple[_Prepared, _Outcome]]:
            return [(item, WriteResult(item.op, ok=False, key=item.key_text, error=error)) for item in chunk]

        started, clock = datetime.now(UTC), time.monotonic()
        try:
            response = self._send("POST", self.api + "$batch", what, headers, body, on_throttle=throttled)
        except NoAnswer as exc:
            sizer.slow_down(len(chunk))
            return [(item, self._unknown(item, exc, started)) for item in chunk]
        except SyncError as exc:
            return everyone(exc)
        if response.status_code == 413:  # the whole request is too large: smaller batches, never a dead letter
            sizer.too_large(len(chunk))
            error = TransientError(f"{what}: 413 request too large")
            return [(item, replace(item, last_error=error)) for item in chunk]
        content_type = response.headers.get("content-type", "")
        if boundary_of(content_type) is not None:
            sizer.answered(len(chunk), time.monotonic() - clock)  # a batch that ran: its time says how big
        else:
            err = error_of(response.status_code, response.headers, response.content)
            if response.status_code < 400:
                return everyone(TransientError(f"{what}: the answer is not multipart/mixed"))
            return everyone(sync_error(err, f"{what} refused"))
        try:
            parts = parse_batch_response(response.content, content_type)
        except ValueError as exc:
            return everyone(TransientError(f"{what}: unreadable answer: {exc}"))
        results: list[tuple[_Prepared, _Outcome]] = []
        for item, part in zip(chunk, parts_by_request(parts, len(chunk)), strict=True):
            if part is None:  # the batch stopped before this op: it was not run
                results.append((item, WriteResult(item.op, ok=False, key=item.key_text,
                                                  error=TransientError(f"{what}: no answer for this operation"))))
            else:
                results.append((item, self._settle(target, item, part.status, part.headers, part.body)))
        return results

    def _settle(self, target: TargetSpec, item: _Prepared, status: int, headers: Any, body: bytes) -> _Outcome:
        """An answer that settles the op, or the op to send again (changed), or to read back first."""
        op = item.op
        plain_upsert = op.kind == "upsert" and not op.create_only and not op.if_match
        if status == 412 and plain_upsert and not item.raced:
            # The upsert found no row, and a concurrent create of the same key won the race: it is an update.
            return replace(item, raced=True, headers={**item.headers, "If-Match": "*"},
                           last_error=self._result(target, item, status, headers, body).error)
        if status == 404 and item.raced:  # the row that won the race is gone again: back to a plain upsert
            return replace(item, raced=False, headers={k: v for k, v in item.headers.items() if k != "If-Match"},
                           last_error=self._result(target, item, status, headers, body).error)
        if status == 412 and op.create_only and item.unknown_since is not None:
            return _Recheck(item)  # perhaps our own earlier attempt created it
        if status == 429:  # a throttled operation inside a batch: the pause is the connector's
            err = error_of(status, headers, body)
            self._pacer.pause(err.retry_after if err.retry_after is not None else 1.0)
        return self._result(target, item, status, headers, body)

    def _batch_body(self, chunk: Sequence[_Prepared], boundary: str) -> bytes:
        requests = [BatchRequest(item.method, f"{self._api_path}{item.path}", item.headers, item.body)
                    for item in chunk]
        return multipart_batch(requests, boundary)[0]

    def _result(self, target: TargetSpec, item: _Prepared, status: int, headers: Any, body: bytes) -> WriteResult:
        op = item.op
        if 200 <= status < 300:
            return WriteResult(op, ok=True, key=item.key_text, etag=headers.get("etag") if headers else None)
        if status == 404 and op.kind == "delete":
            return WriteResult(op, ok=True, key=item.key_text)  # already gone
        err = error_of(status, headers, body)
        where = f"{target.entity} key {item.key_text}"
        error: SyncError
        if status in (412, 404) and op.if_match and op.if_match != "*" and op.kind != "delete":
            error = TargetChanged(Reason.CONFLICT, f"{where}: changed since it was read: {err.text()}")
        elif status == 412 and op.create_only:
            error = TargetChanged(Reason.TARGET_REJECTED, f"{where}: already exists: {err.text()}")
        elif status == 404 and op.kind == "update":
            error = PermanentError(Reason.TARGET_REJECTED, f"{where}: not found: {err.text()}")
        else:
            error = sync_error(err, where)
        return WriteResult(op, ok=False, key=item.key_text, error=error)

    # -- the rest ---------------------------------------------------------------------------------

    def acknowledge(
        self, source: SourceSpec, sent: Sequence[SourceRecord], failed: Sequence[tuple[SourceRecord, str]]
    ) -> None:
        return None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._http.close()
