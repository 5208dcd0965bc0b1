"""The SQL implementation of the Connector port: any database SQLAlchemy 2 speaks, through Core (no ORM).

Tables are reflected on first use and cached. Values always travel as bound parameters; table and column
names come from reflection and are quoted by SQLAlchemy.

Reading changes (`SourceSpec.changes`):

- ``watermark``: keyset paging on (watermark, key...). The position after each page is
  ``{"watermark": <last row's watermark, JSON-friendly>, "last_key": [<its key values>]}``; the next query asks
  for ``wm > :w OR (wm = :w AND key > :k)`` (the row-value comparison expanded into OR/AND terms so SQLite
  and PostgreSQL both run it), ordered by (wm, key...), so rows sharing a timestamp across a page boundary
  are read exactly once. A read that starts from no position (None, ``{}`` or a null watermark) is a full
  read: every page it yields has ``snapshot=True`` so the engine may infer deletes when the iterator is
  exhausted; an empty full read yields one empty snapshot page. An incremental read with nothing new yields
  no page (unless the look-back re-reads some). Rows whose watermark is NULL are never read (a full read
  says how many in ``notes``).
  Look-back (``lookback_seconds``, default 60, date-time watermarks): a transaction stamps its rows before
  it commits (PostgreSQL's ``now()`` is the transaction's start), so a row can commit after a newer row was
  read, under the position. Each read therefore starts at ``min(position, read_at - lookback)``, where
  ``read_at`` is the database's clock when the previous read began (kept in the position): every row whose
  transaction committed within the look-back of its stamp is read. Re-read rows carry the version they had,
  so duplicate detection or apply's version check drops them; once a read begins more than the look-back
  after the newest stamp, nothing is re-read. The clock is the database's, as the column's stamps are
  written (see `_clock`); stamps from other clocks must be within the look-back of it.
  On SQLite a date/time is whatever text was written, and text with a 'T' separator, 'Z' or a UTC offset
  does not sort as time among ' ' text. Each read checks the texts it can reach (and the position): when
  all are ' '-separated without a zone (what CURRENT_TIMESTAMP and SQLAlchemy write), the text is compared,
  which sorts as time and uses an index on the column; otherwise the instant SQLite reads in each text is
  (``julianday(wm)``, to the millisecond), with a condition on the bare column (14 hours, the widest UTC
  offset, before the position, as text) so an index still narrows the scan. The position holds the last
  row's stored text either way, so a read may switch between the two.
- ``xact_id`` (PostgreSQL 13+): ``xact_column`` (xid8, or bigint) is filled by a trigger with
  ``pg_current_xact_id()``; keyset paging on (xact, key...) reads only below
  ``pg_snapshot_xmin(pg_current_snapshot())``, the oldest transaction still open, so no row can ever commit
  below the position: nothing is missed and nothing re-read, at the price of waiting for the oldest open
  transaction in the cluster. The position is ``{"xact": n, "last_key": [...]}``; the version is the xact
  id. A full read also takes the rows at or above the horizon (the snapshot is whole) without moving the
  position past them.
- ``status_flag``: rows whose ``status_field`` is 'N' (new) or 'U' (updated), paged by key. The flags are
  the cursor: every read starts from the lowest flagged key, the position (``{"last_key": [...]}``) only
  records progress within a read. `acknowledge` gets the records as read and sets 'P' (processed, reason
  cleared) only where the row is still flagged and holds the values read, 'E' with the reason only where it
  still holds the values that failed (version and watermark columns are among the values; without them
  every column is compared, NULL-safe): a row edited between our read and our acknowledge keeps its flag
  and is read again. The status and reason columns are left out of the record's values.
- ``change_tracking`` is a Dataverse feature: refused with a ConfigError.

Listing keys (`iter_keys`, for key-set reconciliation and the initial-sync target scan): one SELECT of the
key columns, streamed (``stream_results`` + ``yield_per``: a server-side cursor on PostgreSQL), so memory
stays flat. Keys must come out in Python's string order of the *formatted* key. The database sorts for
us only where its order provably equals that: a single text key column (not CHAR, whose comparison pads
blanks, nor ENUM) on PostgreSQL ordered ``COLLATE "C"`` (byte order of UTF-8 = code point order) or on
SQLite ordered ``COLLATE BINARY`` (memcmp of UTF-8), whatever collation the column itself declares; the
stream is checked as it goes and a step backwards raises ConfigError (e.g. a non-UTF-8 database). Every
other key (integers, whose text order differs from numeric order, dates, composite keys formatted as
JSON lists, other dialects) is read in index order and sorted by `shared.connectors.keysort.sorted_keys`:
sorted runs of 100,000 keys spilled to temporary files and merged, so memory is bounded by one run.

Record versions (`shared.versions.sortable_version`): the ``source.version`` column when set (and not
NULL), else the xact id (``xact_id``), else the watermark. A status-flag table without a watermark column
has no change marker at all, so its version is the time of the read: a row flagged again and read later
always gets a newer version, and a stale redelivery an older one (clock skew between hosts can blur
re-flags closer together than the skew).
`changed_at` is the watermark as an aware UTC datetime (naive values are taken as UTC); when the watermark
is not a date/time (a counter) or absent, it is the time of the read.

Record values are JSON-friendly: Decimal -> its exact digits as a string ('12.50'), datetime -> ISO 8601
(naive stays naive, aware is converted to UTC), date/time -> ISO, UUID -> str, bytes -> base64, JSON
columns recursively; None, bool, int, float and str as they are. The record key is
``shared.keys.key_of(source.key, values)``, so keys and values agree.

Writing (`write_batch`): ops are validated and coerced to the reflected column types first (unknown
column, missing key, over-length text, an unconvertible value -> that op alone is rejected). The rest run in
one transaction, in "generations" (the n-th op on a key runs in the n-th generation, so per-key order is
kept), each generation grouped by (kind, create_only, column set) and each group sent as one executemany:
native upserts on PostgreSQL and SQLite (``INSERT ... ON CONFLICT (key) DO UPDATE`` of the group's
columns; partial column sets leave other columns alone) when the key has a unique index, else
select-then-update/insert. If the batch fails with anything but a transient error, it is rolled back and
the ops run again one by one, each inside a savepoint, so one bad row fails only itself. Transient errors
(OperationalError, lost connections, timeouts) fail every op with a TransientError. ``if_match`` is ignored:
SQL tables carry no etag. Conditional writes go by values instead (capability ``conditional_writes="values"``):
the rows of ops with ``if_values`` are read again inside the write's transaction (``SELECT ... FOR UPDATE`` where
the dialect has it; SQLite's transaction already holds the write lock), their guarded columns compared with
``if_values`` exactly as `read_records` presents values (so NULLs, and a date-time or decimal stored in
another text form, compare as what was read), and an op whose row differs or is gone fails with
``TargetChanged`` (reason Conflict), as does a ``create_only`` op whose row exists (reason TargetRejected).
"""

from __future__ import annotations

import base64
import enum
import json
import re
import threading
import uuid
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    Column,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    and_,
    bindparam,
    cast,
    create_engine,
    delete,
    func,
    insert,
    inspect,
    literal,
    or_,
    select,
    type_coerce,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy import types as sqltypes
from sqlalchemy.dialects.postgresql import base as _pg_base
from sqlalchemy.engine import Connection, Engine, make_url

from shared.config import SourceSpec, TargetSpec
from shared.config_base import resolve_secret, secret_if_set
from shared.connectors.keysort import ascending, sorted_keys
from shared.connectors.sql_settings import SqlSystem
from shared.errors import ConfigError, PermanentError, Reason, SyncError, TargetChanged, TransientError
from shared.keys import format_key, key_of, parse_key
from shared.numbers import bounded_decimal
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
from shared.versions import FUTURE_TOLERANCE, sortable_version

