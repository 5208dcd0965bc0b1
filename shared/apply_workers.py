"""Apply workers for the embedded runtime: in the calling process, or in worker processes.

Apply is CPU-bound Python, so threads would share one core (the GIL). With `workers >= 1` (the default)
apply runs in worker *processes*, each with its own `SyncApp.local` on the same workdir (SQLite in WAL
mode serialises their writes; the bus locks batches with BEGIN IMMEDIATE):

- Worker i of n receives only its shard of the queue (`shard=(i, n)`, crc32 of flow|key, the two flows
  of a bidirectional pair in one shard), so no two workers ever hold versions of one record at once; a
  flow that looks up another is received only after the earlier messages of that flow are settled, as a
  single in-order receiver would apply them. A replacement worker takes over the same shard.
- Each worker reports every batch's outcomes over a pipe *before* settling it and confirms after. Pipe
  writes are synchronous, so when a worker dies the parent knows which batch was in flight; it asks the
  bus how far that batch was settled (completed rows are gone, dead-lettered ones are marked), counts
  exactly that, releases the dead worker's locks and starts a replacement. After `max_restarts` the
  parent applies that shard itself. The death goes to `tally.errors`.
- A batch is small (`APPLY_BATCH`): what a worker has received is what it has in flight, so a worker killed
  after writing the target but before saving record state costs at most one batch written again, and the
  locks it held are released without counting a delivery against those messages (the bus can tell that
  their holder died).
- Workers finish their batch, settle, report and exit when told to stop (EOF on their stop pipe), and exit
  at once when the parent dies (SIGKILL included): a watchdog thread waits on the parent's sentinel; their
  locks are released by the next run. They ignore SIGINT and SIGTERM, which a terminal or a service manager
  sends to the whole process group: the parent gets it too and decides (were workers to exit on it, the
  parent could take them for crashed and start replacements while it stops). A pipe per worker, not a shared
  Event: a worker killed inside `Event.wait()` leaves the Event's condition waiting for a sleeper that never
  wakes, and `set()` blocks forever. Workers still busy `STOP_TIMEOUT` after being told are killed; what
  they held goes back to the queue.

With `workers=0` the calling process applies, one batch at a time (tests, fakes, small runs).
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from shared.app import SyncApp
from shared.config import Config
from shared.engine.apply import apply_batch
from shared.engine.outcome import Kind, Outcome
from shared.engine.settle import settle
from shared.engine.tally import Tally
from shared.ports.bus import Received

# Messages received, applied and settled at a time per worker: the most a crash makes us write again. At 100
# the embedded SQL path runs about as fast as with 1,000 (bench/crash_redo.py); on a Dataverse target it is one
# $batch round trip per 100 writes, small next to the time Dataverse takes for the writes themselves.
APPLY_BATCH = 100
RECEIVE_WAIT = 0.2  # seconds the main loop waits for work or reports before looking around again
IDLE_POLL = 0.05  # seconds between receives on an empty queue (or shard)
STALL_RELEASE = 1.0  # no progress for this long: release locks of dead holders (a previous run's workers)
STOP_TIMEOUT = 30.0  # workers get this long to finish their batch when told to stop, then are killed
# Imported once by the fork server, so a worker starts in milliseconds. Not the SQLite stores: per-process
# state created at import (sqlite_tables' etag prefix) would be shared by every worker forked from it.
# shared.forkserver_signals makes the fork server itself ignore SIGTERM (see that module).
_PRELOAD = ["shared.forkserver_signals", "sqlalchemy", "sqlalchemy.dialects.sqlite", "sqlalchemy.orm", "pydantic",
            "croniter", "shared.apply_workers", "shared.connectors.sql"]
_PER_PROCESS = ["shared.state.sqlite_tables"]  # must be imported by each worker itself


def default_workers() -> int:
    """One apply process per core, at most 4: past that the single SQLite writer is the limit (untested)."""
    return max(1, min(os.cpu_count() or 1, 4))


@dataclass
class RunOptions:
    workers: int = field(default_factory=default_workers)  # apply processes; 0 = apply in the calling process
    drain_bound: float = 60.0  # --once waits for retries due within this many seconds
    batch_size: int = APPLY_BATCH
    workdir: Path | None = None  # SyncApp.local's workdir; by default the folder of the app's SQLite bus
    max_restarts: int = 5  # per worker slot; then the calling process applies that shard itself
    # "module:function", called in every worker process with its SyncApp; may return a callable whose
    # (picklable) result at exit is collected in tally.worker_reports. For benchmarks and profiling.
    worker_init: str | None = None
    # Workers set up telemetry as the CLI did for itself (telemetry.configure(console=...)); None: leave it.
    telemetry_console: bool | None = None
    stop_timeout: float = STOP_TIMEOUT  # seconds workers get to finish their batch when told to stop


class _Counted(NamedTuple):
    """What Tally.record reads from an Outcome, without the message."""

    flow: str
    kind: Kind
    reason: str
    conflicts: int
    fetched_parent: str | None


# A batch's outcomes as they travel to the parent: (flow, kind, reason, conflicts, fetched parent's flow)
# -> sequence numbers.
Groups = dict[tuple[str, str, str, int, str | None], list[int]]


def _groups(outcomes: Iterable[Outcome]) -> Groups:
    groups: Groups = {}
    for o in outcomes:
        group = (o.flow, str(o.kind), str(o.reason), o.conflicts, o.fetched_parent)
        groups.setdefault(group, []).append(o.received.sequence_number)
    return groups


def _record(tally: Tally, groups: Groups) -> int:
    counted = [_Counted(flow, Kind(kind), reason, conflicts, parent)
               for (flow, kind, reason, conflicts, parent), seqs in groups.items() for _ in seqs]
    tally.record(counted)  # type: ignore[arg-type] - Tally.record reads the fields an Outcome has
    return len(counted)


def _settled_part(bus: Any, queue: str, groups: Groups) -> Groups | None:
    """The part of a batch whose settling took effect, read back from the bus: a completed message is gone,
    a dead-lettered one is marked dead. None when the bus cannot tell."""
    states_of = getattr(bus, "message_states", None)
    if states_of is None:
        return None
    states = states_of(queue, [seq for seqs in groups.values() for seq in seqs])
    part: Groups = {}
    for group, seqs in groups.items():
        if group[1] == Kind.DEAD_LETTER:
            took = [s for s in seqs if states.get(s) is True]
        else:
            took = [s for s in seqs if s not in states]
        if took:
            part[group] = took
    return part


def describe_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _abandon(settler: Any, batch: Iterable[Received]) -> None:
    for received in batch:
        try:
            settler.abandon(received)
        except Exception:  # noqa: BLE001 - settled already, or the lock expiry redelivers it anyway
            pass


def _apply_and_settle(app: SyncApp, settler: Any, batch: list[Received], errors: list[str],
                      before_settle: Callable[[Groups], None] | None = None) -> Groups:
    """Apply one batch and settle it; returns what to count. An exception in apply abandons the batch
    (its messages come back); one in settle counts what the bus shows as settled and abandons the rest."""
    try:
        outcomes = apply_batch(app, batch)
    except Exception as exc:  # a bug or an outage: leave the messages to redelivery and the delivery count
        errors.append(describe_error(exc))
        _abandon(settler, batch)
        return {}
    groups = _groups(outcomes)
    if before_settle:
        before_settle(groups)
    try:
        settle(app, settler, outcomes)
    except Exception as exc:  # noqa: BLE001
        errors.append(f"settling: {describe_error(exc)}")
        part = _settled_part(app.bus, app.queue, groups) or {}
        _abandon(settler, batch)
        return part
    return groups


class _InProcess:
    """Applies in the calling thread: the whole queue (workers=0), or one shard a dead worker left."""

    def __init__(self, app: SyncApp, tally: Tally, options: RunOptions, shard: tuple[int, int] | None = None,
                 owns_app: bool = False) -> None:
        self.app, self.tally, self.options, self.shard, self.owns_app = app, tally, options, shard, owns_app
        self.settler = app.bus.settler(app.queue)
        self.errors: list[str] = []
        self.reports: list[Any] = []

    def step(self, max_wait: float = RECEIVE_WAIT) -> int:
        extra = {"shard": self.shard} if self.shard else {}
        batch = self.app.bus.receive(self.app.queue, max_messages=self.options.batch_size, max_wait=max_wait,
                                     **extra)
        if not batch:
            return 0
        return _record(self.tally, _apply_and_settle(self.app, self.settler, batch, self.errors))

    def close(self) -> None:
        if self.owns_app:
            self.app.close()


# -- worker processes ------------------------------------------------------------------------------------


@dataclass
class _WorkerSpec:
    config: Config
    workdir: Path
    retry_base: float
    queue: str
    batch_size: int
    shard: tuple[int, int]
    shard_groups: dict[str, str]
    receive_after: dict[str, tuple[str, ...]]
    env: dict[str, str]
    cwd: str
    worker_init: str | None = None
    telemetry_console: bool | None = None
    log_level: int = logging.WARNING  # the runner's `dualsync` log level: records at it go to the runner


class _ReportPipe:
    """The worker's end of its report pipe, one message at a time: a connector may log from its own threads."""

    def __init__(self, conn: multiprocessing.connection.Connection) -> None:
        self.conn = conn
        self.sending = threading.Lock()

    def send(self, message: tuple) -> None:
        with self.sending:
            self.conn.send(message)


