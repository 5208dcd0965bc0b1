"""What the per-record leases cost apply: N changes of distinct records (one-way flow) applied in batches of
1,000 to a target that does nothing, with the record state in SQLite or in Table Storage (Azurite, started
here). Prints records/s and state-table round trips per 1,000 records.

Usage: python bench/apply_leases.py [--rows 5000] [--azurite]
Run it from another checkout's root (PYTHONPATH=.) to compare with code without leases.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path.cwd()))

from shared.app import SyncApp  # noqa: E402
from shared.bus.sqlite_bus import SqliteBus  # noqa: E402
from shared.config import parse_config  # noqa: E402
from shared.engine.apply import apply_batch  # noqa: E402
from shared.keys import key_of  # noqa: E402
from shared.messages import ChangeMessage, to_envelope  # noqa: E402
from shared.ports.bus import Received  # noqa: E402
from shared.ports.connector import WriteResult  # noqa: E402
from shared.state.sqlite_tables import SqliteTables  # noqa: E402
from shared.state.store import StateStore  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIG = {
    "systems": {"crm": {"kind": "sql", "url": "sqlite://"}, "erp": {"kind": "sql", "url": "sqlite://"}},
    "flows": {"accounts": {
        "source": {"system": "crm", "entity": "accounts", "key": "accountid"},
        "target": {"system": "erp", "entity": "customers", "key": "account_number"},
        "fields": [{"from": "accountnumber", "to": "account_number"}, {"from": "name", "to": "name"}],
    }},
}


class NullTarget:
    def write_batch(self, target, ops):  # noqa: ANN001, ANN201
        return [WriteResult(op, ok=True, key=key_of(target.key, op.key)) for op in ops]

    def close(self) -> None:
        return None


class Counting:
    """Counts round trips to the table backend (reads and writes), whatever methods it has."""

    def __init__(self, inner) -> None:  # noqa: ANN001
        self.inner = inner
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str):  # noqa: ANN204
        attr = getattr(self.inner, name)
        if not callable(attr) or name == "close":
            return attr

        def counted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            self.calls[name] = self.calls.get(name, 0) + 1
            return attr(*args, **kwargs)

        return counted


def azurite() -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([str(REPO / "node_modules/.bin/azurite-table"), "--inMemoryPersistence",
                             "--disableTelemetry", "--skipApiVersionCheck", "--tablePort", str(port), "--silent"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    sys.path.insert(0, str(REPO))
    from tests.fixtures.azurite import connection_string

    return proc, connection_string("127.0.0.1", port)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--azurite", action="store_true")
    args = parser.parse_args()
    proc = None
    with tempfile.TemporaryDirectory() as tmp:
        if args.azurite:
            from azure.data.tables import TableServiceClient

            from shared.state.azure_tables import AzureTables

            proc, conn = azurite()
            backend = Counting(AzureTables(TableServiceClient.from_connection_string(conn), "bench"))
        else:
            backend = Counting(SqliteTables(Path(tmp) / "state.db"))
        target = NullTarget()
        app = SyncApp(config=parse_config(CONFIG), state=StateStore(backend), bus=SqliteBus(Path(tmp) / "bus.db"),
                      connector_factory=lambda name: target)
        now = datetime.now(UTC)
        messages = [ChangeMessage(flow="accounts", op="upsert", source_system="crm", entity="accounts", key=f"k{i}",
                                  version=f"{1:020d}", changed_at=now, payload={"accountnumber": f"N{i}",
                                                                               "name": f"name {i}"})
                    for i in range(args.rows)]
        started = time.perf_counter()
        applied = 0
        for start in range(0, len(messages), 1000):
            batch = [Received(to_envelope(m), 1, now, i) for i, m in enumerate(messages[start:start + 1000])]
            applied += sum(o.kind == "applied" for o in apply_batch(app, batch))
        elapsed = time.perf_counter() - started
        app.close()
    if proc:
        proc.terminate()
    per_k = {name: round(n * 1000 / args.rows, 1) for name, n in sorted(backend.calls.items())}
    print(f"state: {'azurite' if args.azurite else 'sqlite'}  records: {args.rows}  applied: {applied}")
    print(f"records/s: {args.rows / elapsed:,.0f}  ({elapsed:.2f} s)")
    print(f"state calls per 1,000 records: {per_k}")


if __name__ == "__main__":
    main()