CHUNK = 500  # keys per IN / OR query
FLAGGED = ("N", "U")
PROCESSED = "P"
FAILED = "E"
_WM_TEXT = "_dualsync_wm_text"
_WIDEST_UTC_OFFSET = timedelta(hours=14)
_ZONED_OR_T = re.compile(r"^.{10}T|[Zz]$|[+-]\d\d:\d\d$")
_SQLITE_PERMANENT = re.compile(r"^(no such |near |.* has no column |ON CONFLICT clause |.*syntax error)", re.I)
_CHANGED = "changed since it was read"
_EXISTS = "already exists"
_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}


class _Xid8(sqltypes.UserDefinedType):
    """PostgreSQL's xid8 (a 64-bit transaction id), for casts of bound values."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "xid8"


# Reflection then knows the type of an xact_id column instead of warning about it.
_pg_base.ischema_names.setdefault("xid8", _Xid8)


class _Reject(ValueError):
    """An op the connector refuses before it reaches the database."""


class _Regroup(Exception):
    """The grouped statements could not be trusted (e.g. a row vanished mid-batch): redo one by one."""


@dataclass
class _TableInfo:
    table: Table
    unique_sets: list[frozenset[str]]


@dataclass
class _Item:
    index: int
    op: WriteOp
    key_text: str
    key: dict[str, Any]  # column -> database-typed value
    row: dict[str, Any] = field(default_factory=dict)  # column -> database-typed value, key included


# ---------------------------------------------------------------------------------------------- values


def plain_value(value: Any) -> Any:
    """A JSON-friendly copy of a database value (see the module docstring)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Decimal):
        return format(value, "f") if value.is_finite() else str(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat() if value.tzinfo else value.isoformat()
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, enum.Enum):
        return plain_value(value.value)
    if isinstance(value, dict):
        return {str(k): plain_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain_value(v) for v in value]
    return str(value)


def _moment(value: Any) -> datetime | None:
    """An aware UTC datetime for a watermark value, or None when it is not a point in time."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    return None


def _to_db(column: Column, value: Any) -> Any:
    """`value` converted to what `column`'s type binds; raises _Reject with the rule it broke."""
    if value is None:
        return None
    kind = column.type
    try:
        if isinstance(kind, sqltypes.Boolean):
            if isinstance(value, bool):
                return value
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            text = str(value).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise _Reject(f"{value!r} is not a boolean")
        if isinstance(kind, sqltypes.DateTime):
            if isinstance(value, str):
                value = datetime.fromisoformat(value.strip())
            elif isinstance(value, date) and not isinstance(value, datetime):
                value = datetime(value.year, value.month, value.day)
            if not isinstance(value, datetime):
                raise _Reject(f"{value!r} is not a date-time")
            if getattr(kind, "timezone", False):
                return value if value.tzinfo else value.replace(tzinfo=UTC)
            return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value
        if isinstance(kind, sqltypes.Date):
            if isinstance(value, datetime):
                return value.date()
            if isinstance(value, date):
                return value
            if isinstance(value, str):
                text = value.strip()
                return datetime.fromisoformat(text).date() if len(text) > 10 else date.fromisoformat(text)
            raise _Reject(f"{value!r} is not a date")
        if isinstance(kind, sqltypes.Time):
            if isinstance(value, time):
                return value
            if isinstance(value, str):
                return time.fromisoformat(value.strip())
            raise _Reject(f"{value!r} is not a time of day")
        if isinstance(kind, sqltypes.Integer):
            if isinstance(value, bool):
                return int(value)
            if isinstance(value, int):
                return value
            number = _number(value)
            if number != number.to_integral_value():
                raise _Reject(f"{value!r} is not a whole number")
            if abs(number) >= 2**63:
                raise _Reject(f"{value!r} is beyond a 64-bit integer column")
            return int(number)
        if isinstance(kind, sqltypes.Numeric):  # Float included
            if isinstance(value, bool) or not isinstance(value, int | float | Decimal | str):
                raise _Reject(f"{value!r} is not a number")
            number = _number(value)  # NaN and Infinity: a database would store NULL (SQLite) or refuse it
            precision, scale = getattr(kind, "precision", None), getattr(kind, "scale", None) or 0
            if precision and not isinstance(kind, sqltypes.Float) and number.adjusted() >= precision - scale:
                raise _Reject(f"{value!r} has more than the {precision - scale} digits before the point the "
                              f"column allows (NUMERIC({precision},{scale}))")
            return float(number) if isinstance(kind, sqltypes.Float) else number
        if isinstance(kind, sqltypes.String):
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, str):
                text = value
            elif isinstance(value, int | float | Decimal | uuid.UUID | date | time):
                if isinstance(value, float | Decimal):
                    _number(value)  # its digits are written out: refuse one no column holds before that
                text = str(plain_value(value))
            else:
                raise _Reject(f"a {type(value).__name__} is not text")
            length = getattr(kind, "length", None)
            if length and not isinstance(kind, sqltypes.Enum) and len(text) > length:
                raise _Reject(f"value is {len(text)} characters, the column allows {length}")
            return text
        if isinstance(kind, sqltypes.Uuid):
            if isinstance(value, str) and getattr(kind, "as_uuid", True):
                return uuid.UUID(value)
            return value
        if isinstance(kind, sqltypes.LargeBinary):
            if isinstance(value, str):
                return base64.b64decode(value, validate=True)
            return value
    except (ValueError, TypeError, ArithmeticError) as exc:
        if isinstance(exc, _Reject):
            raise
        raise _Reject(f"{value!r} is not a valid {type(kind).__name__.lower()}") from None
    return value


def describe_database(url: Any) -> str:
    """How a database is named in messages and logs: dialect, host, port and database only. Userinfo and the
    query string never appear (a password can hide in either: ``?password=``, ODBC ``PWD=``)."""
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except Exception:  # noqa: BLE001 - an unparsable URL may quote its secret in the error
        return "(unparsable database URL)"
    backend = parsed.get_backend_name()
    if not parsed.host and not parsed.database and parsed.query:
        return f"{backend}://({', '.join(sorted(parsed.query))})"
    host = f"{parsed.host}:{parsed.port}" if parsed.host and parsed.port else parsed.host or ""
    return f"{backend}://{host}/{parsed.database or ''}"


def _query_values(url: Any) -> list[str]:
    """Every value in the URL's query string (and inside an ODBC connection string), longest first."""
    values: list[str] = []
    for value in url.query.values():
        for text in (value if isinstance(value, tuple) else (value,)):
            values.append(str(text))
            values += [part.split("=", 1)[1] for part in str(text).split(";") if "=" in part]
    return sorted({v for v in values if v}, key=len, reverse=True)


def _same_values(current: dict[str, Any], read: dict[str, Any]) -> bool:
    """Do two rows' JSON-friendly values agree? (NULL equals NULL, NaN equals NaN: compared as JSON.)"""
    return json.dumps(current, sort_keys=True, default=str) == json.dumps(read, sort_keys=True, default=str)


def _number(value: Any) -> Decimal:
    try:
        return bounded_decimal(value)
    except ValueError as exc:
        raise _Reject(str(exc)) from None


def _after(columns: Sequence[Any], values: Sequence[Any]) -> Any:
    """(c1, c2, ...) > (v1, v2, ...), expanded: c1 > v1 OR (c1 = v1 AND c2 > v2) OR ..."""
    terms = []
    for i, (column, value) in enumerate(zip(columns, values, strict=True)):
        equal = [c == v for c, v in zip(columns[:i], values[:i], strict=True)]
        terms.append(and_(*equal, column > value))
    return or_(*terms)


def _key_match(columns: Sequence[Column], keys: Sequence[Sequence[Any]]) -> Any:
    if len(columns) == 1:
        return columns[0].in_([k[0] for k in keys])
    return or_(*[and_(*[c == v for c, v in zip(columns, k, strict=True)]) for k in keys])


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# ---------------------------------------------------------------------------------------------- connector


