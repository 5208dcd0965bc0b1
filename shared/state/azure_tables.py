"""Table port over Azure Table Storage (azure-data-tables).

Tables
    `{prefix}{table}`, e.g. `dualsynccursors` (prefix from STATE_TABLE_PREFIX; Table names are
    alphanumeric, 3-63 characters, starting with a letter). Each is created on first use
    (`create_table`, ResourceExistsError ignored) and remembered for the life of the process.

Writes
    `insert` is `create_entity` and `update` is `update_entity(REPLACE, etag, IfNotModified)`: a lost race
    is a ConcurrencyError, never a silent overwrite. Only `upsert_many` writes unconditionally, in entity
    group transactions of at most 100 operations on one partition (one operation per row: the last write
    of a row in the batch wins).

Keys (`encode_key` / `decode_key`)
    Table keys may not contain `/ \\ # ?` or control characters (U+0000-U+001F, U+007F-U+009F), and `%`
    and `'` in keys break some operations (URL-addressed updates and deletes, batches), on Azure and on
    Azurite. A plain `%2F`-style escape would not keep the order of keys (`"A%2F"` sorts before `"A-"`
    although `"A/"` sorts after it), and the state store relies on that order (`linked_keys` streams
    keys in key order; prefix scans are `ge`/`lt` ranges). So the escape is order-preserving:

    * the escaped characters form six contiguous ranges, each around the characters that must go;
    * an escaped character becomes three characters: the lead of its range (itself an allowed character
      inside the range) followed by two upper-case hex digits of its code point;
    * every other character stands for itself.

        range             lead     examples
        U+0000-U+0020     " "      "\\n" -> " 0A", " " -> " 20"
        U+0023-U+0027     "$"      "#" -> "$23", "$" -> "$24", "%" -> "$25", "&" -> "$26", "'" -> "$27"
        U+002E-U+002F     "."      "." -> ".2E", "/" -> ".2F"
        U+003E-U+003F     ">"      ">" -> ">3E", "?" -> ">3F"
        U+005B-U+005C     "["      "[" -> "[5B", "\\" -> "[5C"
        U+007F-U+00A0     U+00A0   DEL -> "\\xa07F", U+00A0 -> "\\xa0A0"

    Because every code starts with a character that sorts exactly where the escaped character would (no
    unescaped character lies between them) and codes are prefix-free, `a < b` iff
    `encode_key(a) < encode_key(b)`, and `b` starts with `a` iff `encode_key(b)` starts with
    `encode_key(a)`; so a raw-prefix scan is the encoded range `[encode(p), successor(encode(p)))`.
    (Exact for keys in the Basic Multilingual Plane: the service orders by UTF-16 code units, Python by
    code points, which differ only between U+E000-U+FFFF and characters above U+FFFF.)
    An encoded key may be at most 512 UTF-16 code units (1 KiB); a longer one raises KeyTooLongError.

Values
    str, float, bool and int32 are native properties; ints outside int32 but inside int64 are
    `EntityProperty(value, EdmType.INT64)` (read back as int); dict, list and ints beyond int64 are JSON
    text in a string property whose name is listed in the `_json` property (a JSON array of names);
    None is not stored (Table Storage has no null) and its name is listed in the `_null` property.
    `_json`, `_null`, PartitionKey, RowKey, Timestamp and ETag are therefore not allowed as value names.
    A string property (including JSON text) longer than 32 Ki UTF-16 code units raises
    ValueTooLargeError naming table, keys and property, instead of a 400 from the service.
"""

from __future__ import annotations

import json
import re
import threading
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.data.tables import (
    EdmType,
    EntityProperty,
    TableClient,
    TableServiceClient,
    TableTransactionError,
    UpdateMode,
)

from shared.errors import ConcurrencyError, ConfigError
from shared.ports.tables import Entity, GuardedRow, Row
from shared.settings import setting

# -- key encoding --------------------------------------------------------------------------------

