"""File inbox -> SQLite through the embedded runtime: change mode snapshot, dead letters naming file, line and
column, and each file exactly once, also when a pull dies in the middle of a file."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from sqlalchemy import create_engine, text

from shared.app import SyncApp
from shared.config import parse_config
from shared.engine import cursor_lease, snapshot
from shared.engine.dead_letters import list_dead_letters
from shared.engine.pull import pull_flow
from shared.local_runtime import RunOptions, run_once
from shared.state.sqlite_tables import SqliteTables
from shared.state.store import StateStore

FLOW = "customers-in"
HEADER = "Kundennr;Name;Kredit\n"


def config(folder: Path, db_url: str, page_size: int = 1000) -> dict:
    return {
        "systems": {
            "erp": {"kind": "files", "folder": str(folder),
                    "csv": {"delimiter": ";", "decimal_separator": ",", "encoding": "cp1252",
                            "columns": {"Kundennr": "id", "Name": "name", "Kredit": "credit"},
                            "types": {"credit": "decimal"}}},
            "crm": {"kind": "sql", "url": db_url},
        },
        "flows": {FLOW: {
            "source": {"system": "erp", "entity": "customers", "key": "id", "changes": "snapshot"},
            "target": {"system": "crm", "entity": "customers", "key": "id"},
            "deletes": "delete", "page_size": page_size,
            "fields": [{"from": "id", "to": "id"}, {"from": "name", "to": "name", "required": True},
                       {"from": "credit", "to": "credit", "type": "decimal"}],
        }},
    }


class Exchange:
    def __init__(self, tmp_path: Path, page_size: int = 1000) -> None:
        self.folder = tmp_path / "exchange"
        self.folder.mkdir()
        self.db_url = f"sqlite:///{tmp_path / 'crm.db'}"
        self.engine = create_engine(self.db_url)
        with self.engine.begin() as conn:
            conn.execute(text("CREATE TABLE customers (id TEXT PRIMARY KEY, name TEXT NOT NULL, credit NUMERIC)"))
        self.app = SyncApp.local(parse_config(config(self.folder, self.db_url, page_size)), tmp_path / "state",
                                 retry_base=0.01)
        self.files = 0

    def drop(self, rows: list[str], name: str | None = None) -> str:
        """The ERP exports a file (written whole, as an exporting ERP renames it into place)."""
        self.files += 1
        name = name or f"export-{self.files:03d}.csv"
        inbox = self.folder / "inbox" / "customers"
        inbox.mkdir(parents=True, exist_ok=True)
        (inbox / ".tmp").write_bytes((HEADER + "".join(r + "\n" for r in rows)).encode("cp1252"))
        (inbox / ".tmp").replace(inbox / name)
        return name

    def run(self):
        tally = run_once(self.app, RunOptions(workers=0, drain_bound=1))
        counts = tally.flows[FLOW]
        assert counts.adds_up() and counts.waiting == 0, tally.flows
        return counts

    def rows(self) -> dict[str, tuple]:
        with self.engine.connect() as conn:
            return {r[0]: (r[1], str(r[2]) if r[2] is not None else None)
                    for r in conn.execute(text("SELECT id, name, credit FROM customers"))}

    def archived(self) -> list[str]:
        return sorted(p.name.partition("~")[2] for p in (self.folder / "archive" / "customers").iterdir())

    def pending(self) -> list[str]:
        return sorted(p.name for p in (self.folder / "inbox" / "customers").glob("*.csv"))

    def close(self) -> None:
        self.app.close()
        self.engine.dispose()


@pytest.fixture
def exchange(tmp_path):
    made: list[Exchange] = []

    def build(page_size: int = 1000) -> Exchange:
        made.append(Exchange(tmp_path, page_size))
        return made[-1]

    yield build
    for ex in made:
        ex.close()


def test_only_changed_rows_travel_and_a_missing_row_is_deleted(exchange):
    ex = exchange()
    ex.drop(["1;Müller GmbH;1234", "2;Bakker BV;10,5", "3;Rossi SpA;"])
    assert ex.run().applied == 3
    assert ex.rows() == {"1": ("Müller GmbH", "1234"), "2": ("Bakker BV", "10.5"), "3": ("Rossi SpA", None)}
    # The next export: 1 unchanged (a decimal written another way is the same value), 2 changed, 3 gone, 4 new.
    ex.drop(["1;Müller GmbH;1234,00", "2;Bakker BV;11", "4;Dupont SA;0,01"])
    counts = ex.run()
    assert counts.pulled == 3  # 2 and 4, and the delete of 3: the unchanged row 1 never went on the bus
    assert counts.applied == 3 and not counts.skipped
    assert ex.rows() == {"1": ("Müller GmbH", "1234"), "2": ("Bakker BV", "11"), "4": ("Dupont SA", "0.01")}
    assert ex.archived() == ["export-001.csv", "export-002.csv"] and ex.pending() == []
    assert ex.app.state.recent_runs(FLOW, limit=1)[0]["unchanged"] == 1
    # Nothing new: nothing read, nothing sent.
    assert ex.run().pulled == 0


def test_a_row_edited_and_edited_back_before_apply_still_ends_as_the_file_says(exchange):
    ex = exchange()
    ex.drop(["1;A;1"])
    ex.run()
    ex.drop(["1;B;1"])
    assert pull_flow(ex.app, FLOW).pulled == 1  # on the bus, not applied yet
    ex.drop(["1;A;1"])  # equal to the record state, but not to what is on its way
    assert pull_flow(ex.app, FLOW).pulled == 1
    ex.run()
    assert ex.rows() == {"1": ("A", "1")}


@pytest.mark.parametrize("applied_between", [True, False])
def test_a_deleted_row_that_comes_back_unchanged_is_written_again(exchange, applied_between):
    """Also while its delete is still on the bus: the row's values equal the record state then."""
    ex = exchange()
    ex.drop(["1;A;1", "2;B;2"])
    ex.run()
    ex.drop(["1;A;1"])
    if applied_between:
        ex.run()
        assert set(ex.rows()) == {"1"}
    else:
        assert pull_flow(ex.app, FLOW).deletes_inferred == 1
    ex.drop(["1;A;1", "2;B;2"])
    assert pull_flow(ex.app, FLOW).pulled == 1
    ex.run()
    assert ex.rows() == {"1": ("A", "1"), "2": ("B", "2")}