class _ForwardLog(logging.Handler):
    """A worker's log records go to the runner over its report pipe, which logs them as its own: so they show
    where the runner shows its log (above its progress bar, at its level), never straight onto the terminal."""

    def __init__(self, conn: _ReportPipe, level: int) -> None:
        super().__init__(level)
        self.conn = conn

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.conn.send(("log", record.levelno, record.name, record.getMessage()))
        except (OSError, ValueError):  # the runner is gone: the worker is about to exit with it
            pass


def _forward_log(conn: _ReportPipe, level: int) -> None:
    log = logging.getLogger("dualsync")
    log.addHandler(_ForwardLog(conn, level))
    log.setLevel(level)
    log.propagate = False  # not also to stderr by logging's last resort


def _local_app(spec: _WorkerSpec) -> SyncApp:
    app = SyncApp.local(spec.config, spec.workdir, spec.retry_base)
    app.queue = spec.queue
    app.bus.shard_groups = dict(spec.shard_groups)  # type: ignore[attr-defined] - the SQLite bus
    app.bus.receive_after = dict(spec.receive_after)  # type: ignore[attr-defined]
    return app


def _exit_with_parent() -> None:
    """Die as soon as the parent does, whatever it died of; the next run releases our locks."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()
        os._exit(70)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _call_init(target: str | None, app: SyncApp) -> Callable[[], Any] | None:
    if not target:
        return None
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)(app)


class _StopSignal:
    """A worker's stop flag: set by anything on, or the end of, its stop pipe from the parent."""

    def __init__(self, conn: multiprocessing.connection.Connection) -> None:
        self.conn = conn
        self.stopped = False

    def wait(self, timeout: float) -> bool:
        if not self.stopped:
            try:
                self.stopped = self.conn.poll(timeout)
            except (EOFError, OSError):
                self.stopped = True
        return self.stopped

    def is_set(self) -> bool:
        return self.wait(0)