def _column_precision(kind: Any, dialect: str) -> ValuePrecision:
    if isinstance(kind, sqltypes.DateTime):
        # TIMESTAMP(p) / DATETIME2(p) / MySQL DATETIME(fsp); SQL Server's DATETIME keeps 1/300 s.
        digits = getattr(kind, "precision", None)
        if digits is None:
            digits = getattr(kind, "fsp", None)
        if digits is None and dialect == "mssql" and type(kind) is sqltypes.DATETIME:
            digits = 2
        return ValuePrecision(datetime_digits=6 if digits is None else int(digits))
    if isinstance(kind, sqltypes.Numeric) and not isinstance(kind, sqltypes.Float):
        return ValuePrecision(decimal_scale=kind.scale)
    if isinstance(kind, sqltypes.CHAR | sqltypes.NCHAR):
        return ValuePrecision(trims_trailing_spaces=True)
    return ValuePrecision()


class SqlConnector:
    """Connector over one database URL (a SQLAlchemy URL; resolve `env:NAME` before calling)."""

    # xact_id only on PostgreSQL: each instance (and `capabilities_for`) narrows this to its dialect.
    capabilities = Capabilities(
        change_modes=frozenset({"watermark", "status_flag", "xact_id"}),
        acknowledge=frozenset({"status_flag"}),
        conditional_writes="values",
        snapshot_reads=frozenset({"watermark", "xact_id"}),
        describes_schema=True,
    )

    @classmethod
    def for_dialect(cls, dialect: str) -> Capabilities:
        if dialect == "postgresql":
            return cls.capabilities
        return replace(cls.capabilities, change_modes=cls.capabilities.change_modes - {"xact_id"},
                       snapshot_reads=cls.capabilities.snapshot_reads - {"xact_id"})

    @classmethod
    def capabilities_for(cls, system: SqlSystem) -> Capabilities:
        """Narrowed to the URL's dialect when the URL can be read here (written out, or its env:NAME set)."""
        try:
            return cls.for_dialect(make_url(secret_if_set(system.url) or "").get_backend_name())
        except Exception:  # noqa: BLE001 - unknown or unreadable (the connector says why when it is built)
            return cls.capabilities

    @classmethod
    def from_config(cls, name: str, system: SqlSystem) -> SqlConnector:
        return cls(resolve_secret(system.url))

    def __init__(self, url: str, *, engine: Engine | None = None) -> None:
        if engine is None:
            try:
                parsed = make_url(url)
            except Exception:  # noqa: BLE001 - the message may quote the URL, which may hold a password
                raise ConfigError(
                    ["sql url: not a valid SQLAlchemy database URL (dialect+driver://user@host/db)"]
                ) from None
            options: dict[str, Any] = {"pool_pre_ping": True}
            if parsed.get_backend_name() == "postgresql" and "connect_timeout" not in parsed.query:
                options["connect_args"] = {"connect_timeout": 10}
            try:
                engine = create_engine(parsed, **options)
            except Exception as exc:  # noqa: BLE001
                raise ConfigError(
                    [f"sql url: SQLAlchemy cannot use dialect {parsed.drivername!r}: {type(exc).__name__}"]
                ) from None
        self._engine = engine
        self.capabilities = self.for_dialect(engine.dialect.name)
        # Scrubbed from every error text: the password and, since drivers echo connection options, every
        # query value (a password may be one, under any name).
        self._secrets = [s for s in (str(engine.url.password or ""), *_query_values(engine.url)) if s]
        self.database = describe_database(engine.url)
        self._tables: dict[str, _TableInfo] = {}
        self._lock = threading.Lock()

    # -- plumbing ---------------------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"SqlConnector({self.database})"

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _first_line(self, exc: BaseException) -> str:
        orig = getattr(exc, "orig", None)
        text = str(orig if orig is not None else exc).strip()
        return self._scrub(text.splitlines()[0] if text else type(exc).__name__)

    def _is_transient(self, exc: BaseException) -> bool:
        if isinstance(exc, sa_exc.TimeoutError | sa_exc.DisconnectionError):
            return True
        if isinstance(exc, sa_exc.DBAPIError):
            if exc.connection_invalidated:
                return True
            if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError):
                return not (self._engine.dialect.name == "sqlite" and _SQLITE_PERMANENT.match(self._first_line(exc)))
        return False

    def _transient(self, exc: BaseException) -> TransientError:
        return TransientError(f"database {self.database} unavailable: {self._first_line(exc)}")

    def _table_info(self, entity: str) -> _TableInfo:
        with self._lock:
            info = self._tables.get(entity)
        if info is not None:
            return info
        schema, _, name = entity.rpartition(".")
        try:
            table = Table(name, MetaData(), schema=schema or None, autoload_with=self._engine)
            unique_sets = self._unique_sets(table)
        except sa_exc.NoSuchTableError:
            raise ConfigError([f"{entity}: no such table in {self.database}"]) from None
        except sa_exc.SQLAlchemyError as exc:
            if self._is_transient(exc):
                raise self._transient(exc) from None
            raise ConfigError([f"{entity}: cannot read the table's definition: {self._first_line(exc)}"]) from None
        info = _TableInfo(table, unique_sets)
        with self._lock:
            self._tables[entity] = info
        return info

    def _unique_sets(self, table: Table) -> list[frozenset[str]]:
        sets = [frozenset(c.name for c in table.primary_key.columns)]
        for constraint in table.constraints:
            if isinstance(constraint, UniqueConstraint):
                sets.append(frozenset(c.name for c in constraint.columns))
        for index in table.indexes:
            if index.unique and not any(opts.get("where") for opts in index.dialect_options.values()):
                sets.append(frozenset(c.name for c in index.columns))
        if self._engine.dialect.name == "sqlite":  # UNIQUE column constraints show up only as auto-indexes
            for index in inspect(self._engine).get_indexes(table.name, schema=table.schema, include_auto_indexes=True):
                if index.get("unique"):
                    sets.append(frozenset(index["column_names"]))
        return [s for s in sets if s]

    @staticmethod
    def _column(table: Table, name: str, entity: str, role: str) -> Column:
        column = table.c.get(name)
        if column is None:
            raise ConfigError([f"{entity}: {role} column {name!r} does not exist"])
        return column

    def _fetch(self, stmt: Any, entity: str) -> list[Any]:
        try:
            with self._engine.connect() as conn:
                return list(conn.execute(stmt).mappings())
        except sa_exc.SQLAlchemyError as exc:
            if self._is_transient(exc):
                raise self._transient(exc) from None
            raise PermanentError(Reason.VALIDATION_FAILED, f"{entity}: query failed: {self._first_line(exc)}") from None

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        with self._engine.connect() as conn, conn.begin():
            if conn.dialect.name == "sqlite":
                # pysqlite defers BEGIN until the first DML, which breaks SAVEPOINT; begin explicitly.
                raw = conn.connection.dbapi_connection
                if not getattr(raw, "in_transaction", True):
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
            yield conn

    def _db_key(self, columns: Sequence[Column], key: str) -> tuple[Any, ...] | None:
        """A formatted key as database-typed values, or None when it cannot exist in these columns."""
        try:
            parts = parse_key([c.name for c in columns], key)
            return tuple(_to_db(c, parts[c.name]) for c in columns)
        except (ValueError, TypeError):
            return None

    # -- reading ----------------------------------------------------------------------------------

    def read_changes(
        self, source: SourceSpec, position: dict[str, Any] | None, page_size: int
    ) -> Iterator[ChangePage]:
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        if source.changes == "watermark":
            return self._read_watermark(source, position, page_size)
        if source.changes == "status_flag":
            return self._read_flagged(source, page_size)
        if source.changes == "xact_id":
            return self._read_xact(source, position, page_size)
        raise ConfigError(
            [f"{source.entity}: changes={source.changes!r} is not supported by SQL systems "
             "(use watermark, status_flag or, on PostgreSQL, xact_id)"]
        )

    def _record(
        self, source: SourceSpec, row: Any, read_at: datetime, *, watermark: str | None, skip: Sequence[str] = (),
        marker: Any = None,
    ) -> SourceRecord:
        """`marker` is the change marker when the table has no version column (default: watermark, else the
        time of the read)."""
        values = {name: plain_value(value) for name, value in row.items() if name != _WM_TEXT and name not in skip}
        stamp = row.get(watermark) if watermark else None
        if source.version and row.get(source.version) is not None:
            marker = row.get(source.version)
        if marker is None:
            marker = stamp if stamp is not None else read_at
        try:
            version = sortable_version(marker)
        except (TypeError, ValueError) as exc:
            raise ConfigError([f"{source.entity}: cannot use {marker!r} as a version: {exc}"]) from None
        return SourceRecord(
            key=key_of(source.key, values), values=values, version=version, changed_at=_moment(stamp) or read_at
        )

    def _clock(self, wm: Column) -> Any:
        """The database's current time as `wm`'s stamps are written: SQLite (CURRENT_TIMESTAMP, 'now') in
        UTC; PostgreSQL in the column's kind (now() for timestamptz; LOCALTIMESTAMP, the session's time zone,
        for timestamp, as a `DEFAULT now()` writes it)."""
        name = self._engine.dialect.name
        if name == "sqlite":
            return func.strftime("%Y-%m-%d %H:%M:%f", "now")
        if name == "postgresql":
            return func.now() if getattr(wm.type, "timezone", False) else func.localtimestamp()
        return func.current_timestamp()

    def _lookback_floor(self, source: SourceSpec, wm: Column, position: dict[str, Any], sqlite_time: str) -> Any:
        """Where the overlap re-read starts: rows whose watermark is above it are read again.

        A row that commits after the previous read began (at `read_at`, on the database's clock) within
        `lookback_seconds` of its stamp is stamped after read_at - lookback: that is the floor, unless the
        position is lower. Without a read_at (a position from before the overlap existed), position - lookback.
        On SQLite the floor is computed by SQLite itself, from the stored texts."""
        lookback = source.lookback_seconds
        read_at = position.get("read_at")
        if sqlite_time == "julianday":
            mark = func.julianday(str(position["watermark"]))
            if read_at is None:
                return mark - lookback / 86400
            return func.min(mark, func.julianday(str(read_at)) - lookback / 86400)
        if sqlite_time == "text":  # ' '-separated UTC text, as strftime writes it, compares as time
            since = func.strftime("%Y-%m-%d %H:%M:%f", str(read_at or position["watermark"]), f"-{lookback} seconds")
            return func.min(str(position["watermark"]), since)
        mark = _to_db(wm, position["watermark"])
        since = (_to_db(wm, read_at) if read_at is not None else mark) - timedelta(seconds=lookback)
        return min(mark, since)

    def _read_watermark(
        self, source: SourceSpec, position: dict[str, Any] | None, page_size: int
    ) -> Iterator[ChangePage]:
        table = self._table_info(source.entity).table
        wm = self._column(table, source.watermark, source.entity, "watermark")
        keys = [self._column(table, k, source.entity, "key") for k in source.key]
        if source.version:
            self._column(table, source.version, source.entity, "version")
        looks_back = source.lookback_seconds > 0 and isinstance(wm.type, sqltypes.DateTime)
        full = not position or position.get("watermark") is None
        # SQLite keeps date-times as whatever text was written; "text" or "julianday" (see the module docstring).
        sqlite_time = self._sqlite_comparison(source, wm, None if full else position)
        wm_text = type_coerce(wm, String())
        wm_expr = {"julianday": func.julianday(wm), "text": wm_text}.get(sqlite_time, wm)
        after: list[Any] | None = None
        floor: Any = None
        narrow: Any = None  # a condition on the bare column that lets an index on it serve the query
        if not full:
            assert position is not None
            last_key = position.get("last_key") or []
            if len(last_key) != len(keys):
                raise ConfigError([f"{source.entity}: the stored position does not match the key {source.key}"])
            try:
                stored = position["watermark"]
                if sqlite_time:
                    start = func.julianday(str(stored)) if sqlite_time == "julianday" else str(stored)
                else:
                    start = _to_db(wm, stored)
                after = [start, *(_to_db(c, v) for c, v in zip(keys, last_key, strict=True))]
                if looks_back:
                    floor = self._lookback_floor(source, wm, position, sqlite_time)
            except (_Reject, ValueError, TypeError) as exc:
                raise ConfigError([f"{source.entity}: the stored position is not valid here: {exc}"]) from None
            if sqlite_time == "julianday":
                earliest = position.get("read_at") if looks_back else None
                narrow = self._sqlite_narrowing(wm, stored, earliest, source.lookback_seconds)
        notes: list[str] = []
        if full:
            missing = self._fetch(select(func.count().label("n")).select_from(table).where(wm.is_(None)), source.entity)
            if missing and missing[0]["n"]:
                notes.append(f"{source.entity}: {missing[0]['n']} rows have no {source.watermark} and are not read")
            if sqlite_time == "julianday":
                unreadable = self._fetch(select(func.count().label("n")).select_from(table).where(
                    wm.is_not(None), wm_expr.is_(None)), source.entity)
                if unreadable and unreadable[0]["n"]:
                    notes.append(f"{source.entity}: {unreadable[0]['n']} rows have a {source.watermark} that is not "
                                 "a date-time SQLite can read and are not read")
        read_at = datetime.now(UTC)
        clock = plain_value(self._fetch(select(self._clock(wm).label("now")), source.entity)[0]["now"]) \
            if looks_back else None
        columns = [*table.c, wm_text.label(_WM_TEXT)] if sqlite_time else list(table.c)
        horizon = self._horizon(wm, sqlite_time, read_at)
        refused = dict((position or {}).get("refused") or {})
        yielded = False
        page_position: dict[str, Any] = dict(position or {})
        while True:
            stmt = select(*columns).where(wm_expr.is_not(None))
            if horizon is not None:  # a stamp in the future never moves the cursor there (see _refused_rows)
                stmt = stmt.where(wm_expr <= horizon)
            if narrow is not None:
                stmt = stmt.where(narrow)
            if floor is not None:  # the first query re-reads the overlap; later ones go on from its last row
                assert after is not None
                stmt = stmt.where(or_(wm_expr > floor, _after([wm_expr, *keys], after)))
                if sqlite_time != "julianday":  # implied (floor <= position); lets an index range scan serve it
                    stmt = stmt.where(wm_expr >= floor)
                floor = None
            elif after is not None:
                # The redundant `wm >= :w` lets the planner start an index range scan at the position.
                if sqlite_time != "julianday":
                    stmt = stmt.where(wm_expr >= after[0])
                stmt = stmt.where(_after([wm_expr, *keys], after))
            stmt = stmt.order_by(wm_expr, *keys).limit(page_size)
            rows = self._fetch(stmt, source.entity)
            if not rows:
                if full and not yielded:
                    page_position = {"watermark": None, "last_key": None}
                    yield ChangePage([], page_position, snapshot=True, notes=notes)
                break
            records = [self._record(source, row, read_at, watermark=wm.name) for row in rows]
            last = rows[-1]
            stamp = last[_WM_TEXT] if sqlite_time else last[wm.name]
            after = [func.julianday(stamp) if sqlite_time == "julianday" else stamp, *(last[c.name] for c in keys)]
            narrow = self._sqlite_narrowing(wm, stamp, None, 0) if sqlite_time == "julianday" else None
            page_position = {"watermark": plain_value(stamp), "last_key": [plain_value(v) for v in after[1:]]}
            if clock is not None:
                page_position["read_at"] = clock
            if refused:
                page_position["refused"] = refused
            yield ChangePage(records, page_position, snapshot=full, notes=notes if not yielded else [])
            yielded = True
            if len(rows) < page_size:
                break
        if horizon is not None:
            yield from self._refused_rows(source, table, wm, wm_expr, horizon, columns, page_position, refused,
                                          read_at, bool(sqlite_time))

    _REFUSED_KEPT = 1000  # keys remembered as already reported, per flow

    def _horizon(self, wm: Column, sqlite_time: str, now: datetime) -> Any:
        """The latest change time a row may carry: now plus the clock skew a source may have. None when the
        watermark is not a point in time."""
        if not isinstance(wm.type, sqltypes.DateTime | sqltypes.Date):
            return None
        limit = now + FUTURE_TOLERANCE
        if sqlite_time == "julianday":
            return func.julianday(limit.strftime("%Y-%m-%d %H:%M:%S"))
        if sqlite_time:
            return limit.strftime("%Y-%m-%d %H:%M:%S")
        return _to_db(wm, limit if isinstance(wm.type, sqltypes.DateTime) else limit.date())

    def _refused_rows(self, source: SourceSpec, table: Table, wm: Column, wm_expr: Any, horizon: Any,
                      columns: list[Any], position: dict[str, Any], refused: dict[str, Any], read_at: datetime,
                      as_text: bool) -> Iterator[ChangePage]:
        """Rows stamped beyond the horizon (a typo, `9999-12-31`): never read as changes, since the cursor would
        move past every real change to come; each is sent once, condemned, naming the record and the value."""
        rows = self._fetch(select(*columns).where(wm_expr > horizon).order_by(wm_expr).limit(100), source.entity)
        fresh = []
        for row in rows:
            record = self._record(source, row, read_at, watermark=wm.name)
            stamp = str(plain_value(row[_WM_TEXT] if as_text else row[wm.name]))
            if refused.get(record.key) == stamp:
                continue
            record.refused = (f"{source.watermark} {stamp} lies beyond now plus {FUTURE_TOLERANCE}: a change "
                              "cannot come from the future; fix the value at the source")
            refused[record.key] = stamp
            fresh.append(record)
        if fresh:
            kept = dict(list(refused.items())[-self._REFUSED_KEPT:])
            yield ChangePage(fresh, {**position, "refused": kept},
                             notes=[f"{source.entity}: {len(fresh)} rows stamped in the future were dead-lettered"])

    def _sqlite_comparison(self, source: SourceSpec, wm: Column, position: dict[str, Any] | None) -> str:
        """How to compare a date/time watermark on SQLite: "" (not SQLite, or not a date/time column), "text"
        (every text this read can reach, and the position, is ISO 8601 with ' ' and no zone: such text sorts
        as time, and an index on the column serves the read) or "julianday" (some text has a 'T' separator,
        'Z' or a UTC offset: the instants SQLite reads in the texts are compared)."""
        if self._engine.dialect.name != "sqlite" or not isinstance(
            wm.type, sqltypes.DateTime | sqltypes.Date | sqltypes.Time
        ):
            return ""
        stored = None if position is None else str(position["watermark"])
        if stored is not None and _ZONED_OR_T.search(stored):
            return "julianday"
        text = type_coerce(wm, String())
        odd = or_(text.op("GLOB")("??????????T*"), text.op("GLOB")("*[Zz]"),
                  text.op("GLOB")("*[+-][0-9][0-9]:[0-9][0-9]"))
        stmt = select(literal(1).label("odd")).select_from(wm.table).where(odd)
        if stored is not None:
            # Only what this read can reach: rows after the position, minus the look-back and any UTC offset.
            read_at = position.get("read_at") if position else None
            lookback = source.lookback_seconds if isinstance(wm.type, sqltypes.DateTime) else 0
            narrow = self._sqlite_narrowing(wm, stored, read_at, lookback)
            if narrow is not None:
                stmt = stmt.where(narrow)
        return "julianday" if self._fetch(stmt.limit(1), source.entity) else "text"

    @staticmethod
    def _sqlite_narrowing(wm: Column, stored: Any, read_at: Any, lookback: float) -> Any:
        """A condition on the bare column that loses no row the read wants, so an index on it can narrow the
        scan: ``wm >= <the earliest instant wanted - 14 h, as 'YYYY-MM-DD HH:MM:SS'>`` compared as text. A
        later moment written with a UTC offset reads at most 14 hours earlier as local text, and written with
        'T' instead of ' ' sorts above every ' ' text of its day. None when the texts are not ISO 8601."""
        if not isinstance(wm.type, sqltypes.DateTime | sqltypes.Date):
            return None
        try:
            moments = [datetime.fromisoformat(str(stored))]
            if read_at is not None:
                moments.append(datetime.fromisoformat(str(read_at)))
        except ValueError:
            return None
        earliest = min(m.astimezone(UTC).replace(tzinfo=None) if m.tzinfo else m for m in moments)
        bound = earliest - timedelta(seconds=lookback) - _WIDEST_UTC_OFFSET
        return type_coerce(wm, String()) >= f"{bound:%Y-%m-%d %H:%M:%S}"

    def _read_xact(self, source: SourceSpec, position: dict[str, Any] | None, page_size: int) -> Iterator[ChangePage]:
        """Commit-safe change reads on PostgreSQL: keyset paging on (xact, key...) below the snapshot's xmin.

        Every transaction older than pg_snapshot_xmin(pg_current_snapshot()) has ended, so no row can later
        appear below that horizon: reading only up to it never passes a change that is still in flight."""
        if self._engine.dialect.name != "postgresql":
            raise ConfigError([f"{source.entity}: changes=xact_id needs PostgreSQL 13 or later "
                               f"({self._engine.dialect.name} has no pg_current_xact_id)"])
        table = self._table_info(source.entity).table
        xact = self._column(table, source.xact_column, source.entity, "xact_id")
        keys = [self._column(table, k, source.entity, "key") for k in source.key]
        if source.version:
            self._column(table, source.version, source.entity, "version")
        watermark = source.watermark if source.watermark in table.c else None
        as_xid8 = not isinstance(xact.type, sqltypes.Integer)

        def xid(value: int) -> Any:
            return cast(literal(str(value), String()), _Xid8()) if as_xid8 else value

        horizon_expr = func.pg_snapshot_xmin(func.pg_current_snapshot())
        horizon = int(self._fetch(select(cast(horizon_expr, String()).label("h")), source.entity)[0]["h"])
        full = not position or position.get("xact") is None
        after: list[Any] | None = None
        if not full:
            assert position is not None
            last_key = position.get("last_key")
            if last_key is not None and len(last_key) != len(keys):
                raise ConfigError([f"{source.entity}: the stored position does not match the key {source.key}"])
            try:
                after = [int(position["xact"]), *(_to_db(c, v) for c, v in zip(keys, last_key or [], strict=True))]
            except (_Reject, ValueError, TypeError) as exc:
                raise ConfigError([f"{source.entity}: the stored position is not valid here: {exc}"]) from None
        notes: list[str] = []
        if full:
            missing = self._fetch(select(func.count().label("n")).select_from(table).where(xact.is_(None)),
                                  source.entity)
            if missing and missing[0]["n"]:
                notes.append(f"{source.entity}: {missing[0]['n']} rows have no {source.xact_column} and are not read")
        read_at = datetime.now(UTC)
        settled: dict[str, Any] = {"xact": horizon - 1, "last_key": None}  # everything below the horizon is read
        yielded = False
        # Below the horizon, in order; a full read then also takes the rows at or above it (committed by
        # transactions newer than the oldest open one), so the snapshot is whole, without moving past them.
        for below in (True, False) if full else (True,):
            while True:
                stmt = select(table).where(xact.is_not(None))
                if below:
                    stmt = stmt.where(xact < xid(horizon))
                else:
                    stmt = stmt.where(xact >= xid(horizon))
                if after is not None:
                    if len(after) == 1:
                        stmt = stmt.where(xact > xid(after[0]))
                    else:
                        stmt = stmt.where(_after([xact, *keys], [xid(after[0]), *after[1:]]))
                rows = self._fetch(stmt.order_by(xact, *keys).limit(page_size), source.entity)
                if not rows:
                    break
                records = [self._record(source, row, read_at, watermark=watermark, marker=int(row[xact.name]))
                           for row in rows]
                last = rows[-1]
                after = [int(last[xact.name]), *(last[c.name] for c in keys)]
                if below:
                    page_position = {"xact": after[0], "last_key": [plain_value(v) for v in after[1:]]}
                    settled = page_position
                else:
                    page_position = settled
                yield ChangePage(records, page_position, snapshot=full, notes=notes if not yielded else [])
                yielded = True
                if len(rows) < page_size:
                    break
        if full and not yielded:
            yield ChangePage([], settled, snapshot=True, notes=notes)

    def _read_flagged(self, source: SourceSpec, page_size: int) -> Iterator[ChangePage]:
        table = self._table_info(source.entity).table
        status = self._column(table, source.status_field, source.entity, "status")
        keys = [self._column(table, k, source.entity, "key") for k in source.key]
        if source.version:
            self._column(table, source.version, source.entity, "version")
        watermark = source.watermark if source.watermark in table.c else None
        skip = [source.status_field, source.reason_field]
        read_at = datetime.now(UTC)
        after: list[Any] | None = None
        while True:
            stmt = select(table).where(status.in_(FLAGGED))
            if after is not None:
                stmt = stmt.where(_after(keys, after))
            rows = self._fetch(stmt.order_by(*keys).limit(page_size), source.entity)
            if not rows:
                return
            records = [self._record(source, row, read_at, watermark=watermark, skip=skip) for row in rows]
            after = [rows[-1][c.name] for c in keys]
            yield ChangePage(records, {"last_key": [plain_value(v) for v in after]})
            if len(rows) < page_size:
                return

    def read_record(self, source: SourceSpec, key: str) -> SourceRecord | None:
        table = self._table_info(source.entity).table
        keys = [self._column(table, k, source.entity, "key") for k in source.key]
        db_key = self._db_key(keys, key)
        if db_key is None:
            return None
        rows = self._fetch(select(table).where(_key_match(keys, [db_key])), source.entity)
        if not rows:
            return None
        marker = None
        if source.changes == "status_flag":
            watermark = source.watermark if source.watermark in table.c else None
            skip = [source.status_field, source.reason_field]
        elif source.changes == "xact_id":
            watermark = source.watermark if source.watermark in table.c else None
            skip = []
            stamp = rows[0].get(self._column(table, source.xact_column, source.entity, "xact_id").name)
            marker = int(stamp) if stamp is not None else None
        else:
            watermark = self._column(table, source.watermark, source.entity, "watermark").name
            skip = []
        return self._record(source, rows[0], datetime.now(UTC), watermark=watermark, skip=skip, marker=marker)

    def read_records(self, entity: str, key_fields: Sequence[str], keys: Sequence[str]) -> dict[str, SourceRecord]:
        """Current rows by key. These are target-side reads without a change marker: version is '' and
        changed_at the time of the read; compare values, not versions."""
        table = self._table_info(entity).table
        columns = [self._column(table, k, entity, "key") for k in key_fields]
        wanted = [k for k in (self._db_key(columns, key) for key in dict.fromkeys(keys)) if k is not None]
        size = max(1, min(CHUNK, 900 // len(columns)))  # stay under old SQLite's 999 bound parameters
        read_at = datetime.now(UTC)
        found: dict[str, SourceRecord] = {}
        for chunk in _chunks(wanted, size):
            for row in self._fetch(select(table).where(_key_match(columns, chunk)), entity):
                values = {name: plain_value(value) for name, value in row.items()}
                key = key_of(key_fields, values)
                found[key] = SourceRecord(key=key, values=values, version="", changed_at=read_at)
        return found

    # -- capabilities -----------------------------------------------------------------------------

    def precision(self, entity: str, field: str) -> ValuePrecision:
        """From the column's type: fractional-second digits, decimal scale, CHAR padding."""
        try:
            column = self._table_info(entity).table.c.get(field)
        except SyncError:  # the table is unreadable now: its writes will say so; compare exactly meanwhile
            return ValuePrecision()
        if column is None:
            return ValuePrecision()
        return _column_precision(column.type, self._engine.dialect.name)

    def describe(self, entity: str) -> EntitySchema:
        """The table's columns by reflection (the same cached reflection every read and write uses)."""
        schema, _, name = entity.rpartition(".")
        try:
            inspector = inspect(self._engine)
            if not inspector.has_table(name, schema=schema or None):
                return EntitySchema(entity, exists=False,
                                    known_entities=tuple(inspector.get_table_names(schema=schema or None)))
        except sa_exc.SQLAlchemyError as exc:
            if self._is_transient(exc):
                raise self._transient(exc) from None
            problem = f"{entity}: cannot list the tables of {self.database}: {self._first_line(exc)}"
            raise ConfigError([problem]) from None
        table = self._table_info(entity).table
        return EntitySchema(entity, exists=True, columns=tuple(
            ColumnInfo(c.name, self._type_name(c), nullable=bool(c.nullable),
                       max_length=getattr(c.type, "length", None)) for c in table.columns))

    def _type_name(self, column: Column) -> str:
        try:
            return str(column.type.compile(dialect=self._engine.dialect))
        except Exception:  # noqa: BLE001 - a reflected type this dialect cannot print still has a class name
            return type(column.type).__name__

    def change_time_column(self, source: SourceSpec) -> str | None:
        """The watermark, when it is a point in time (a counter orders changes but says nothing of when)."""
        try:
            column = self._table_info(source.entity).table.c.get(source.watermark)
        except SyncError:
            return None
        if column is None or not isinstance(column.type, sqltypes.DateTime | sqltypes.Date):
            return None
        return source.watermark

    def iter_keys(self, source: SourceSpec) -> Iterator[str]:
        table = self._table_info(source.entity).table
        columns = [self._column(table, k, source.entity, "key") for k in source.key]
        collation = self._binary_collation(columns)
        if collation is not None and columns[0].nullable and self._fetch(
            select(columns[0]).where(columns[0].is_(None)).limit(1), source.entity
        ):
            collation = None  # NULL keys (formatted 'None') sort where the database puts NULLs: sort here
        if collation is None:
            keys = (format_key([plain_value(v) for v in row]) for row in self._stream(
                select(*columns).order_by(*columns), source.entity))
            return sorted_keys(keys)
        stmt = select(columns[0]).order_by(columns[0].collate(collation))
        keys = (str(plain_value(row[0])) for row in self._stream(stmt, source.entity))
        return ascending(keys, f"{self.database} {source.entity}")

    def _binary_collation(self, columns: Sequence[Column]) -> str | None:
        """The collation under which the database orders this key like Python orders its text, if any."""
        if len(columns) != 1:
            return None
        kind = columns[0].type
        if not isinstance(kind, sqltypes.String) or isinstance(kind, sqltypes.Enum | sqltypes.CHAR):
            return None
        return {"postgresql": "C", "sqlite": "BINARY"}.get(self._engine.dialect.name)

    def _stream(self, stmt: Any, entity: str, batch: int = 2000) -> Iterator[Any]:
        """Rows of `stmt` as the database sends them, `batch` at a time, on one connection."""
        try:
            with self._engine.connect() as conn:
                result = conn.execution_options(stream_results=True, yield_per=batch).execute(stmt)
                yield from result
        except sa_exc.SQLAlchemyError as exc:
            if self._is_transient(exc):
                raise self._transient(exc) from None
            raise PermanentError(Reason.VALIDATION_FAILED, f"{entity}: query failed: {self._first_line(exc)}") from None

    def acknowledge(
        self, source: SourceSpec, sent: Sequence[SourceRecord], failed: Sequence[tuple[SourceRecord, str]]
    ) -> None:
        """P where the row is still flagged and holds the values we read; E (with the reason) where it still
        holds the values that failed and was not marked otherwise since (a fix re-flags it with new values).
        The values include the version and watermark columns, so this is the version check where the table
        has one, and a NULL-safe comparison of every column where it has neither. The rows are locked
        (SELECT ... FOR UPDATE; SQLite's write lock) from the comparison to the update, so an edit either
        lands before (and is seen) or after (and re-flags the row)."""
        if source.changes != "status_flag" or not (sent or failed):
            return
        table = self._table_info(source.entity).table
        status = self._column(table, source.status_field, source.entity, "status")
        columns = [self._column(table, k, source.entity, "key") for k in source.key]
        reason = table.c.get(source.reason_field)
        reason_length = getattr(reason.type, "length", None) if reason is not None else None
        wanted: dict[str, tuple[SourceRecord, str | None]] = {r.key: (r, None) for r in sent}
        wanted.update({r.key: (r, why) for r, why in failed})  # a failure outranks a send of the same row
        db_keys = [k for k in (self._db_key(columns, key) for key in wanted) if k is not None]
        skip = (source.status_field, source.reason_field)
        done: dict[str, Any] = {status.name: PROCESSED}
        if reason is not None:
            done[reason.name] = None
        try:
            with self._transaction() as conn:
                processed: list[dict[str, Any]] = []
                bad: list[dict[str, Any]] = []
                for chunk in _chunks(db_keys, max(1, min(CHUNK, 900 // len(columns)))):
                    stmt = select(table).where(_key_match(columns, chunk)).with_for_update()
                    for row in conn.execute(stmt).mappings():
                        values = {name: plain_value(v) for name, v in row.items() if name not in skip}
                        record, why = wanted.get(key_of(source.key, values), (None, None))
                        if record is None or not _same_values(values, record.values):
                            continue  # changed since it was read: its flag stays, the change is read again
                        params = {f"ds__k{i}": row[c.name] for i, c in enumerate(columns)}
                        if why is None and row[status.name] in FLAGGED:
                            processed.append(params)
                        elif why is not None and row[status.name] in (*FLAGGED, PROCESSED):
                            text = why if not reason_length else why[:reason_length]
                            bad.append({**params, "ds__reason": text})
                if processed:
                    conn.execute(self._update_by_key(table, columns, done), processed)
                if bad:
                    failing: dict[str, Any] = {status.name: FAILED}
                    if reason is not None:
                        failing[reason.name] = bindparam("ds__reason")
                    conn.execute(self._update_by_key(table, columns, failing), bad)
        except sa_exc.SQLAlchemyError as exc:
            if self._is_transient(exc):
                raise self._transient(exc) from None
            raise PermanentError(
                Reason.TARGET_REJECTED, f"{source.entity}: cannot set sync status: {self._first_line(exc)}"
            ) from None

    @staticmethod
    def _update_by_key(table: Table, columns: Sequence[Column], values: dict[str, Any]) -> Any:
        return update(table).where(*[c == bindparam(f"ds__k{i}") for i, c in enumerate(columns)]).values(values)

    # -- writing ----------------------------------------------------------------------------------

    def write_batch(self, target: TargetSpec, ops: Sequence[WriteOp]) -> list[WriteResult]:
        ops = list(ops)
        if not ops:
            return []
        try:
            info = self._table_info(target.entity)
            key_columns = [self._column(info.table, k, target.entity, "key") for k in target.key]
        except ConfigError as exc:
            error = PermanentError(Reason.TARGET_REJECTED, str(exc))
            return [WriteResult(op, ok=False, key=self._op_key(target, op), error=error) for op in ops]
        except TransientError as exc:
            return [WriteResult(op, ok=False, key=self._op_key(target, op), error=exc) for op in ops]
        results: list[WriteResult | None] = [None] * len(ops)
        items: list[_Item] = []
        for index, op in enumerate(ops):
            try:
                items.append(self._prepare(info.table, target, key_columns, index, op))
            except _Reject as exc:
                results[index] = self._failed(target, op, f"{target.entity} key {self._op_key(target, op)}: {exc}")
        failures: dict[int, str] = {}
        batch_error: SyncError | None = None
        if items:
            try:
                with self._transaction() as conn:
                    failures = self._run_grouped(conn, info, key_columns, items)
            except (sa_exc.SQLAlchemyError, _Regroup) as exc:
                if self._is_transient(exc):
                    batch_error = self._transient(exc)
                else:
                    try:
                        with self._transaction() as conn:
                            failures = self._run_one_by_one(conn, info, key_columns, items)
                    except sa_exc.SQLAlchemyError as again:
                        batch_error = (
                            self._transient(again)
                            if self._is_transient(again)
                            else PermanentError(
                                Reason.TARGET_REJECTED, f"{target.entity}: batch failed: {self._first_line(again)}"
                            )
                        )
        for item in items:
            if batch_error is not None:
                results[item.index] = WriteResult(item.op, ok=False, key=item.key_text, error=batch_error)
            elif item.index in failures:
                why = failures[item.index]
                message = f"{target.entity} key {item.key_text}: {why}"
                error: PermanentError = (
                    TargetChanged(Reason.CONFLICT, message) if why == _CHANGED
                    else TargetChanged(Reason.TARGET_REJECTED, message) if why == _EXISTS
                    else PermanentError(Reason.TARGET_REJECTED, message))
                results[item.index] = WriteResult(item.op, ok=False, key=item.key_text, error=error)
            else:
                results[item.index] = WriteResult(item.op, ok=True, key=item.key_text)
        return [r for r in results if r is not None]

    @staticmethod
    def _op_key(target: TargetSpec, op: WriteOp) -> str:
        return format_key([op.key.get(k) for k in target.key])

    def _failed(self, target: TargetSpec, op: WriteOp, message: str) -> WriteResult:
        return WriteResult(
            op, ok=False, key=self._op_key(target, op), error=PermanentError(Reason.TARGET_REJECTED, message)
        )

    def _prepare(
        self, table: Table, target: TargetSpec, key_columns: Sequence[Column], index: int, op: WriteOp
    ) -> _Item:
        if op.kind not in ("upsert", "update", "delete"):
            raise _Reject(f"unknown write kind {op.kind!r}")
        absent = [k for k in target.key if op.key.get(k) is None]
        if absent:
            raise _Reject(f"key field(s) {absent} missing")
        key: dict[str, Any] = {}
        for column in key_columns:
            try:
                key[column.name] = _to_db(column, op.key[column.name])
            except _Reject as exc:
                raise _Reject(f"column {column.name}: {exc}") from None
        row: dict[str, Any] = {}
        if op.kind != "delete":
            for name, value in op.values.items():
                if name in key:
                    continue
                column = table.c.get(name)
                if column is None:
                    raise _Reject(f"column {name!r} does not exist in {table.name}")
                try:
                    row[name] = _to_db(column, value)
                except _Reject as exc:
                    raise _Reject(f"column {name}: {exc}") from None
        row.update(key)
        key_text = format_key([plain_value(key[c.name]) for c in key_columns])
        for name in op.if_values or {}:
            if name not in table.c:
                raise _Reject(f"column {name!r} does not exist in {table.name}")
        return _Item(index, op, key_text, key, row)

    def _changed_since_read(self, conn: Connection, table: Table, key_columns: Sequence[Column],
                            items: Sequence[_Item]) -> set[int]:
        """Indexes of guarded items (op.if_values) whose row is gone or no longer holds what was read; the
        rows are locked until the transaction ends where the dialect can (SQLite holds the write lock)."""
        guarded = [item for item in items if item.op.if_values is not None and item.op.kind != "delete"]
        if not guarded:
            return set()
        names = sorted({name for item in guarded for name in item.op.if_values or {}})
        found: dict[tuple[Any, ...], Any] = {}
        size = max(1, min(CHUNK, 900 // len(key_columns)))
        for chunk in _chunks(guarded, size):
            wanted = [self._key_tuple(item, key_columns) for item in chunk]
            stmt = select(*key_columns, *[table.c[n] for n in names]).where(_key_match(key_columns, wanted))
            for row in conn.execute(stmt.with_for_update()).mappings():
                found[tuple(row[c.name] for c in key_columns)] = row
        changed = set()
        for item in guarded:
            row = found.get(self._key_tuple(item, key_columns))
            if row is None or any(plain_value(row[name]) != value for name, value in (item.op.if_values or {}).items()):
                changed.add(item.index)
        return changed

    def _native_upsert(self, info: _TableInfo, key_columns: Sequence[Column]) -> Any:
        """The dialect's INSERT ... ON CONFLICT construct, or None when it cannot be used here."""
        name = self._engine.dialect.name
        if frozenset(c.name for c in key_columns) not in info.unique_sets:
            return None
        if name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        elif name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        else:
            return None
        return dialect_insert

    def _upsert_statement(self, info: _TableInfo, key_columns: Sequence[Column], columns: Sequence[str]) -> Any:
        dialect_insert = self._native_upsert(info, key_columns)
        if dialect_insert is None:
            return None
        stmt = dialect_insert(info.table)
        keys = {c.name for c in key_columns}
        changes = {name: stmt.excluded[name] for name in columns if name not in keys}
        if not changes:
            return stmt.on_conflict_do_nothing(index_elements=list(key_columns))
        return stmt.on_conflict_do_update(index_elements=list(key_columns), set_=changes)

    def _existing(self, conn: Connection, table: Table, key_columns: Sequence[Column], items: Sequence[_Item]) -> set:
        found: set[tuple[Any, ...]] = set()
        size = max(1, min(CHUNK, 900 // len(key_columns)))
        for chunk in _chunks(items, size):
            wanted = [tuple(item.key[c.name] for c in key_columns) for item in chunk]
            stmt = select(*key_columns).where(_key_match(key_columns, wanted))
            found.update(tuple(row) for row in conn.execute(stmt))
        return found

    @staticmethod
    def _key_tuple(item: _Item, key_columns: Sequence[Column]) -> tuple[Any, ...]:
        return tuple(item.key[c.name] for c in key_columns)

    def _set_by_key(self, table: Table, key_columns: Sequence[Column], columns: Sequence[str]) -> tuple[Any, list[str]]:
        keys = {c.name for c in key_columns}
        changed = [name for name in columns if name not in keys]
        stmt = update(table).where(*[c == bindparam(f"ds__k{i}") for i, c in enumerate(key_columns)])
        stmt = stmt.values({name: bindparam(f"ds__v{i}") for i, name in enumerate(changed)})
        return stmt, changed

    def _update_rows(
        self,
        conn: Connection,
        table: Table,
        key_columns: Sequence[Column],
        columns: Sequence[str],
        items: Sequence[_Item],
    ) -> int:
        """UPDATE each item's row; returns the number of rows matched (-1 when the driver cannot tell)."""
        stmt, changed = self._set_by_key(table, key_columns, columns)
        if not changed:  # nothing to set: count the rows that exist instead
            return len(self._existing(conn, table, key_columns, items))
        params = [
            {**{f"ds__k{i}": item.key[c.name] for i, c in enumerate(key_columns)},
             **{f"ds__v{i}": item.row[name] for i, name in enumerate(changed)}}
            for item in items
        ]
        result = conn.execute(stmt, params)
        sane = self._engine.dialect.supports_sane_multi_rowcount if len(params) > 1 else True
        return result.rowcount if sane else -1

    def _run_grouped(
        self, conn: Connection, info: _TableInfo, key_columns: Sequence[Column], items: Sequence[_Item]
    ) -> dict[int, str]:
        table = info.table
        failures: dict[int, str] = {}
        seen: dict[tuple[Any, ...], int] = defaultdict(int)
        generations: list[list[_Item]] = []
        for item in items:
            key = self._key_tuple(item, key_columns)
            level = seen[key]
            seen[key] += 1
            if level == len(generations):
                generations.append([])
            generations[level].append(item)
        for generation in generations:
            groups: dict[tuple[Any, ...], list[_Item]] = defaultdict(list)
            for index in self._changed_since_read(conn, table, key_columns, generation):
                failures[index] = _CHANGED
            for item in generation:
                if item.index in failures:
                    continue
                kind = item.op.kind
                create_only = kind == "upsert" and item.op.create_only
                columns = () if kind == "delete" else tuple(sorted(item.row))
                groups[(kind, create_only, columns)].append(item)
            for (kind, create_only, columns), group in groups.items():
                if kind == "delete":
                    stmt = delete(table).where(*[c == bindparam(f"ds__k{i}") for i, c in enumerate(key_columns)])
                    params = [{f"ds__k{i}": item.key[c.name] for i, c in enumerate(key_columns)} for item in group]
                    conn.execute(stmt, params)
                elif kind == "update":
                    if self._update_rows(conn, table, key_columns, columns, group) != len(group):
                        # Some rows are missing (or the driver cannot say): find out row by row.
                        for item in group:
                            if self._update_rows(conn, table, key_columns, columns, [item]) == 0:
                                failures[item.index] = "not found"
                elif create_only:
                    existing = self._existing(conn, table, key_columns, group)
                    fresh = []
                    for item in group:
                        if self._key_tuple(item, key_columns) in existing:
                            failures[item.index] = _EXISTS
                        else:
                            fresh.append(item)
                    if fresh:
                        conn.execute(insert(table), [item.row for item in fresh])
                else:
                    stmt = self._upsert_statement(info, key_columns, columns)
                    if stmt is not None:
                        conn.execute(stmt, [item.row for item in group])
                        continue
                    existing = self._existing(conn, table, key_columns, group)
                    old = [item for item in group if self._key_tuple(item, key_columns) in existing]
                    new = [item for item in group if self._key_tuple(item, key_columns) not in existing]
                    if old and self._update_rows(conn, table, key_columns, columns, old) not in (len(old), -1):
                        raise _Regroup("a row changed while the batch ran")
                    if new:
                        conn.execute(insert(table), [item.row for item in new])
        return failures

    def _run_single(self, conn: Connection, info: _TableInfo, key_columns: Sequence[Column], item: _Item) -> str | None:
        """One op; returns why it failed when that is not a database error."""
        table = info.table
        kind = item.op.kind
        columns = sorted(item.row)
        if kind == "delete":
            conn.execute(delete(table).where(_key_match(key_columns, [self._key_tuple(item, key_columns)])))
            return None
        if self._changed_since_read(conn, table, key_columns, [item]):
            return _CHANGED
        if kind == "update":
            return "not found" if self._update_rows(conn, table, key_columns, columns, [item]) == 0 else None
        if item.op.create_only:
            if self._existing(conn, table, key_columns, [item]):
                return _EXISTS
            conn.execute(insert(table), [item.row])
            return None
        stmt = self._upsert_statement(info, key_columns, columns)
        if stmt is not None:
            conn.execute(stmt, [item.row])
        elif self._update_rows(conn, table, key_columns, columns, [item]) == 0:
            conn.execute(insert(table), [item.row])
        return None

    def _run_one_by_one(
        self, conn: Connection, info: _TableInfo, key_columns: Sequence[Column], items: Sequence[_Item]
    ) -> dict[int, str]:
        failures: dict[int, str] = {}
        for item in items:
            savepoint = conn.begin_nested()
            try:
                why = self._run_single(conn, info, key_columns, item)
            except sa_exc.SQLAlchemyError as exc:
                savepoint.rollback()
                if self._is_transient(exc):
                    raise
                failures[item.index] = self._first_line(exc)
                continue
            if why is None:
                savepoint.commit()
            else:
                savepoint.rollback()
                failures[item.index] = why
        return failures

    def close(self) -> None:
        self._engine.dispose()
