"""The world the model-based checker drives: two systems of a bidirectional pair, a one-way flow, and the
real embedded pipeline between them, with ports wrapped so a crash or a failure can be injected at any step.

- CRM: a Dataverse-like system in memory. Like Dataverse, it hands values back in its own form whatever
  form they were written in: a date-time as `2024-05-01T10:00:00Z` (whole seconds), a decimal as a JSON
  number (10, 10.5). Every write bumps a global version, so our own writes come back as changes.
- ERP: a SQLite database through the real SQL connector: `customers` (the other side of the pair) and
  `archive` (target of the one-way flow, keyed by the account's `code`). DATETIME and NUMERIC(12,2)
  columns read back as `2024-05-01T10:00:00` and `'10.00'`. Triggers bump a database-wide version on every
  write (a sequence, as a rowversion would: it never goes back, not even after a delete) and log every
  write that changes no value.
- The pipeline: the SQLite state store and the SQLite bus from `shared/`, on a clock the test moves, so
  lock expiry, scheduled retries, leases and the duplicate-detection window are all under control.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import MetaData, Table, create_engine, delete, insert, select, update

from shared.app import SyncApp
from shared.bus.sqlite_bus import SqliteBus
from shared.config import TargetSpec, parse_config
from shared.connectors.sql import SqlConnector
from shared.engine.apply import apply_batch
from shared.engine.outcome import Kind, Outcome
from shared.engine.pull import pull_flow
from shared.engine.reconcile import reconcile_deletes
from shared.engine.settle import settle
from shared.errors import LockLostError, TransientError
from shared.keys import format_key
from shared.ports.bus import Received
from shared.ports.connector import WriteOp, WriteResult
from shared.state.sqlite_tables import SqliteTables
from shared.state.store import StateStore
from tests.fakes.memory_connector import MemoryConnector

TO_ERP, TO_CRM, TO_ARCHIVE = "accounts-to-erp", "customers-to-crm", "accounts-to-archive"
FLOWS = (TO_ERP, TO_CRM, TO_ARCHIVE)
PAIR = "accounts"
SIDES = ("crm", "erp")
SYNCED = ("name", "amount", "due")  # the fields users edit; `code` is fixed per key
LOCK_SECONDS = 60.0
PULLER = "puller"  # one puller identity: a crashed pull's lease is taken over by the next run


class Crash(BaseException):  # noqa: N818 - a process dying, not an error anyone may catch
    """The process dies at this step: nothing after it runs, nothing in flight is settled."""


class FakeClock:
    def __init__(self) -> None:
        self.t = datetime(2027, 1, 15, 9, 0, tzinfo=UTC).timestamp()
        self._lock = threading.Lock()

    def time(self) -> float:
        with self._lock:
            return self.t

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.time(), UTC)

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.t += seconds


# ---------------------------------------------------------------------------------------------- values


# DUALSYNC_MODEL_FORMS=same makes the CRM hold values in the ERP's forms: for exploring the other invariants
# while values that round-trip in another form still make the pair ping-pong.
SAME_FORMS = os.environ.get("DUALSYNC_MODEL_FORMS") == "same"


def crm_amount(cents: int, same_forms: bool = False) -> int | float | str:
    """Dataverse returns a decimal as a JSON number."""
    value = Decimal(cents) / 100
    if same_forms:
        return format(value.quantize(Decimal("0.01")), "f")
    return int(value) if value == value.to_integral_value() else float(value)


def crm_due(moment: datetime, same_forms: bool = False) -> str:
    if same_forms:
        return moment.astimezone(UTC).replace(tzinfo=None).isoformat()
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def cents_of(value: Any) -> int | None:
    return None if value is None else int(Decimal(str(value)) * 100)


def moment_of(value: Any) -> datetime | None:
    if value is None:
        return None
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).replace(microsecond=0)


def business(row: dict[str, Any] | None) -> dict[str, Any] | None:
    """A row as business values (what users mean), whatever form its system holds them in."""
    if row is None:
        return None
    return {"code": row.get("code"), "name": row.get("name"), "amount": cents_of(row.get("amount")),
            "due": moment_of(row.get("due"))}


# ---------------------------------------------------------------------------------------------- CRM


class DataverseLike(MemoryConnector):
    """Rows in memory, values normalised the way Dataverse returns them; counts writes that change nothing."""

    def __init__(self, same_forms: bool) -> None:
        super().__init__()
        self.same_forms = same_forms
        self.noop_writes: list[str] = []

    def normalise(self, row: dict[str, Any]) -> dict[str, Any]:
        out = dict(row)
        if out.get("amount") is not None:
            out["amount"] = crm_amount(cents_of(out["amount"]) or 0, self.same_forms)
        if out.get("due") is not None:
            out["due"] = crm_due(moment_of(out["due"]), self.same_forms)  # type: ignore[arg-type]
        return out

    def put(self, entity: str, key: str, row: dict[str, Any]) -> None:
        super().put(entity, key, self.normalise(row))

    def write_batch(self, target: TargetSpec, ops: Sequence[WriteOp]) -> list[WriteResult]:
        rows = self.tables.setdefault(target.entity, {})
        for op in ops:
            key = format_key([op.key[f] for f in target.key])
            before = rows.get(key)
            if op.kind != "delete" and before is not None:
                after = self.normalise({**before, **op.values})
                if business(after) == business(before):
                    self.noop_writes.append(f"crm {target.entity} {key}: {op.values}")
        return super().write_batch(target, ops)


# ---------------------------------------------------------------------------------------------- ERP

_ERP_SCHEMA = """
CREATE TABLE seq (n INTEGER NOT NULL);
INSERT INTO seq VALUES (0);
CREATE TABLE noop_log (tbl TEXT, k TEXT);
CREATE TABLE write_log (tbl TEXT, k TEXT);
CREATE TABLE customers (account_number TEXT PRIMARY KEY, code TEXT, name TEXT, amount NUMERIC(12,2),
    due DATETIME, version INTEGER NOT NULL DEFAULT 0);