def _worker_main(spec: _WorkerSpec, conn: multiprocessing.connection.Connection,
                 stop_conn: multiprocessing.connection.Connection) -> None:
    """One apply worker: its shard of the queue until told to stop. Reports over `conn`: ("batch", n, groups)
    before settling batch n, ("settled", n, groups) after it (only the part that took effect if settling
    failed), ("error", text), and ("exit", report) when it stops as told. Dying without "exit" is a crash."""
    stop = _StopSignal(stop_conn)
    for signum in (signal.SIGINT, signal.SIGTERM):  # they reach the whole process group; the parent decides
        signal.signal(signum, signal.SIG_IGN)
    _exit_with_parent()
    conn = _ReportPipe(conn)  # type: ignore[assignment] - sends only, from here on
    _forward_log(conn, spec.log_level)  # type: ignore[arg-type]
    # A fork server's children inherit the server's environment and directory, not the parent's current ones.
    os.environ.clear()
    os.environ.update(spec.env)
    os.chdir(spec.cwd)
    for name in _PER_PROCESS:
        if name in sys.modules:  # came with the fork server (a preloaded module started importing it)
            importlib.reload(sys.modules[name])
    app: SyncApp | None = None
    try:
        app = _local_app(spec)
        if spec.telemetry_console is not None:
            from shared import telemetry

            telemetry.configure(console=spec.telemetry_console)
        finish = _call_init(spec.worker_init, app)
        settler = app.bus.settler(app.queue)
        errors: list[str] = []
        number = 0
        announced: list[int] = []

        def announce(groups: Groups) -> None:
            conn.send(("batch", number, groups))  # returns once it is in the pipe: it survives our death
            announced.append(number)

        while not stop.is_set():
            try:
                batch = app.bus.receive(app.queue, max_messages=spec.batch_size, max_wait=0,
                                        shard=spec.shard)  # type: ignore[call-arg] - the SQLite bus
            except Exception as exc:  # noqa: BLE001 - e.g. the database stayed locked past its timeout
                conn.send(("error", f"receiving: {describe_error(exc)}"))
                stop.wait(RECEIVE_WAIT)
                continue
            if not batch:
                stop.wait(IDLE_POLL)
                continue
            number += 1
            counted = _apply_and_settle(app, settler, batch, errors, before_settle=announce)
            for error in errors:
                conn.send(("error", error))
            errors.clear()
            if announced:
                conn.send(("settled", number, counted))
                announced.clear()
        conn.send(("exit", finish() if finish else None))
    except BaseException as exc:
        # No "exit": the parent treats this as a crash, counts what settled and starts a replacement.
        try:
            conn.send(("error", f"worker stopped: {describe_error(exc)}"))
        except OSError:
            pass
        raise
    finally:
        if app is not None:
            app.close()


