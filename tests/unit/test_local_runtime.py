"""The embedded runtime's worker processes: same counts as in process, sharded receive, crashes survived."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from demo import sample_data
from shared.app import SyncApp
from shared.bus.sqlite_bus import SqliteBus, shard_of
from shared.config import load_config
from shared.local_runtime import RunOptions, run_once
from shared.messages import Envelope

ROOT = Path(__file__).resolve().parents[2]
QUEUE = "q"
MARKERS = "DUALSYNC_TEST_MARKERS"


@pytest.fixture
def sample(tmp_path, monkeypatch):
    """sample(name, accounts, contacts, bad) -> (app, erp_url): demo databases and a local app under tmp_path/name."""
    apps = []

    def build(name: str, accounts: int, contacts: int, bad: bool = True):
        crm_url, erp_url = sample_data.build(tmp_path / name / "data", accounts, contacts, with_bad_rows=bad)
        monkeypatch.setenv("CRM_DB_URL", crm_url)
        monkeypatch.setenv("ERP_DB_URL", erp_url)
        app = SyncApp.local(load_config(sample_data.write_flows(tmp_path / name)), tmp_path / name / "state",
                            retry_base=0.02)
        apps.append(app)
        return app, erp_url

    yield build
    for app in apps:
        app.close()


def erp_rows(url: str, table: str, key: str) -> list[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [r[0] for r in conn.execute(text(f"SELECT {key} FROM {table}"))]
    finally:
        engine.dispose()


def summary(tally) -> dict:  # noqa: ANN001
    return {flow: (c.backlog, c.pulled, c.duplicates, c.applied, dict(c.skipped), c.retried, dict(c.dead_lettered),
                   c.waiting, c.adds_up())
            for flow, c in sorted(tally.flows.items())}


def test_worker_processes_count_exactly_what_the_in_process_mode_counts(sample):
    results = {}
    for workers in (0, 2):
        app, erp_url = sample(f"w{workers}", accounts=600, contacts=900)
        tally = run_once(app, RunOptions(workers=workers, batch_size=100, drain_bound=10))
        assert tally.errors == []
        results[workers] = (summary(tally), sorted(erp_rows(erp_url, "customers", "account_number")),
                            sorted(erp_rows(erp_url, "contacts", "contact_no")))
    assert results[2] == results[0]
    counts = results[2][0]
    # the bad rows dead-letter; the contact whose parent never comes waits 3 times, no other contact waits
    assert counts["accounts-to-customers"][3:8] == (596, {}, 0, {"ValidationFailed": 3, "MappingFailed": 1}, 0)
    assert counts["contacts-to-erp"][3:8] == (897, {}, 3, {"ValidationFailed": 2, "MissingReference": 1}, 0)


def envelope(flow: str, key: str, version: int) -> Envelope:
    return Envelope(message_id=f"{flow}:{key}:{version}", body=b"{}", subject=flow,
                    application_properties={"flow": flow, "key": key, "version": version})


def test_sharded_receive_hands_every_message_to_exactly_one_shard(tmp_path):
    bus = SqliteBus(tmp_path / "bus.db", lock_duration=30)
    sent = [envelope(flow, f"k{k}", v) for flow in ("a", "b", "c") for k in range(50) for v in range(3)]
    assert bus.send(QUEUE, sent) == len(sent)
    n = 3
    got: dict[int, list] = {i: [] for i in range(n)}

    def receiver(i: int) -> None:
        while batch := bus.receive(QUEUE, max_messages=17, max_wait=0.2, shard=(i, n)):
            got[i] += batch

    threads = [threading.Thread(target=receiver, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = {i: [m.envelope.message_id for m in got[i]] for i in range(n)}
    assert sorted(sum(ids.values(), [])) == sorted(e.message_id for e in sent)  # every message, exactly once
    for i, received in got.items():
        assert received, f"shard {i} got nothing: the split is uneven"
        for m in received:
            props = m.envelope.application_properties
            assert shard_of(props["flow"], props["key"]) % n == i  # every version of a record in one shard
    assert bus.receive(QUEUE, max_messages=10, max_wait=0) == []
    with pytest.raises(ValueError):
        bus.receive(QUEUE, shard=(3, 3))


def test_pair_flows_share_one_shard_and_children_wait_for_earlier_parents(tmp_path):
    bus = SqliteBus(tmp_path / "bus.db", lock_duration=30)
    bus.shard_groups = {"to-erp": "pair:accounts", "to-crm": "pair:accounts"}
    bus.send(QUEUE, [envelope(flow, f"k{k}", 1) for flow in ("to-erp", "to-crm") for k in range(40)])
    per_shard = [len(bus.receive(QUEUE, max_messages=100, max_wait=0, shard=(i, 4))) for i in range(4)]
    assert sorted(per_shard) == [0, 0, 0, 80]  # both directions of every record go to one worker

    bus = SqliteBus(tmp_path / "bus2.db", lock_duration=30)
    bus.receive_after = {"contacts": ("accounts",)}
    bus.send(QUEUE, [envelope("contacts", "c0", 1), envelope("accounts", "a1", 1), envelope("contacts", "c1", 1)])
    first = bus.receive(QUEUE, max_messages=10, max_wait=0)
    assert [m.envelope.message_id for m in first] == ["contacts:c0:1", "accounts:a1:1"]  # c1 waits for a1
    assert bus.receive(QUEUE, max_messages=10, max_wait=0) == []
    bus.settler(QUEUE).complete([m for m in first if m.envelope.subject == "accounts"])
    assert [m.envelope.message_id for m in bus.receive(QUEUE, max_messages=10, max_wait=0)] == ["contacts:c1:1"]


def slow_settle(app: SyncApp) -> None:
    """worker_init for the crash tests: after the bus completed a batch, leave a marker (the pid) and dawdle,
    so a kill lands between settling a batch and reporting it, the one gap only the bus can account for."""
    markers = Path(os.environ[MARKERS])
    (markers / f"started-{os.getpid()}").touch()
    make_settler = app.bus.settler

    class Slow:
        def __init__(self, inner) -> None:  # noqa: ANN001
            self.inner = inner

        def complete(self, messages) -> None:  # noqa: ANN001
            self.inner.complete(messages)
            (markers / f"completed-{os.getpid()}").touch()
            time.sleep(0.25)

        def abandon(self, message) -> None:  # noqa: ANN001
            self.inner.abandon(message)

        def dead_letter(self, message, reason, description) -> None:  # noqa: ANN001
            self.inner.dead_letter(message, reason, description)

    app.bus.settler = lambda queue: Slow(make_settler(queue))  # type: ignore[method-assign]


def failing_first_batch(app: SyncApp) -> None:
    """worker_init: the first apply of each worker raises, as a bug or an outage would."""
    import shared.apply_workers as runtime

    real = runtime.apply_batch
    calls = []

    def apply_batch(app, batch):  # noqa: ANN001, ANN202
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("target went away")
        return real(app, batch)

    runtime.apply_batch = apply_batch


def wait_for(predicate, timeout: float = 30.0):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.01)
    raise AssertionError("timed out")


def test_a_worker_killed_after_settling_is_counted_once_and_replaced(sample, tmp_path, monkeypatch):
    total = 1200
    app, erp_url = sample("kill", accounts=total, contacts=0, bad=False)
    markers = tmp_path / "markers"
    markers.mkdir()
    monkeypatch.setenv(MARKERS, str(markers))
    result = {}
    options = RunOptions(workers=2, batch_size=100, drain_bound=1, worker_init=f"{__name__}:slow_settle")
    runner = threading.Thread(target=lambda: result.update(tally=run_once(app, options)))
    runner.start()
    victim = wait_for(lambda: next(markers.glob("completed-*"), None))
    pid = int(victim.name.split("-")[1])
    os.kill(pid, signal.SIGKILL)  # its batch is completed on the bus but not reported
    runner.join(120)
    tally = result["tally"]
    counts = tally.flows["accounts-to-customers"]
    assert counts.adds_up() and counts.waiting == 0 and not counts.dead_lettered
    assert (counts.pulled, counts.applied, sum(counts.skipped.values())) == (total, total, 0)
    rows = erp_rows(erp_url, "customers", "account_number")
    assert len(rows) == total and not [k for k, n in Counter(rows).items() if n > 1]
    assert app.state.count_keys("accounts-to-customers", "erp") == total
    assert any(f"(pid {pid}) died (signal SIGKILL); restarted" in e for e in tally.errors), tally.errors
    assert len(list(markers.glob("started-*"))) == 3  # two workers and the replacement


def test_an_apply_error_abandons_the_batch_and_it_comes_back(sample):
    app, erp_url = sample("error", accounts=500, contacts=0, bad=False)
    tally = run_once(app, RunOptions(workers=2, batch_size=100, drain_bound=1,
                                     worker_init=f"{__name__}:failing_first_batch"))
    counts = tally.flows["accounts-to-customers"]
    assert counts.adds_up() and counts.applied == 500 and not counts.skipped
    assert [e for e in tally.errors if "RuntimeError: target went away" in e]
    assert len(erp_rows(erp_url, "customers", "account_number")) == 500


DRIVER = """
import sys
sys.path[:0] = [{root!r}, {tests!r}]
from shared.app import SyncApp
from shared.config import load_config
from shared.local_runtime import RunOptions, run_once