CREATE TABLE archive (code TEXT PRIMARY KEY, account TEXT, name TEXT, amount NUMERIC(12,2), due DATETIME,
    version INTEGER NOT NULL DEFAULT 0);
"""

# Per table: a write bumps the database-wide sequence into `version`; a write whose values all compare
# equal (as values: datetime() and REAL, whatever text the writer used) is logged as changing nothing.
_ERP_TRIGGERS = """
CREATE TRIGGER {t}_born AFTER INSERT ON {t} BEGIN
    UPDATE seq SET n = n + 1;
    UPDATE {t} SET version = (SELECT n FROM seq) WHERE {k} = NEW.{k};
    INSERT INTO write_log VALUES ('{t}', NEW.{k});
END;
CREATE TRIGGER {t}_bump AFTER UPDATE OF {cols} ON {t} BEGIN
    UPDATE seq SET n = n + 1;
    UPDATE {t} SET version = (SELECT n FROM seq) WHERE {k} = NEW.{k};
    INSERT INTO write_log VALUES ('{t}', NEW.{k});
END;
CREATE TRIGGER {t}_noop AFTER UPDATE OF {cols} ON {t}
WHEN OLD.name IS NEW.name AND CAST(OLD.amount AS REAL) IS CAST(NEW.amount AS REAL)
     AND datetime(OLD.due) IS datetime(NEW.due) {extra}