def _context() -> Any:
    """A fork server (POSIX): workers fork from a clean, single-threaded process that preloaded our modules,
    never from this one, whose pull thread may hold locks. Elsewhere spawn."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    return ctx


@dataclass
class _Slot:
    """Worker `index` of the pool: its process, its report pipe, the batch it has in flight."""

    index: int
    process: Any = None
    conn: Any = None
    stop: Any = None  # the write end of the worker's stop pipe
    pending: tuple[int, Groups] | None = None
    exited: bool = False  # said goodbye ("exit" received)
    done: bool = False  # process gone and accounted for
    restarts: int = 0
    adopted: _InProcess | None = None  # after max_restarts, the parent applies this shard


class _ProcessPool:
    """The parent's side of the worker processes."""

    def __init__(self, app: SyncApp, tally: Tally, options: RunOptions, workdir: Path) -> None:
        self.app, self.tally, self.options = app, tally, options
        self.errors: list[str] = []
        self.reports: list[Any] = []
        self.stopping = False
        n = options.workers
        config = app.config
        self.spec = dict(config=config, workdir=workdir, retry_base=app.retry_base, queue=app.queue,
                         batch_size=options.batch_size, shard_groups=_shard_groups(config),
                         receive_after=_receive_after(config), worker_init=options.worker_init,
                         telemetry_console=options.telemetry_console,
                         log_level=logging.getLogger("dualsync").getEffectiveLevel())
        self.ctx = _context()
        self.slots = [_Slot(i) for i in range(n)]
        for slot in self.slots:
            self._start(slot)

    def _start(self, slot: _Slot) -> None:
        spec = _WorkerSpec(**self.spec, shard=(slot.index, len(self.slots)), env=dict(os.environ), cwd=os.getcwd())
        reader, writer = self.ctx.Pipe(duplex=False)
        stop_reader, stop_writer = self.ctx.Pipe(duplex=False)
        process = self.ctx.Process(target=_worker_main, args=(spec, writer, stop_reader), daemon=True,
                                   name=f"dualsync-apply-{slot.index}")
        process.start()
        writer.close()  # the worker holds the only write end: EOF means it is gone
        stop_reader.close()  # and the only read end of its stop pipe
        if slot.stop is not None:
            slot.stop.close()
        slot.process, slot.conn, slot.stop = process, reader, stop_writer
        slot.pending, slot.exited, slot.done = None, False, False

    def step(self, max_wait: float = RECEIVE_WAIT) -> int:
        """Handle reports and dead workers, waiting up to max_wait for something to happen. Returns how
        many messages were settled (and counted) meanwhile."""
        settled = 0
        for slot in self.slots:
            if slot.adopted is not None and not self.stopping:
                settled += slot.adopted.step(max_wait=0)
                max_wait = 0
        live = [s for s in self.slots if not s.done and s.process is not None]
        waitables = [s.conn for s in live if s.conn is not None] + [s.process.sentinel for s in live]
        if waitables:
            multiprocessing.connection.wait(waitables, timeout=max_wait)
        elif max_wait:
            time.sleep(max_wait)
        for slot in live:
            settled += self._read(slot)
            if not slot.process.is_alive():
                settled += self._read(slot)  # whatever it wrote before it died is still in the pipe
                settled += self._bury(slot)
        return settled

    def _read(self, slot: _Slot) -> int:
        settled = 0
        while slot.conn is not None:
            try:
                if not slot.conn.poll():
                    break
                message = slot.conn.recv()
            except (EOFError, OSError):  # the worker is gone (possibly mid-message: that batch was unsettled)
                slot.conn.close()
                slot.conn = None
                break
            kind = message[0]
            if kind == "batch":
                slot.pending = (message[1], message[2])
            elif kind == "settled":
                settled += _record(self.tally, message[2])
                slot.pending = None
            elif kind == "error":
                self.errors.append(f"worker {slot.index}: {message[1]}")
            elif kind == "log":
                logging.getLogger(message[2]).log(message[1], "%s", message[3])
            elif kind == "exit":
                slot.exited = True
                if message[1] is not None:
                    self.reports.append(message[1])
        return settled

    def _bury(self, slot: _Slot) -> int:
        """A worker process is gone: count what it settled, free its locks, replace it if it crashed."""
        slot.process.join()
        if slot.conn is not None:
            slot.conn.close()
            slot.conn = None
        slot.done = True
        if slot.exited:  # said goodbye after being told to stop: a clean exit
            return 0
        settled = 0
        if slot.pending is not None:
            settled = _record(self.tally, _settled_part(self.app.bus, self.app.queue, slot.pending[1]) or {})
            slot.pending = None
        release_orphaned_locks(self.app)
        code = slot.process.exitcode
        how = f"signal {signal.Signals(-code).name}" if code and code < 0 else f"exit code {code}"
        if self.stopping:
            self.errors.append(f"worker {slot.index} (pid {slot.process.pid}) died ({how}) while stopping")
        elif slot.restarts < self.options.max_restarts:
            slot.restarts += 1
            self.errors.append(f"worker {slot.index} (pid {slot.process.pid}) died ({how}); restarted")
            self._start(slot)
        else:
            self.errors.append(f"worker {slot.index} (pid {slot.process.pid}) died ({how}) "
                               f"{slot.restarts + 1} times; its shard is applied in the main process")
            app = _local_app(_WorkerSpec(**self.spec, shard=(slot.index, len(self.slots)), env={}, cwd=""))
            slot.adopted = _InProcess(app, self.tally, self.options, shard=(slot.index, len(self.slots)),
                                      owns_app=True)
            slot.adopted.errors = self.errors
        return settled

    def close(self) -> None:
        """Tell the workers to stop, let them finish their batch and report, then reap them. Bounded: a worker
        still busy after `stop_timeout` is killed, and what it held goes back to the queue."""
        self.stopping = True
        for slot in self.slots:
            if slot.stop is not None:
                slot.stop.close()  # EOF on the worker's stop pipe; a dead worker cannot block this
                slot.stop = None
        deadline = time.monotonic() + self.options.stop_timeout
        while any(not s.done for s in self.slots if s.process is not None):
            if time.monotonic() > deadline:
                for slot in self.slots:
                    if not slot.done and slot.process.is_alive():
                        slot.process.kill()
                deadline = float("inf")
            self.step(max_wait=RECEIVE_WAIT)
        for slot in self.slots:
            if slot.adopted is not None:
                slot.adopted.close()