# (first, last, lead): every character in first..last is written as lead + two hex digits.
_ESCAPE_RANGES: tuple[tuple[int, int, str], ...] = (
    (0x00, 0x20, " "),
    (0x23, 0x27, "$"),
    (0x2E, 0x2F, "."),
    (0x3E, 0x3F, ">"),
    (0x5B, 0x5C, "["),
    (0x7F, 0xA0, "\u00a0"),
)
_ESCAPES: dict[str, str] = {
    chr(code): f"{lead}{code:02X}" for first, last, lead in _ESCAPE_RANGES for code in range(first, last + 1)
}
_LEADS = frozenset(lead for _, _, lead in _ESCAPE_RANGES)
_LEAD_RANGE = {lead: (first, last) for first, last, lead in _ESCAPE_RANGES}
_ENCODE_TABLE = str.maketrans(_ESCAPES)
_HEX2 = re.compile(r"[0-9A-F]{2}")

MAX_KEY_UTF16_UNITS = 512  # 1 KiB
MAX_STRING_UTF16_UNITS = 32 * 1024  # 64 KiB
MAX_CUSTOM_PROPERTIES = 252  # 255 minus PartitionKey, RowKey, Timestamp
MAX_BATCH_OPERATIONS = 100
MAX_BATCH_BYTES = 3 * 1024 * 1024  # the service takes 4 MiB per transaction; leave room for the envelope
MAX_FILTER_COMPARISONS = 15  # "no more than 15 discrete comparisons are permitted within a $filter string"
_RK_PER_QUERY = MAX_FILTER_COMPARISONS - 1  # one comparison is PartitionKey eq @pk

JSON_MARKER = "_json"
NULL_MARKER = "_null"
_RESERVED = frozenset({"PartitionKey", "RowKey", "Timestamp", "ETag", JSON_MARKER, NULL_MARKER})
_PROPERTY_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")
_TABLE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]{2,62}")
_INT32 = range(-(2**31), 2**31)
_INT64 = range(-(2**63), 2**63)
# What a transaction answers when one operation's condition fails (Azure and Azurite).
_CONDITION_FAILED = frozenset({"EntityAlreadyExists", "UpdateConditionNotSatisfied", "ResourceNotFound",
                               "EntityNotFound"})


class KeyTooLongError(ValueError):
    """An encoded PartitionKey or RowKey is longer than Table Storage allows (1 KiB)."""


class ValueTooLargeError(ValueError):
    """A value does not fit a Table Storage property (or an entity has too many properties)."""


def _utf16_units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def encode_key(key: str) -> str:
    """Raw key -> Table key (order- and prefix-preserving, see the module docstring)."""
    if not isinstance(key, str):
        raise TypeError(f"table keys are strings, got {type(key).__name__}")
    return key.translate(_ENCODE_TABLE)


def decode_key(encoded: str) -> str:
    """Table key -> raw key; the inverse of `encode_key` (rejects anything it could not have produced)."""
    out: list[str] = []
    i, n = 0, len(encoded)
    while i < n:
        char = encoded[i]
        if char in _LEADS:
            digits = encoded[i + 1 : i + 3]
            if not _HEX2.fullmatch(digits):
                raise ValueError(f"malformed escape at {i} in table key {encoded!r}")
            code = int(digits, 16)
            first, last = _LEAD_RANGE[char]
            if not first <= code <= last:
                raise ValueError(f"escape {char + digits!r} at {i} in table key {encoded!r} is out of its range")
            out.append(chr(code))
            i += 3
        elif char in _ESCAPES:
            raise ValueError(f"unescaped character {char!r} at {i} in table key {encoded!r}")
        else:
            out.append(char)
            i += 1
    return "".join(out)


def _successor(prefix: str) -> str | None:
    """The least string greater than every string starting with `prefix`, or None if it is not safe to send."""
    if not prefix:
        return None
    nxt = ord(prefix[-1]) + 1
    if 0xD800 <= nxt <= 0xDFFF or nxt > 0xFFFF:  # surrogates, or a UTF-16 pair that sorts differently
        return None
    return prefix[:-1] + chr(nxt)