BEGIN INSERT INTO noop_log VALUES ('{t}', NEW.{k}); END;
"""


def make_erp(path: Path) -> str:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(_ERP_SCHEMA)
    conn.executescript(_ERP_TRIGGERS.format(t="customers", k="account_number", cols="code, name, amount, due",
                                            extra="AND OLD.code IS NEW.code"))
    conn.executescript(_ERP_TRIGGERS.format(t="archive", k="code", cols="account, name, amount, due",
                                            extra="AND OLD.account IS NEW.account"))
    conn.close()
    return f"sqlite:///{path}"


# ---------------------------------------------------------------------------------------------- config


def config(erp_url: str, typed_fields: bool = True) -> dict[str, Any]:
    common = {"pair": PAIR, "master": "crm", "conflicts": "master_wins", "deletes": "delete", "page_size": 3}
    typed = [{"from": "name", "to": "name"}, {"from": "amount", "to": "amount", "type": "decimal"},
             {"from": "due", "to": "due", "type": "datetime"}]
    if not typed_fields:  # declared types still turn a value into another form (issue 11 item 4)
        typed = [{k: v for k, v in f.items() if k != "type"} for f in typed]
    return {
        "systems": {"crm": {"kind": "sql", "url": "sqlite://"}, "erp": {"kind": "sql", "url": erp_url}},
        "flows": {
            TO_ERP: common | {
                "source": {"system": "crm", "entity": "accounts", "key": "accountnumber"},
                "target": {"system": "erp", "entity": "customers", "key": "account_number"},
                "fields": [{"from": "accountnumber", "to": "account_number"}, {"from": "code", "to": "code"},
                           *typed]},
            TO_CRM: common | {
                "source": {"system": "erp", "entity": "customers", "key": "account_number",
                           "watermark": "version", "version": "version"},
                "target": {"system": "crm", "entity": "accounts", "key": "accountnumber"},
                "fields": [{"from": "account_number", "to": "accountnumber"}, {"from": "code", "to": "code"},
                           *typed]},
            TO_ARCHIVE: {
                "deletes": "delete", "page_size": 3,
                "source": {"system": "crm", "entity": "accounts", "key": "accountnumber"},
                "target": {"system": "erp", "entity": "archive", "key": "code"},
                "fields": [{"from": "code", "to": "code"}, {"from": "accountnumber", "to": "account"}, *typed]},
        },
    }


# ---------------------------------------------------------------------------------------------- faults


@dataclass
class Gate:
    """Holds one thread at one step until released: the interleaving of two workers."""

    step: str
    thread: int
    reached: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


class Faults:
    """Crashes, transient failures and gates, armed by the test and hit by the wrapped ports."""

    def __init__(self) -> None:
        self.crashes: dict[str, int] = {}  # step -> how many hits to let pass first
        self.transients: dict[str, int] = {}  # target system -> writes left to fail with a 503 or a 429
        # A 503 spends one of a change's attempts (a 429 does not): an example injects fewer 503s in all than a
        # flow's max_attempts, so no change can be dead-lettered as RetriesExhausted by injected faults alone.
        self.unavailable_left = 5
        self.gate: Gate | None = None
        self.fired: list[str] = []
        self._lock = threading.Lock()

    def arm(self, step: str, skip: int = 0) -> None:
        self.crashes[step] = skip

    def disarm(self) -> None:
        self.crashes.clear()
        self.transients.clear()

    def hit(self, step: str) -> None:
        gate = self.gate
        if gate is not None and gate.step == step and gate.thread == threading.get_ident():
            gate.reached.set()
            gate.release.wait(10)
        with self._lock:
            if step not in self.crashes:
                return
            if self.crashes[step] > 0:
                self.crashes[step] -= 1
                return
            del self.crashes[step]
            self.fired.append(step)
        raise Crash(step)

    def transient(self, system: str) -> bool:
        with self._lock:
            left = self.transients.get(system, 0)
            if left:
                self.transients[system] = left - 1
            return left > 0


class FaultyConnector:
    def __init__(self, inner: Any, system: str, faults: Faults) -> None:
        self.inner, self.system, self.faults = inner, system, faults

    def write_batch(self, target: TargetSpec, ops: Sequence[WriteOp]) -> list[WriteResult]:
        self.faults.hit("target:before_write")
        if self.faults.transient(self.system):
            if self.faults.unavailable_left > 0:
                self.faults.unavailable_left -= 1
                raise TransientError(f"503 Service Unavailable from {self.system} (injected)")
            raise TransientError(f"429 Too Many Requests from {self.system} (injected)", retry_after=0.01)
        results = self.inner.write_batch(target, ops)
        self.faults.hit("target:after_write")
        return results

    def read_records(self, *args: Any, **kwargs: Any) -> Any:
        self.faults.hit(f"read:{self.system}")
        return self.inner.read_records(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class FaultyState:
    """The state store with a crash point before each write."""

    def __init__(self, inner: StateStore, faults: Faults) -> None:
        self.inner, self.faults = inner, faults

    def _guard(self, name: str) -> Callable[..., Any]:
        method = getattr(self.inner, name)

        def guarded(*args: Any, **kwargs: Any) -> Any:
            self.faults.hit(f"state:{name}")
            return method(*args, **kwargs)

        return guarded

    def __getattr__(self, name: str) -> Any:
        if name in ("put_records", "link_keys", "unlink_keys", "save_cursor"):
            return self._guard(name)
        return getattr(self.inner, name)


class CountingSettler:
    def __init__(self, inner: Any, world: World) -> None:
        self.inner, self.world = inner, world

    def complete(self, messages: Sequence[Received]) -> None:
        self.world.faults.hit("bus:complete")
        self.inner.complete(messages)
        self.world.completed += len(messages)

    def abandon(self, message: Received) -> None:
        self.inner.abandon(message)

    def dead_letter(self, message: Received, reason: str, description: str) -> None:
        self.world.faults.hit("bus:dead_letter")
        self.inner.dead_letter(message, reason, description)
        self.world.dead_lettered += 1


class CountingBus:
    def __init__(self, inner: SqliteBus, world: World) -> None:
        self.inner, self.world = inner, world

    def send(self, queue: str, envelopes: Sequence[Any]) -> int:
        self.world.faults.hit("bus:send")
        accepted = self.inner.send(queue, envelopes)
        self.world.sent += accepted
        return accepted

    def settler(self, queue: str) -> CountingSettler:
        return CountingSettler(self.inner.settler(queue), self.world)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


# ---------------------------------------------------------------------------------------------- world


class World:
    """`same_forms`: the CRM holds values in the ERP's forms and no field declares a type, which takes values
    that round-trip in another form out of a scenario (the default: DUALSYNC_MODEL_FORMS)."""

    def __init__(self, root: Path, same_forms: bool = SAME_FORMS) -> None:
        self.root = root
        self.same_forms = same_forms
        self.clock = FakeClock()
        self.faults = Faults()
        self.sent = self.completed = self.dead_lettered = 0
        self.outcomes: Counter[str] = Counter()  # kind:reason of every settled delivery
        self.crm = DataverseLike(same_forms)
        self.crm.tables["accounts"] = {}
        self.erp_url = make_erp(root / "erp.db")
        self.erp_engine = create_engine(self.erp_url)
        meta = MetaData()
        self.erp_tables = {name: Table(name, meta, autoload_with=self.erp_engine) for name in ("customers", "archive")}
        connectors = {"crm": FaultyConnector(self.crm, "crm", self.faults),
                      "erp": FaultyConnector(SqlConnector(self.erp_url), "erp", self.faults)}
        self.bus = SqliteBus(root / "bus.db", clock=self.clock.time, lock_duration=LOCK_SECONDS,
                             max_delivery_count=10)
        self.app = SyncApp(
            config=parse_config(config(self.erp_url, typed_fields=not same_forms)),
            state=FaultyState(StateStore(SqliteTables(":memory:")), self.faults),  # type: ignore[arg-type]
            bus=CountingBus(self.bus, self),  # type: ignore[arg-type]
            retry_base=1.0, clock=self.clock.now, connector_factory=lambda name: connectors[name])

    def close(self) -> None:
        self.app.close()
        self.erp_engine.dispose()

    # -- users ------------------------------------------------------------------------------------
    def crm_row(self, key: str) -> dict[str, Any] | None:
        return self.crm.tables["accounts"].get(key)

    def erp_row(self, key: str, table: str = "customers") -> dict[str, Any] | None:
        t = self.erp_tables[table]
        column = t.c.account_number if table == "customers" else t.c.code
        with self.erp_engine.connect() as conn:
            row = conn.execute(select(t).where(column == key)).mappings().first()
        return dict(row) if row else None

    def erp_rows(self, table: str) -> dict[str, dict[str, Any]]:
        t = self.erp_tables[table]
        with self.erp_engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(select(t)).mappings()]
        k = "account_number" if table == "customers" else "code"
        return {r[k]: r for r in rows}

    def user_write(self, side: str, key: str, values: dict[str, Any]) -> None:
        """A user saves the record (creating it when absent) with these business values."""
        if side == "crm":
            row = {"accountnumber": key, **(self.crm_row(key) or {})}
            row.update({f: Decimal(v) / 100 if f == "amount" else v for f, v in values.items()})
            self.crm.put("accounts", key, row)
            return
        t = self.erp_tables["customers"]
        with self.erp_engine.begin() as conn:
            before = conn.exec_driver_sql("SELECT COALESCE(MAX(rowid), 0) FROM noop_log").scalar_one()
            exists = conn.execute(select(t.c.account_number).where(t.c.account_number == key)).first()
            form = _erp_form(values)
            if exists:
                conn.execute(update(t).where(t.c.account_number == key).values(form))
            else:
                conn.execute(insert(t).values(account_number=key, **form))
            # A user saving a record unchanged is not the pipeline writing nothing.
            conn.exec_driver_sql("DELETE FROM noop_log WHERE rowid > ?", (before,))

    def user_delete(self, side: str, key: str) -> None:
        if side == "crm":
            self.crm.tables["accounts"].pop(key, None)
            self.crm.versions.pop(("accounts", key), None)
            return
        t = self.erp_tables["customers"]
        with self.erp_engine.begin() as conn:
            conn.execute(delete(t).where(t.c.account_number == key))

    def engine_noop_writes(self) -> list[str]:
        """Writes by the pipeline that changed no value, on either system, since the last call."""
        with self.erp_engine.begin() as conn:
            rows = conn.exec_driver_sql("SELECT tbl, k FROM noop_log").fetchall()
            conn.exec_driver_sql("DELETE FROM noop_log")
        found = self.crm.noop_writes + [f"erp {t} {k}" for t, k in rows]
        self.crm.noop_writes = []
        return found

    # -- pipeline ---------------------------------------------------------------------------------
    def pull(self, flow: str) -> None:
        pull_flow(self.app, flow, owner=PULLER)

    def reconcile(self, flow: str) -> None:
        reconcile_deletes(self.app, flow)

    def reset_cursor(self, flow: str) -> None:
        """The delta token expired / the watermark was lost: the next pull reads everything."""
        state = self.app.state.inner  # type: ignore[attr-defined]
        cursor = state.get_cursor(flow)
        if cursor is not None:
            cursor.position = None
            state.save_cursor(cursor)

    def receive(self, n: int) -> list[Received]:
        return self.bus.receive(self.app.queue, max_messages=n, max_wait=0)

    def apply(self, batch: list[Received]) -> list[Outcome]:
        return apply_batch(self.app, batch) if batch else []

    def settle(self, outcomes: list[Outcome]) -> None:
        settle(self.app, self.app.bus.settler(self.app.queue), outcomes)
        for o in outcomes:
            self.outcomes[f"{o.kind.value}:{o.reason}"] += 1

    def deliver(self, batch: list[Received]) -> None:
        self.settle(self.apply(batch))

    def settle_stale(self, outcomes: list[Outcome]) -> None:
        """Settle what another worker may have settled already (its lock expired meanwhile)."""
        try:
            self.settle(outcomes)
        except LockLostError:
            pass

    def receive_for(self, flow: str, key: str) -> list[Received]:
        """The oldest change of one record on one flow, if any is ready; everything else received is abandoned."""
        batch = self.receive(100)
        mine = [m for m in batch if (m.envelope.application_properties.get("flow"),
                                     str(m.envelope.application_properties.get("key"))) == (flow, key)][:1]
        settler = self.bus.settler(self.app.queue)
        for message in batch:
            if message not in mine:
                settler.abandon(message)
        return mine

    def receive_versions(self) -> tuple[list[Received], list[Received]]:
        """Two versions of one record, as two workers would get them: the oldest change of the first record
        with several on the queue, and its other changes; everything else received is abandoned."""
        batch = self.receive(100)
        groups: dict[tuple[str, str], list[Received]] = {}
        for message in batch:
            props = message.envelope.application_properties
            groups.setdefault((str(props.get("flow")), str(props.get("key"))), []).append(message)
        pair = next((g for g in groups.values() if len(g) > 1), batch[:1])
        settler = self.bus.settler(self.app.queue)
        for message in batch:
            if message not in pair:
                settler.abandon(message)
        return pair[:1], pair[1:]

    def two_workers(self, first: list[Received], second: list[Received], step: str) -> None:
        """Worker A holds `first` at `step` (a port call, see Faults) while worker B applies and settles
        `second`; then A goes on."""
        self.interleave(first, step, lambda: self.deliver(second))

    def interleave(self, first: list[Received], step: str, meanwhile: Callable[[], None]) -> None:
        """Worker A holds `first` at `step` while `meanwhile` runs; then A goes on. A crash or error in A is
        raised here once both are done."""
        gate = Gate(step, 0)
        errors: list[BaseException] = []

        def worker_a() -> None:
            gate.thread = threading.get_ident()
            try:
                self.deliver(first)
            except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread
                errors.append(exc)
            finally:
                gate.reached.set()

        self.faults.gate = gate
        thread = threading.Thread(target=worker_a, name="worker-a")
        thread.start()
        gate.reached.wait(10)
        try:
            meanwhile()
        finally:
            gate.release.set()
            thread.join(10)
            self.faults.gate = None
        if errors:
            raise errors[0]

    def restart(self) -> None:
        """After a crash: the dead worker's locks run out before anyone receives its messages again."""
        self.faults.gate = None
        self.clock.advance(LOCK_SECONDS + 1)

    def drain(self, budget: int = 400) -> int:
        """Apply everything on the queue, scheduled retries included; returns how many were applied."""
        applied = 0
        for _ in range(budget):
            batch = self.receive(50)
            if not batch:
                due = self.bus.next_due(self.app.queue)
                if due is None:
                    return applied
                self.clock.advance(max(1.0, due.timestamp() - self.clock.time() + 1))
                continue
            outcomes = self.apply(batch)
            self.settle(outcomes)
            applied += sum(o.kind is Kind.APPLIED for o in outcomes)
        raise AssertionError("the queue never drained")

    def quiesce(self, passes: int = 6, until_quiet: bool = False) -> int:
        """Poll and drain until a whole pass writes nothing; returns the passes it took. `until_quiet`: until
        a pass also sends nothing new (a change dropped in one pass may be found again by the next poll)."""
        self.faults.disarm()
        self.faults.gate = None
        for n in range(1, passes + 1):
            self.clock.advance(3600)  # locks, leases, retries and the duplicate window all run out
            sent = self.sent
            for flow in FLOWS:
                self.pull(flow)
                self.reconcile(flow)
            if self.drain() == 0 and (not until_quiet or self.sent == sent):
                return n
        raise SettleError(f"the systems did not settle after {passes} poll-and-drain passes (ping-pong)")


class SettleError(AssertionError):
    pass


def _erp_form(values: dict[str, Any]) -> dict[str, Any]:
    out = dict(values)
    if "amount" in out:
        out["amount"] = Decimal(out["amount"]) / 100
    if "due" in out:
        out["due"] = out["due"].astimezone(UTC).replace(tzinfo=None)
    return out
