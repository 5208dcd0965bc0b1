"""Real concurrency on one record: several versions of the same records applied at once by independent
appliers, with nothing from the bus keeping them apart. The newest version must win in the target and in
the record state.

- processes: independent receivers (two runners on one workdir) on the embedded SQLite bus and state;
- threads: appliers calling the apply path with their own clients on Table Storage (Azurite), as several
  Functions instances would.

The target is a real SQLite ERP whose writes are slowed down a little at random, so the races happen.
"""

from __future__ import annotations

import multiprocessing
import queue
import random
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from azure.data.tables import TableServiceClient

from shared.app import SyncApp
from shared.apply_workers import RunOptions, start_appliers
from shared.bus.sqlite_bus import SqliteBus
from shared.config import parse_config
from shared.connectors.sql import SqlConnector
from shared.engine.apply import apply_batch
from shared.engine.delivery import handle_delivery
from shared.engine.outcome import Kind
from shared.engine.tally import Tally
from shared.messages import ChangeMessage, to_envelope
from shared.ports.bus import Received
from shared.state.azure_tables import AzureTables
from shared.state.store import StateStore

RECORDS, VERSIONS = 12, 5


def config(erp_url: str) -> dict[str, Any]:
    return {
        "systems": {"crm": {"kind": "sql", "url": "sqlite://"}, "erp": {"kind": "sql", "url": erp_url}},
        "flows": {"accounts": {
            "source": {"system": "crm", "entity": "accounts", "key": "accountid"},
            "target": {"system": "erp", "entity": "customers", "key": "account_number"},
            "max_attempts": 50,
            "fields": [{"from": "accountnumber", "to": "account_number"}, {"from": "name", "to": "name"}],
        }},
    }


def make_erp(path: Path) -> str:
    url = f"sqlite:///{path}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE customers (account_number TEXT PRIMARY KEY, name TEXT)"))
    engine.dispose()
    return url


def messages(grouped: bool = False) -> list[ChangeMessage]:
    """Every version of every record, shuffled; `grouped`: the versions of one record next to each other (in
    shuffled order), so that appliers taking one message each hold versions of one record at once."""
    rng = random.Random(3)
    out = []
    for r in range(RECORDS):
        versions = list(range(1, VERSIONS + 1))
        rng.shuffle(versions)
        out += [ChangeMessage(flow="accounts", op="upsert", source_system="crm", entity="accounts", key=f"k{r}",
                              version=f"{v:020d}", changed_at=datetime.now(UTC),
                              payload={"accountnumber": f"N{r}", "name": f"k{r} v{v}"}) for v in versions]
    if not grouped:
        rng.shuffle(out)
    return out


class SlowTarget:
    """The ERP, each write delayed by up to 30 ms: the window in which another applier gets ahead."""

    def __init__(self, url: str, seed: int) -> None:
        self.inner = SqlConnector(url)
        self.rng = random.Random(seed)

    def write_batch(self, target, ops):  # noqa: ANN001, ANN201
        time.sleep(self.rng.uniform(0, 0.03))
        return self.inner.write_batch(target, ops)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def assert_newest_won(state: StateStore, erp_url: str) -> None:
    engine = sa.create_engine(erp_url)
    with engine.connect() as conn:
        rows = dict(conn.execute(sa.text("SELECT account_number, name FROM customers")).all())
    engine.dispose()
    assert rows == {f"N{r}": f"k{r} v{VERSIONS}" for r in range(RECORDS)}
    states = state.get_records("accounts", [f"crm|k{r}" for r in range(RECORDS)])
    assert {rid: s.versions["crm"] for rid, s in states.items()} == {
        f"crm|k{r}": f"{VERSIONS:020d}" for r in range(RECORDS)}


# -- processes on the embedded bus --------------------------------------------------------------------------


def _receiver(workdir: str, erp_url: str, seed: int) -> None:
    """One runner's apply loop: the whole queue, no shard, until nothing is left on it (retries included)."""
    app = SyncApp.local(parse_config(config(erp_url)), workdir, retry_base=0.01)
    target = SlowTarget(erp_url, seed)
    app.connector_factory = lambda name: target
    settler = app.bus.settler(app.queue)
    deadline = time.monotonic() + 100
    try:
        while time.monotonic() < deadline:
            batch = app.bus.receive(app.queue, max_messages=4, max_wait=0.05)
            if batch:
                handle_delivery(app, batch, settler)
                continue
            counts = app.bus.counts(app.queue)
            if counts.active == 0 and counts.scheduled == 0:
                return
    finally:
        app.close()