def key_range(raw_prefix: str) -> tuple[str, str | None]:
    """Encoded [lo, hi) holding exactly the encoded keys whose raw key starts with `raw_prefix`."""
    lo = encode_key(raw_prefix)
    return lo, _successor(lo)


# -- values --------------------------------------------------------------------------------------


def _where(table: str, pk: str, rk: str) -> str:
    return f"table {table!r}, PartitionKey {pk!r}, RowKey {rk!r}"


def _checked_key(kind: str, key: str, table: str, pk: str, rk: str) -> str:
    encoded = encode_key(key)
    if _utf16_units(encoded) > MAX_KEY_UTF16_UNITS:
        raise KeyTooLongError(
            f"{kind} too long for Table Storage ({_where(table, pk, rk)}): "
            f"{_utf16_units(encoded)} UTF-16 code units encoded, at most {MAX_KEY_UTF16_UNITS}"
        )
    return encoded


def to_entity(table: str, pk: str, rk: str, data: dict[str, Any]) -> dict[str, Any]:
    """Port values -> a Table entity (keys encoded, markers set)."""
    entity: dict[str, Any] = {
        "PartitionKey": _checked_key("PartitionKey", pk, table, pk, rk),
        "RowKey": _checked_key("RowKey", rk, table, pk, rk),
    }
    json_names: list[str] = []
    null_names: list[str] = []
    for name, value in data.items():
        if not isinstance(name, str) or not _PROPERTY_NAME.fullmatch(name) or name in _RESERVED:
            raise ValueError(
                f"property name {name!r} cannot be stored in Table Storage ({_where(table, pk, rk)}): "
                f"use an identifier of at most 255 characters other than {sorted(_RESERVED)}"
            )
        if value is None:
            null_names.append(name)
            continue
        # Subclasses (StrEnum, IntEnum, ...) are stored as their plain value, as json.dumps would.
        if isinstance(value, bool):
            stored: Any = bool(value)
        elif isinstance(value, str):
            stored = str.__str__(value)
        elif isinstance(value, float):
            stored = float(value)
        elif isinstance(value, int):
            value = int(value)
            if value in _INT32:
                stored = value
            elif value in _INT64:
                stored = EntityProperty(value, EdmType.INT64)
            else:
                stored = json.dumps(value)
                json_names.append(name)
        elif isinstance(value, dict | list | tuple):
            try:
                stored = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
            except (TypeError, ValueError) as exc:
                where = _where(table, pk, rk)
                raise TypeError(f"property {name!r} is not JSON-serialisable ({where}): {exc}") from None
            json_names.append(name)
        else:
            raise TypeError(
                f"property {name!r} has unsupported type {type(value).__name__} ({_where(table, pk, rk)}): "
                "use str, int, float, bool, None, dict or list"
            )
        if isinstance(stored, str) and len(stored) > MAX_STRING_UTF16_UNITS // 2:
            units = _utf16_units(stored)
            if units > MAX_STRING_UTF16_UNITS:
                what = "JSON of property" if name in json_names else "property"
                raise ValueTooLargeError(
                    f"{what} {name!r} is {units} UTF-16 code units, more than the {MAX_STRING_UTF16_UNITS} "
                    f"a Table Storage string holds ({_where(table, pk, rk)})"
                )
        entity[name] = stored
    if json_names:
        entity[JSON_MARKER] = json.dumps(json_names, separators=(",", ":"))
    if null_names:
        entity[NULL_MARKER] = json.dumps(null_names, separators=(",", ":"))
    if len(entity) - 2 > MAX_CUSTOM_PROPERTIES:
        raise ValueTooLargeError(
            f"{len(entity) - 2} properties (markers included) is more than the {MAX_CUSTOM_PROPERTIES} "
            f"a Table Storage entity holds ({_where(table, pk, rk)})"
        )
    return entity