def test_bad_rows_are_dead_lettered_naming_file_line_and_column_and_the_rest_goes_on(exchange):
    ex = exchange()
    ex.drop(["1;A;1", "2;B;12,3x", '3;"C', 'on two lines";4', "4;D", ";E;5", "1;A again;1"])
    counts = ex.run()
    assert counts.applied == 2 and sum(counts.dead_lettered.values()) == 4
    assert ex.rows() == {"1": ("A", "1"), "3": ("C\non two lines", "4")}
    described = sorted(d.description for d in list_dead_letters(ex.app))
    no_key = next(d.key for d in list_dead_letters(ex.app) if d.key.startswith("(no key) "))
    where = "file inbox/customers/export-001.csv line"
    assert described == sorted([
        (f"flow {FLOW} record 2: {where} 3 column 'Kredit' (field credit): '12,3x' is not a decimal number "
        "with decimal separator ','"),
        f"flow {FLOW} record 4: {where} 6: 2 columns where the header has 3 (delimiter ';')",
        f"flow {FLOW} record {no_key}: {where} 7 column 'id': the key is empty",
        f"flow {FLOW} record 1: {where} 8: key 1 is on line 2 already (one row per record in a file)",
    ])
    assert {d.reason for d in list_dead_letters(ex.app)} == {"ValidationFailed"}
    # The same bad rows in the next export are not dead-lettered again; a fixed one is applied.
    ex.drop(["1;A;1", "2;B;12,3x", '3;"C', 'on two lines";4', "4;D;4", ";E;5"])
    counts = ex.run()
    assert counts.applied == 1 and not counts.dead_lettered
    assert ex.rows()["4"] == ("D", "4")


def test_a_pull_that_dies_inside_a_file_resumes_there_and_loses_and_repeats_nothing(exchange, monkeypatch):
    ex = exchange(page_size=3)
    ex.drop([f"{i};n{i};{i}" for i in range(1, 12)])  # 11 rows: pages of 3, 3, 3, 2
    real_send, sends = ex.app.bus.send, []

    def dies_on_the_third_page(queue, envelopes):
        sends.append(len(envelopes))
        if len(sends) == 3:
            raise ConnectionError("the process died")
        return real_send(queue, envelopes)

    monkeypatch.setattr(ex.app.bus, "send", dies_on_the_third_page)
    first = pull_flow(ex.app, FLOW)
    assert (first.status, first.pulled) == ("failed", 6)
    assert ex.app.state.get_cursor(FLOW).position["row"] == 6 and ex.pending() == ["export-001.csv"]
    monkeypatch.setattr(ex.app.bus, "send", real_send)
    counts = ex.run()
    assert counts.pulled == 5 and counts.duplicates == 0 and counts.applied == 11
    assert ex.rows() == {str(i): (f"n{i}", str(i)) for i in range(1, 12)}
    assert ex.archived() == ["export-001.csv"]