def _shard_groups(config: Config) -> dict[str, str]:
    """The two flows of a bidirectional pair name a record by different keys but share its state: one shard."""
    return {name: f"pair:{config.pair_of(name)}" for name in config.flows if config.reverse_of(name) is not None}


def _receive_after(config: Config) -> dict[str, tuple[str, ...]]:
    """Flow -> the other flows it looks up: their earlier messages are settled before its own are received."""
    after: dict[str, tuple[str, ...]] = {}
    for name, flow in config.flows.items():
        parents = sorted({p for f in flow.fields for p in f.lookup_flows() if p != name})
        if parents:
            after[name] = tuple(parents)
    return after


def _workdir(app: SyncApp, options: RunOptions) -> Path | None:
    """Where worker processes can open the same stores, or None when they cannot (fakes, Azure)."""
    if options.workdir is not None:
        return Path(options.workdir).resolve()
    path = getattr(app.bus, "path", None)
    if not isinstance(path, str) or Path(path).name != "bus.db" or app.connector_factory is not None:
        return None
    workdir = Path(path).resolve().parent
    return workdir if (workdir / "state.db").exists() else None


def start_appliers(app: SyncApp, tally: Tally, options: RunOptions) -> _InProcess | _ProcessPool:
    workdir = _workdir(app, options) if options.workers >= 1 else None
    if workdir is None:
        return _InProcess(app, tally, options)
    return _ProcessPool(app, tally, options, workdir)