def from_entity(entity: Any) -> Entity:
    """A Table entity (as returned by the SDK) -> port Entity with raw keys and original values."""
    props = dict(entity)
    pk = decode_key(props.pop("PartitionKey"))
    rk = decode_key(props.pop("RowKey"))
    props.pop("Timestamp", None)
    json_names = set(json.loads(props.pop(JSON_MARKER, "[]")))
    null_names = json.loads(props.pop(NULL_MARKER, "[]"))
    data: dict[str, Any] = {}
    for name, value in props.items():
        if isinstance(value, EntityProperty):
            value = value.value
        data[name] = json.loads(value) if name in json_names else value
    for name in null_names:
        data[name] = None
    return Entity(pk, rk, data, _etag_of(entity))


def _etag_of(entity: Any) -> str:
    metadata = getattr(entity, "metadata", None) or {}
    return metadata.get("etag") or ""


def _approx_size(entity: dict[str, Any]) -> int:
    total = 0
    for name, value in entity.items():
        total += len(name) + 32
        if isinstance(value, str):
            total += len(value.encode("utf-8"))
    return total


def _error_code(exc: HttpResponseError) -> str | None:
    """The service's error code (x-ms-error-code header, else the OData error body)."""
    code = getattr(exc, "error_code", None)
    response = getattr(exc, "response", None)
    if not code and response is not None:
        code = response.headers.get("x-ms-error-code")
        if not code:
            try:
                code = json.loads(response.text())["odata.error"]["code"]
            except Exception:  # noqa: BLE001 - no parsable error body
                code = None
    return code