def test_independent_receiver_processes_on_one_workdir(tmp_path):
    erp_url = make_erp(tmp_path / "erp.db")
    workdir = tmp_path / "state"
    app = SyncApp.local(parse_config(config(erp_url)), workdir)
    app.bus.send(app.queue, [to_envelope(m) for m in messages()])
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_receiver, args=(str(workdir), erp_url, seed)) for seed in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    counts = app.bus.counts(app.queue)
    assert (counts.active, counts.scheduled, counts.dead_letter) == (0, 0, 0)
    assert_newest_won(app.state, erp_url)
    app.close()


# -- threads on Table Storage -------------------------------------------------------------------------------


def test_threads_applying_versions_of_the_same_records_on_table_storage(tmp_path, azurite_tables,
                                                                         azurite_table_prefix):
    erp_url = make_erp(tmp_path / "erp.db")
    parsed = parse_config(config(erp_url))
    work: queue.Queue[ChangeMessage] = queue.Queue()
    for message in messages(grouped=True):
        work.put(message)
    pending = [work.qsize()]
    lock = threading.Lock()
    errors: list[BaseException] = []

    def applier(seed: int) -> None:
        service = TableServiceClient.from_connection_string(azurite_tables)
        state = StateStore(AzureTables(service, azurite_table_prefix))
        target = SlowTarget(erp_url, seed)
        app = SyncApp(config=parsed, state=state, bus=SqliteBus(tmp_path / f"bus{seed}.db"), retry_base=0.01,
                      connector_factory=lambda name: target)
        try:
            while True:
                with lock:
                    if pending[0] == 0:
                        return
                try:
                    message = work.get_nowait()  # one at a time: neighbours are versions of one record
                except queue.Empty:
                    time.sleep(0.005)
                    continue
                for outcome in apply_batch(app, [Received(to_envelope(message), 1, datetime.now(UTC), 1)]):
                    assert outcome.kind in (Kind.APPLIED, Kind.SKIPPED, Kind.RETRY), outcome
                    if outcome.kind is Kind.RETRY:
                        work.put(outcome.message.retry_clone())
                    else:
                        with lock:
                            pending[0] -= 1
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
            with lock:
                pending[0] = 0
        finally:
            app.close()

    threads = [threading.Thread(target=applier, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    service = TableServiceClient.from_connection_string(azurite_tables)
    assert_newest_won(StateStore(AzureTables(service, azurite_table_prefix)), erp_url)


# -- two runners, each with its apply worker processes ------------------------------------------------------


def slow_writes(app: SyncApp) -> None:
    """worker_init for the runners' worker processes: their ERP writes are slowed down like SlowTarget's."""
    connector = app.connector("erp")
    real, rng = connector.write_batch, random.Random()

    def slowed(target, ops):  # noqa: ANN001, ANN202
        time.sleep(rng.uniform(0, 0.03))
        return real(target, ops)

    connector.write_batch = slowed  # type: ignore[method-assign]


def test_two_runners_with_worker_processes_on_one_workdir(tmp_path):
    """Each runner shards the queue over its own workers; two runners on one workdir do not know of each
    other, so worker i of each holds versions of the same records at once."""
    erp_url = make_erp(tmp_path / "erp.db")
    workdir = tmp_path / "state"
    app = SyncApp.local(parse_config(config(erp_url)), workdir)
    app.bus.send(app.queue, [to_envelope(m) for m in messages(grouped=True)])
    errors: list[BaseException] = []

    def runner() -> None:
        mine = SyncApp.local(parse_config(config(erp_url)), workdir, retry_base=0.01)
        pool = start_appliers(mine, Tally(), RunOptions(workers=2, workdir=workdir, batch_size=3,
                                                        worker_init=f"{__name__}:slow_writes"))
        try:
            deadline = time.monotonic() + 100
            while time.monotonic() < deadline:
                pool.step(max_wait=0.05)
                counts = mine.bus.counts(mine.queue)
                if counts.active == 0 and counts.scheduled == 0:
                    break
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        finally:
            pool.close()
            mine.close()

    threads = [threading.Thread(target=runner) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(150)
    assert not errors, errors
    counts = app.bus.counts(app.queue)
    assert (counts.active, counts.scheduled, counts.dead_letter) == (0, 0, 0)
    assert_newest_won(app.state, erp_url)
    app.close()