# -- the two run modes ---------------------------------------------------------------------------------


class ProgressWatch:
    """When nothing settles for a while, free the locks of dead holders (a previous run's workers)."""

    def __init__(self, app: SyncApp) -> None:
        self.app = app
        self.last_progress = self.last_release = time.monotonic()

    def progressed(self, settled: int) -> None:
        now = time.monotonic()
        if settled:
            self.last_progress = now
        elif now - self.last_progress > STALL_RELEASE and now - self.last_release > STALL_RELEASE:
            # Nothing settles: maybe a previous run's worker died holding locks after this run started.
            self.last_release = now
            if has_active(self.app):
                release_orphaned_locks(self.app)


def finish_run(tally: Tally, appliers: _InProcess | _ProcessPool, errors: list[str]) -> None:
    tally.errors = errors + appliers.errors  # type: ignore[attr-defined]
    tally.worker_reports = appliers.reports  # type: ignore[attr-defined]


def release_orphaned_locks(app: SyncApp) -> None:
    release = getattr(app.bus, "release_orphaned_locks", None)
    if release:
        release(app.queue)


def has_active(app: SyncApp) -> bool:
    has_active = getattr(app.bus, "has_active", None)
    return has_active(app.queue) if has_active else app.bus.counts(app.queue).active > 0