@pytest.mark.parametrize(("dies_in", "resent"), [("advance", 0), ("remember_sent", 4)])
def test_a_pull_killed_after_sending_a_page_sends_nothing_twice_in_effect(exchange, monkeypatch, dies_in, resent):
    """Killed after page 2 went on the bus: before the cursor moved (its rows are known to be on their way), or
    even before that was noted (page 2 is sent again with the same versions: dropped as duplicates)."""
    ex = exchange(page_size=4)
    ex.drop([f"{i};n{i};{i}" for i in range(1, 11)])
    module = cursor_lease if dies_in == "advance" else snapshot
    real, calls = getattr(module, dies_in), []

    def dies_on_the_second_page(*args):
        calls.append(args)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return real(*args)

    monkeypatch.setattr(module, dies_in, dies_on_the_second_page)
    assert pull_flow(ex.app, FLOW).status == "failed"
    monkeypatch.setattr(module, dies_in, real)
    counts = ex.run()
    # Page 2 read again goes on the bus again and is dropped as duplicates, unless apply settled the backlog
    # first: then its rows are unchanged against the record state and stay off the bus (both are exactly once).
    assert counts.backlog == 8 and counts.pulled == 2 + counts.duplicates and counts.duplicates in {0, resent}
    assert counts.applied == 10 and not counts.skipped
    assert ex.rows() == {str(i): (f"n{i}", str(i)) for i in range(1, 11)}


def test_a_file_whose_rows_are_all_sent_is_archived_not_read_again(exchange, monkeypatch):
    ex = exchange()
    ex.drop(["1;A;1", "2;B;2"])
    storage = ex.app.connector("erp").storage
    real_move = storage.move
    monkeypatch.setattr(storage, "move", lambda *a: (_ for _ in ()).throw(OSError("disk gone")))
    assert pull_flow(ex.app, FLOW).status == "failed"
    assert ex.pending() == ["export-001.csv"]
    monkeypatch.setattr(storage, "move", real_move)
    counts = ex.run()
    assert counts.pulled == 0 and counts.applied == 2
    assert ex.pending() == [] and ex.archived() == ["export-001.csv"]
    # The same name with new content is a new file.
    ex.drop(["1;A;1", "2;B2;2"], name="export-001.csv")
    assert ex.run().applied == 1
    assert ex.archived() == ["export-001.csv", "export-001.csv"]
    assert ex.rows()["2"] == ("B2", "2")


def test_a_file_without_a_header_fails_the_flow_and_stays(exchange):
    ex = exchange()
    (ex.folder / "inbox" / "customers").mkdir(parents=True)
    (ex.folder / "inbox" / "customers" / "empty.csv").write_bytes(b"")
    result = pull_flow(ex.app, FLOW)
    assert result.status == "failed" and "inbox/customers/empty.csv: no header row" in result.error
    assert ex.pending() == ["empty.csv"]


def test_sigkill_inside_a_file_then_once_again_loses_and_repeats_nothing(exchange, tmp_path):
    """The real thing: `dualsync run --once` killed (SIGKILL) while it is sending a large file's pages."""
    total = 3000
    ex = exchange(page_size=100)
    ex.drop([f"{i};n{i};{i},5" for i in range(total)])
    flows = tmp_path / "flows.yaml"
    flows.write_text(yaml.safe_dump(config(ex.folder, ex.db_url, page_size=100)))
    cmd = [sys.executable, "-m", "shared.cli", "run", "--config", str(flows), "--once", "--workers", "0",
           "--workdir", str(tmp_path / "killed")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None and _sent_rows(tmp_path / "killed") < 300:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    sent = _sent_rows(tmp_path / "killed")
    assert 0 < sent < total, f"the kill should land inside the file, {sent} of {total} rows were sent"
    assert ex.pending() == ["export-001.csv"]

    again = SyncApp.local(parse_config(config(ex.folder, ex.db_url, page_size=100)), tmp_path / "killed",
                          retry_base=0.01)
    try:
        counts = run_once(again, RunOptions(workers=0, drain_bound=1)).flows[FLOW]
        assert counts.adds_up() and counts.waiting == 0 and not counts.dead_lettered and not counts.skipped
        # The run reads on from the stored position; a page the killed run sent but had not recorded is read
        # again and dropped as duplicates by the queue (at most one page).
        assert counts.pulled == total - sent and counts.duplicates <= 100
        rows = ex.rows()
        assert len(rows) == total and rows == {str(i): (f"n{i}", f"{i}.5") for i in range(total)}
        assert ex.archived() == ["export-001.csv"]
    finally:
        again.close()


def _sent_rows(workdir: Path) -> int:
    """Rows of the file on the bus by the cursor's stored position (0 before the first page)."""
    if not (workdir / "state.db").exists():
        return 0
    tables = SqliteTables(workdir / "state.db")
    try:
        cursor = StateStore(tables).get_cursor(FLOW)
    except Exception:  # noqa: BLE001 - the runner is creating its tables right now
        return 0
    finally:
        tables.close()
    return int(((cursor and cursor.position) or {}).get("row", 0))