def _transactions(operations: list[tuple[Any, Any]]) -> Iterator[list[tuple[Any, Any]]]:
    """(row, operation) pairs of one partition in chunks a single entity group transaction takes."""
    chunk: list[tuple[Any, Any]] = []
    size = 0
    for pair in operations:
        entity_size = _approx_size(pair[1][1])
        if chunk and (len(chunk) >= MAX_BATCH_OPERATIONS or size + entity_size > MAX_BATCH_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(pair)
        size += entity_size
    if chunk:
        yield chunk


# -- backend -------------------------------------------------------------------------------------

_created_lock = threading.Lock()
_created: set[tuple[str, str]] = set()  # (account URL, table name): tables this process knows exist


class AzureTables:
    """TableBackend over one Table Storage account (or Azurite)."""

    def __init__(self, service: TableServiceClient, prefix: str = "dualsync") -> None:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", prefix or ""):
            raise ConfigError([f"STATE_TABLE_PREFIX: {prefix!r} must be letters and digits, starting with a letter"])
        self._service = service
        self._prefix = prefix
        self._clients: dict[str, TableClient] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, environ: dict[str, str] | None = None) -> AzureTables:
        """STATE_TABLES_CONNECTION (connection string) or STATE_TABLES_ENDPOINT (+ Azure identity)."""
        prefix = setting("STATE_TABLE_PREFIX", environ) or "dualsync"
        connection = setting("STATE_TABLES_CONNECTION", environ)
        if connection:
            try:
                service = TableServiceClient.from_connection_string(connection)
            except Exception:  # noqa: BLE001 - the SDK's message could quote the secret; ours never does
                raise ConfigError(["STATE_TABLES_CONNECTION: not a valid Table Storage connection string"]) from None
            return cls(service, prefix)
        endpoint = setting("STATE_TABLES_ENDPOINT", environ)
        if endpoint:
            from azure.identity import DefaultAzureCredential

            client_id = setting("AZURE_CLIENT_ID", environ)
            # A user-assigned managed identity needs its client id; without one the default chain
            # (environment, workload identity, system-assigned identity, Azure CLI, ...) decides.
            credential = (
                DefaultAzureCredential(managed_identity_client_id=client_id) if client_id else DefaultAzureCredential()
            )
            return cls(TableServiceClient(endpoint=endpoint, credential=credential), prefix)
        raise ConfigError(["STATE_BACKEND=tables needs STATE_TABLES_CONNECTION or STATE_TABLES_ENDPOINT"])

    def __repr__(self) -> str:
        return f"AzureTables({self._service.url!r}, prefix={self._prefix!r})"

    # -- tables ---------------------------------------------------------------------------------
    def table_name(self, table: str) -> str:
        name = f"{self._prefix}{table}"
        if not _TABLE_NAME.fullmatch(name):
            raise ValueError(f"table name {name!r} is not valid in Table Storage (alphanumeric, 3-63 characters)")
        return name

    def _client(self, table: str) -> TableClient:
        client = self._clients.get(table)
        if client is not None:
            return client
        name = self.table_name(table)
        marker = (self._service.url, name.lower())
        with self._lock:
            client = self._clients.get(table)
            if client is None:
                with _created_lock:
                    known = marker in _created
                if not known:
                    try:
                        self._service.create_table(name)
                    except ResourceExistsError:
                        pass
                    with _created_lock:
                        _created.add(marker)
                client = self._service.get_table_client(name)
                self._clients[table] = client
        return client

    def _forget(self, table: str) -> None:
        """After TableNotFound (someone deleted the table): create it again on next use."""
        with self._lock:
            self._clients.pop(table, None)
        with _created_lock:
            _created.discard((self._service.url, self.table_name(table).lower()))

    def _call(self, table: str, op):  # noqa: ANN001, ANN202 - op(TableClient) -> result
        try:
            return op(self._client(table))
        except ResourceNotFoundError as exc:
            if _error_code(exc) != "TableNotFound":
                raise
        self._forget(table)
        return op(self._client(table))

    # -- reads ----------------------------------------------------------------------------------
    def get(self, table: str, pk: str, rk: str) -> Entity | None:
        epk, erk = _checked_key("PartitionKey", pk, table, pk, rk), _checked_key("RowKey", rk, table, pk, rk)
        try:
            found = self._call(table, lambda c: c.get_entity(partition_key=epk, row_key=erk))
        except ResourceNotFoundError:
            return None
        return from_entity(found)

    def get_many(self, table: str, pk: str, rks: Sequence[str]) -> dict[str, Entity]:
        unique = list(dict.fromkeys(rks))
        if not unique:
            return {}
        epk = _checked_key("PartitionKey", pk, table, pk, "")
        client = self._client(table)
        found: dict[str, Entity] = {}
        for start in range(0, len(unique), _RK_PER_QUERY):
            chunk = unique[start : start + _RK_PER_QUERY]
            # Tokens are separated by single spaces: the SDK substitutes @names word by word.
            params: dict[str, Any] = {"pk": epk}
            terms = []
            for i, rk in enumerate(chunk):
                params[f"r{i}"] = _checked_key("RowKey", rk, table, pk, rk)
                terms.append(f"RowKey eq @r{i}")
            query_filter = f"PartitionKey eq @pk and ( {' or '.join(terms)} )"
            for raw in client.query_entities(query_filter=query_filter, parameters=params):
                entity = from_entity(raw)
                found[entity.rk] = entity
        return found

    def query(self, table: str, pk: str | None = None, rk_prefix: str | None = None) -> Iterator[Entity]:
        client = self._client(table)
        terms: list[str] = []
        params: dict[str, Any] = {}
        lo, hi = key_range(rk_prefix) if rk_prefix else ("", None)
        if pk is not None:
            terms.append("PartitionKey eq @pk")
            params["pk"] = _checked_key("PartitionKey", pk, table, pk, "")
        if lo:
            terms.append("RowKey ge @lo")
            params["lo"] = lo
        if hi is not None:
            terms.append("RowKey lt @hi")
            params["hi"] = hi
        pages = (
            client.query_entities(query_filter=" and ".join(terms), parameters=params)
            if terms
            else client.list_entities()
        )
        for raw in pages:  # the SDK follows continuation tokens page by page as we iterate
            if lo and hi is None and not raw["RowKey"].startswith(lo):
                if pk is not None:
                    return  # ordered within the partition: nothing further can match
                continue
            yield from_entity(raw)

    # -- writes ---------------------------------------------------------------------------------
    def insert(self, table: str, pk: str, rk: str, data: dict[str, Any]) -> str:
        entity = to_entity(table, pk, rk, data)
        try:
            meta = self._call(table, lambda c: c.create_entity(entity=entity))
        except ResourceExistsError:
            raise ConcurrencyError(f"{table}/{pk}/{rk} already exists") from None
        return meta["etag"]

    def update(self, table: str, pk: str, rk: str, data: dict[str, Any], etag: str) -> str:
        entity = to_entity(table, pk, rk, data)
        if not etag:
            raise ConcurrencyError(f"{table}/{pk}/{rk}: no etag to guard the update with (read it first)")
        try:
            meta = self._call(
                table,
                lambda c: c.update_entity(
                    entity=entity, mode=UpdateMode.REPLACE, etag=etag, match_condition=MatchConditions.IfNotModified
                ),
            )
        except (ResourceModifiedError, ResourceNotFoundError):
            raise ConcurrencyError(f"{table}/{pk}/{rk} changed since it was read (or is gone)") from None
        except HttpResponseError as exc:
            if exc.status_code in (404, 409, 412):
                raise ConcurrencyError(f"{table}/{pk}/{rk} changed since it was read (or is gone)") from None
            raise
        return meta["etag"]

    def write_guarded(self, table: str, rows: Sequence[GuardedRow]) -> dict[tuple[str, str], str | None]:
        """One entity group transaction per partition and 100 rows. A row whose condition fails fails its
        whole transaction; the service names it (the index), so it is left out and the rest sent again."""
        written: dict[tuple[str, str], str | None] = {}
        partitions: dict[str, list[tuple[tuple[str, str], Any]]] = defaultdict(list)
        for pk, rk, data, etag in rows:
            entity = to_entity(table, pk, rk, data)
            if etag is None:
                operation: Any = ("create", entity)
            else:
                operation = ("update", entity, {"mode": UpdateMode.REPLACE, "etag": etag,
                                                "match_condition": MatchConditions.IfNotModified})
            partitions[entity["PartitionKey"]].append(((pk, rk), operation))
        client = self._client(table)
        for operations in partitions.values():
            for chunk in _transactions(operations):
                while chunk:
                    try:
                        answers = client.submit_transaction([operation for _, operation in chunk])
                    except TableTransactionError as exc:
                        if _error_code(exc) not in _CONDITION_FAILED or not 0 <= exc.index < len(chunk):
                            raise
                        written[chunk[exc.index][0]] = None
                        chunk = chunk[: exc.index] + chunk[exc.index + 1 :]
                        continue
                    for (row, _), answer in zip(chunk, answers, strict=True):
                        written[row] = answer["etag"]
                    break
        return written

    def upsert_many(self, table: str, rows: Sequence[Row]) -> None:
        if not rows:
            return
        partitions: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        for pk, rk, data in rows:
            entity = to_entity(table, pk, rk, data)
            # A transaction may not touch one row twice: keep the last write of each row.
            partitions[entity["PartitionKey"]][entity["RowKey"]] = entity
        client = self._client(table)
        for entities in partitions.values():
            batch: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
            size = 0
            for entity in entities.values():
                entity_size = _approx_size(entity)
                if batch and (len(batch) >= MAX_BATCH_OPERATIONS or size + entity_size > MAX_BATCH_BYTES):
                    client.submit_transaction(batch)
                    batch, size = [], 0
                batch.append(("upsert", entity, {"mode": UpdateMode.REPLACE}))
                size += entity_size
            if batch:
                client.submit_transaction(batch)

    def delete(self, table: str, pk: str, rk: str) -> None:
        epk, erk = _checked_key("PartitionKey", pk, table, pk, rk), _checked_key("RowKey", rk, table, pk, rk)
        try:
            self._call(table, lambda c: c.delete_entity(partition_key=epk, row_key=erk))
        except ResourceNotFoundError:
            pass

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()
        self._service.close()