if __name__ == "__main__":
    app = SyncApp.local(load_config(sys.argv[1]), sys.argv[2])
    run_once(app, RunOptions(workers=2, batch_size=50, drain_bound=1, worker_init="{module}:slow_settle"))
"""


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rpartition(b")")[2].split()[0] == b"Z"  # dead, unreaped
    except FileNotFoundError:
        return True


def test_workers_do_not_outlive_a_killed_parent(sample, tmp_path, monkeypatch):
    sample("orphans", accounts=3000, contacts=0, bad=False)
    markers = tmp_path / "markers"
    markers.mkdir()
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(root=str(ROOT), tests=str(Path(__file__).parent), module=__name__))
    env = {**os.environ, MARKERS: str(markers)}
    proc = subprocess.Popen([sys.executable, str(driver), str(tmp_path / "orphans" / "flows.yaml"),
                             str(tmp_path / "orphans" / "state")], env=env)
    try:
        wait_for(lambda: len(list(markers.glob("completed-*"))) == 2)
    finally:
        proc.kill()
        proc.wait()
    workers = [int(p.name.split("-")[1]) for p in markers.glob("started-*")]
    assert len(workers) == 2
    wait_for(lambda: all(gone(pid) for pid in workers), timeout=5)


def test_run_forever_reconciles_deletes_on_its_schedule(tmp_path, monkeypatch):
    import threading

    from sqlalchemy import create_engine, text

    from demo import sample_data
    from shared.app import SyncApp
    from shared.config import load_config
    from shared.local_runtime import RunOptions, run_forever, run_once

    crm_url, erp_url = sample_data.build(tmp_path / "data", accounts=50, contacts=0, with_bad_rows=False)
    monkeypatch.setenv("CRM_DB_URL", crm_url)
    monkeypatch.setenv("ERP_DB_URL", erp_url)
    flows = sample_data.write_flows(tmp_path)
    flows.write_text(flows.read_text().replace("    deletes: deactivate\n",
                                               "    deletes: deactivate\n    reconcile: \"0 0 3 * * *\"\n"))
    app = SyncApp.local(load_config(flows), tmp_path / "state", retry_base=0.01)
    try:
        run_once(app, RunOptions(workers=0, drain_bound=1))
        with create_engine(crm_url).begin() as conn:
            conn.execute(text("DELETE FROM accounts WHERE accountid IN ('acc-0000007', 'acc-0000008')"))
        stop = threading.Event()
        threading.Timer(3.0, stop.set).start()
        tally = run_forever(app, RunOptions(workers=0), stop)
    finally:
        app.close()
    # Pulled once at start (nothing new), then the reconciliation finds the two deletes.
    assert tally.flows["accounts-to-customers"].pulled == 2
    assert tally.flows["accounts-to-customers"].applied == 2
    assert all(c.adds_up() for c in tally.flows.values())
    with create_engine(erp_url).connect() as conn:
        statuses = dict(conn.execute(text("SELECT account_number, status FROM customers "
                                          "WHERE account_number IN ('C000007', 'C000008')")).all())
    assert statuses == {"C000007": "inactive", "C000008": "inactive"}


def test_a_message_the_bus_gives_up_on_is_counted_as_dead_lettered(tmp_path, monkeypatch):
    from demo import sample_data
    from shared.app import SyncApp
    from shared.config import load_config
    from shared.messages import ChangeMessage, to_envelope

    crm_url, erp_url = sample_data.build(tmp_path / "data", accounts=3, contacts=0, with_bad_rows=False)
    monkeypatch.setenv("CRM_DB_URL", crm_url)
    monkeypatch.setenv("ERP_DB_URL", erp_url)
    app = SyncApp.local(load_config(sample_data.write_flows(tmp_path)), tmp_path / "state", retry_base=0.01)
    try:
        run_once(app, RunOptions(workers=0, drain_bound=1))
        # A message whose every delivery so far ended in a crash: the next receive moves it to the DLQ.
        poisoned = ChangeMessage(flow="accounts-to-customers", op="upsert", source_system="crm", entity="accounts",
                                 key="acc-0000001", version="9999", changed_at="2026-01-01T00:00:00Z", payload={})
        app.bus.send(app.queue, [to_envelope(poisoned)])
        for _ in range(app.bus.max_delivery_count - 1):
            [held] = app.bus.receive(app.queue, max_messages=1, max_wait=1)
            app.bus.settler(app.queue).abandon(held)
        app.bus.receive(app.queue, max_messages=1, max_wait=1)  # the last delivery: its worker dies holding it
        app.bus._conn().execute("UPDATE messages SET locked_until=0, lock_token=NULL")  # the lock runs out
        tally = run_once(app, RunOptions(workers=0, drain_bound=1))
    finally:
        app.close()
    counts = tally.flows["accounts-to-customers"]
    assert dict(counts.dead_lettered) == {"MaxDeliveryCountExceeded": 1}
    assert counts.backlog == 1 and counts.adds_up()
